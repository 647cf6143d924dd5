"""Test plumbing: throwaway databases and live `flashsale serve` processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from flashsale import migrations
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


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead (keeps host, socket and credentials)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(admin_url: str, prefix: str = "flashsale_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def migrated_database(admin_url: str, prefix: str = "flashsale_test") -> AsyncIterator[str]:
    """A new database on `admin_url`'s server, at the newest migration; dropped afterwards."""
    url = await create_database(admin_url, prefix)
    try:
        migrations.upgrade(url)
        yield url
    finally:
        await drop_database(admin_url, url)


def spawn(command: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m flashsale <command>` with `env` on top of ours, its output in `log_path`."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "flashsale", command],
            env={**os.environ, **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def start_server(database_url: str, log_dir: Path, **env: str) -> LiveServer:
    """Run `python -m flashsale serve` against `database_url` and wait until /health answers."""
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    environment = {
        "DATABASE_URL": database_url,
        "SERVER_HOST": "127.0.0.1",
        "SERVER_PORT": str(port),
        "AUTO_MIGRATE": "false",
        # One server process unless a test asks for more: its topology is then known.
        "WEB_CONCURRENCY": "1",
        "LOG_LEVEL": "warning",
        "DATA_DIR": str(log_dir / f"data-{port}"),
        **env,
    }
    process = spawn("serve", environment, log_path)
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        time.sleep(0.1)
    server.terminate()
    raise RuntimeError(f"server did not become healthy:\n{server.log()}")


@contextlib.contextmanager
def running_server(database_url: str, log_dir: Path, **env: str) -> Iterator[LiveServer]:
    server = start_server(database_url, log_dir, **env)
    try:
        yield server
    finally:
        server.terminate()


def http_client(base_url: str, connections: int = 100) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60)


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
