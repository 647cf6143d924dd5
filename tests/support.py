"""Test plumbing: the test defaults for live servers (on `flashsale.bench.harness`), tools,
an embedded PostgreSQL a test can stop, and waiting on locks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from flashsale.bench import harness
from flashsale.bench.harness import LiveServer
from flashsale.db import import_pgserver

ROOT = Path(__file__).resolve().parent.parent


def require_tool(binary: str, debian_package: str) -> str:
    """The path of `binary`. Without it the test is skipped, except under CI (`CI=true`), where
    it fails: CI installs every tool the tests need (.ci/run)."""
    found = shutil.which(binary)
    if found:
        return found
    message = f"needs {binary} (Debian package: {debian_package})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI must install it (.ci/run)")
    pytest.skip(message)


class EmbeddedPostgres:
    """A throwaway PostgreSQL (pgserver) that a test can stop and start again."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: Any = None
        self.start()

    def start(self) -> None:
        self._server = import_pgserver().get_server(self.pgdata, cleanup_mode="stop")

    def stop(self) -> None:
        self._server.cleanup()

    @property
    def url(self) -> str:
        return str(self._server.get_uri())


def _test_env(log_dir: Path, port: int, env: dict[str, str]) -> dict[str, str]:
    return {
        # One server process unless a test asks for more: its topology is then known.
        "WEB_CONCURRENCY": "1",
        "LOG_LEVEL": "warning",
        "DATA_DIR": str(log_dir / f"data-{port}"),
        **env,
    }


def start_server(database_url: str, log_dir: Path, **env: str) -> LiveServer:
    """`flashsale serve` for a test (see `harness.start_server`): the test defaults above, its
    log kept in `log_dir`."""
    port = harness.free_port()
    return harness.start_server(
        database_url,
        _test_env(log_dir, port, env),
        log_path=log_dir / f"server-{port}.log",
        port=port,
        cwd=ROOT,
    )


@contextlib.contextmanager
def running_server(database_url: str, log_dir: Path, **env: str) -> Iterator[LiveServer]:
    """`start_server` for the block; a server that ignores SIGTERM fails the test."""
    server = start_server(database_url, log_dir, **env)
    try:
        yield server
    finally:
        server.terminate(raise_if_killed=True)


def http_client(base_url: str, connections: int = 100) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60)


async def eventually(
    condition: Callable[[], Awaitable[bool]], what: str, *, limit_s: float = 60
) -> None:
    """Poll `condition` until it holds; the limit only turns a hang into a clear failure."""
    deadline = time.monotonic() + limit_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


async def until_a_query_waits_on_a_lock(pool: asyncpg.Pool) -> None:
    """Wait until some session of the test database is blocked on a lock (e.g. a row we hold)."""
    for _ in range(400):
        if await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ):
            return
        await asyncio.sleep(0.025)
    raise AssertionError("no query ever waited on the lock")


async def post_all_at_once(
    requests: list[tuple[httpx.AsyncClient, dict[str, object], dict[str, str]]],
) -> list[httpx.Response]:
    """POST /orders with each (client, body, headers), all released at the same moment."""
    start = asyncio.Event()

    async def one(
        client: httpx.AsyncClient, body: dict[str, object], headers: dict[str, str]
    ) -> httpx.Response:
        await start.wait()  # release all requests at once
        return await client.post("/orders", json=body, headers=headers)

    tasks = [asyncio.create_task(one(*request)) for request in requests]
    await asyncio.sleep(0)
    start.set()
    return await asyncio.gather(*tasks)
