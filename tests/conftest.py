"""Fixtures: one migrated throwaway database and one live server per test session.

The database is a fresh database on `TEST_DATABASE_URL`'s server when that is set, otherwise on a
throwaway embedded PostgreSQL. Every test starts with empty tables.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from flashsale.bench.harness import LiveServer, migrated_database
from tests.support import EmbeddedPostgres, http_client, require_tool, running_server

TABLES = (
    "settlement_jobs, settlements, transactions, idempotency_keys, buyer_holdings, orders, products"
)


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server where tests may create databases."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("embedded") / "pgdata")
    yield embedded.url
    embedded.stop()


@pytest.fixture(scope="session")
async def database_url(admin_url: str) -> AsyncIterator[str]:
    async with migrated_database(admin_url, "flashsale_test") as url:
        yield url


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=20) as test_pool:
        yield test_pool


@pytest.fixture(autouse=True)
async def _empty_tables(pool: asyncpg.Pool) -> None:
    await pool.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")


@pytest.fixture(scope="session")
def server(database_url: str, logs_dir: Path) -> Iterator[LiveServer]:
    with running_server(database_url, logs_dir) as live:
        yield live


@pytest.fixture
async def client(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(server.url, connections=600) as http:
        yield http


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium through Playwright (skipped without it, failing under CI=true)."""
    executable = require_tool("chromium", "chromium")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable)
        yield launched
        await launched.close()
