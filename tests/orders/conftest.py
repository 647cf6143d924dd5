"""Fixtures shared by the order tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from flashsale.bench.harness import LiveServer
from tests.support import running_server


@pytest.fixture
async def orders_trap(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """A trigger on orders: buyer 'poison' makes the INSERT fail; buyer 'slow' makes it wait for
    advisory lock 4242 (hold it to keep a batch in flight)."""
    await pool.execute(
        """
        CREATE FUNCTION test_trap() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.buyer_id = 'poison' THEN RAISE EXCEPTION 'injected failure'; END IF;
            IF NEW.buyer_id = 'slow' THEN PERFORM pg_advisory_xact_lock(4242); END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_trap BEFORE INSERT ON orders
            FOR EACH ROW EXECUTE FUNCTION test_trap();
        """
    )
    yield
    await pool.execute("DROP TRIGGER test_trap ON orders; DROP FUNCTION test_trap()")


# Order servers beside the session's `server`, kept for the session. They run no job worker: a
# settlement job deferred through `server` must run there (its CSV is under its DATA_DIR).
@pytest.fixture(scope="session")
def coalescing_server(database_url: str, logs_dir: Path) -> Iterator[LiveServer]:
    """A second process with coalescing on (the session's `server` is the first)."""
    with running_server(database_url, logs_dir, EMBEDDED_WORKER="false") as live:
        yield live


@pytest.fixture(scope="session")
def single_order_server(database_url: str, logs_dir: Path) -> Iterator[LiveServer]:
    with running_server(
        database_url, logs_dir, ORDER_COALESCING="off", EMBEDDED_WORKER="false"
    ) as live:
        yield live
