"""Settlement fixtures.

Most tests use the session's live server (it runs an embedded worker) and its database. Tests
about workers themselves (killed, stopped, several of them, none at all) use a database of their
own, `jobs_url`, where no worker runs unless the test starts one: the session server's worker
would otherwise take their jobs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from flashsale.bench.harness import LiveServer, migrated_database
from tests.support import http_client, running_server


@pytest.fixture(scope="session")
async def jobs_url(admin_url: str) -> AsyncIterator[str]:
    async with migrated_database(admin_url, prefix="flashsale_jobs") as url:
        yield url


@pytest.fixture(scope="session")
async def jobs_pool(jobs_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(jobs_url, min_size=1, max_size=10) as test_pool:
        yield test_pool


@pytest.fixture(scope="session")
def api_server(jobs_url: str, logs_dir: Path) -> Iterator[LiveServer]:
    """A server without an embedded worker: its jobs wait until a test starts a worker (with
    a DATA_DIR of its own: the reports it serves come from the database)."""
    with running_server(
        jobs_url,
        logs_dir,
        EMBEDDED_WORKER="false",
        JOB_QUEUE_SIZE="3",
    ) as live:
        yield live


@pytest.fixture
async def api(api_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(api_server.url) as http:
        yield http


@pytest.fixture
async def jobs_db(jobs_pool: asyncpg.Pool) -> asyncpg.Pool:
    """`jobs_url`, emptied (no worker runs there between tests)."""
    await jobs_pool.execute(
        "TRUNCATE settlement_jobs, settlement_report_chunks, settlements, transactions, idempotency_keys, orders, "
        "procrastinate_workers, procrastinate_jobs RESTART IDENTITY CASCADE"
    )
    return jobs_pool
