"""Live processes, scratch databases and job polling for the tests and the benchmarks.

Written once so that what the tests check and what `flashsale bench` measures start, wait and
stop the same way. It ships in the package (the benches use it), so it never imports pytest;
the tests' defaults (one process, warnings only, logs kept) live in their own wrappers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from flashsale import migrations

# --- live processes -----------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on now, for a server that binds it a moment later."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveProcess:
    """A `python -m flashsale <command>` process started here, and the file its output goes to."""

    process: subprocess.Popen[bytes]
    log_path: Path
    command: str

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def failure(self, what: str) -> RuntimeError:
        """An error that says what happened and shows the end of the log, where the cause is."""
        return RuntimeError(
            f"`flashsale {self.command}` (pid {self.process.pid}) {what}; its log "
            f"({self.log_path}) ends with:\n{self.log_tail()}"
        )

    def check_alive(self) -> None:
        """Raise if the process has exited: figures measured against a dead server mean nothing."""
        if self.process.poll() is not None:
            raise self.failure(f"exited with {self.process.returncode}")

    def terminate(self, timeout_s: float = 30, *, raise_if_killed: bool = False) -> int:
        """SIGTERM, then SIGKILL after `timeout_s`; the exit status. Only this process is
        signalled: it stops what it started itself. `raise_if_killed` re-raises the timeout after
        the kill, for callers (the tests) where ignoring SIGTERM is a bug to see."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            if raise_if_killed:
                raise
            return self.process.returncode


@dataclass
class LiveServer(LiveProcess):
    url: str
    port: int


def _popen(
    command: str, env: Mapping[str, str], log_path: Path, cwd: Path | None
) -> subprocess.Popen[bytes]:
    """`python -m flashsale <command>` with `env` on top of `os.environ`, output in `log_path`."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "flashsale", command],
            env={**os.environ, **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )


def start_server(
    database_url: str,
    env: Mapping[str, str] | None = None,
    *,
    log_path: Path,
    port: int | None = None,
    cwd: Path | None = None,
    ready_s: float = 60,
) -> LiveServer:
    """`flashsale serve` on 127.0.0.1 (`port`, or a free one) against an already migrated
    `database_url`, returned once /health answers 200. If it exits first or is not healthy
    within `ready_s` (then it is stopped), the error shows its log's tail."""
    port = port or free_port()
    environment = {
        "DATABASE_URL": database_url,
        "SERVER_HOST": "127.0.0.1",
        "SERVER_PORT": str(port),
        "AUTO_MIGRATE": "false",
        **(env or {}),
    }
    process = _popen("serve", environment, log_path, cwd)
    server = LiveServer(process, log_path, "serve", url=f"http://127.0.0.1:{port}", port=port)
    deadline = time.monotonic() + ready_s
    while True:
        if process.poll() is not None:
            raise server.failure(f"exited with {process.returncode} before it was healthy")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        if time.monotonic() > deadline:
            server.terminate()
            raise server.failure(f"was not healthy within {ready_s:g} s")
        time.sleep(0.1)


@contextlib.contextmanager
def _log_file(log_path: Path | None, what: str) -> Iterator[Path]:
    """`log_path`, or else a temporary file that is deleted when the block succeeds and kept
    (and named) when it fails: a failed run's log is what explains it."""
    if log_path is not None:
        yield log_path
        return
    descriptor, name = tempfile.mkstemp(prefix=f"flashsale-{what}-", suffix=".log")
    os.close(descriptor)
    path = Path(name)
    try:
        yield path
    except BaseException:
        print(f"  ({what} log kept: {path})")
        raise
    path.unlink(missing_ok=True)


@contextlib.contextmanager
def running_server(
    database_url: str,
    env: Mapping[str, str] | None = None,
    *,
    log_path: Path | None = None,
    port: int | None = None,
    cwd: Path | None = None,
    ready_s: float = 60,
    stop_s: float = 30,
    raise_if_killed: bool = False,
) -> Iterator[LiveServer]:
    """`start_server` for the block, terminated after it. Without `log_path` the log is a
    temporary file kept only if something failed."""
    with _log_file(log_path, "server") as path:
        server = start_server(database_url, env, log_path=path, port=port, cwd=cwd, ready_s=ready_s)
        try:
            yield server
        finally:
            server.terminate(stop_s, raise_if_killed=raise_if_killed)


@contextlib.contextmanager
def running_worker(
    database_url: str,
    env: Mapping[str, str] | None = None,
    *,
    log_path: Path | None = None,
    cwd: Path | None = None,
) -> Iterator[LiveProcess]:
    """A `flashsale worker` process against an already migrated `database_url` for the block
    (it has no health endpoint: it is not waited for), terminated after it if still running."""
    environment = {"DATABASE_URL": database_url, "AUTO_MIGRATE": "false", **(env or {})}
    with _log_file(log_path, "worker") as path:
        worker = LiveProcess(_popen("worker", environment, path, cwd), path, "worker")
        try:
            yield worker
        finally:
            worker.terminate()


# --- scratch databases --------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead (keeps host, socket and credentials)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


async def _execute(admin_url: str, statement: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def create_database(admin_url: str, prefix: str) -> str:
    """A new empty database `<prefix>_<random>` on `admin_url`'s server; its URL. The prefix
    says who made it, should a crashed run leave it behind."""
    url = with_database(admin_url, f"{prefix}_{uuid.uuid4().hex[:10]}")
    await _execute(admin_url, f'CREATE DATABASE "{database_name(url)}"')
    return url


async def drop_database(admin_url: str, url: str) -> None:
    """Drop `url`'s database, disconnecting whoever is still connected to it."""
    await _execute(admin_url, f'DROP DATABASE IF EXISTS "{database_name(url)}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def migrated_database(admin_url: str, prefix: str) -> AsyncIterator[str]:
    """A new database on `admin_url`'s server, at the newest migration; dropped afterwards."""
    url = await create_database(admin_url, prefix)
    try:
        migrations.upgrade(url)
        yield url
    finally:
        await drop_database(admin_url, url)


# --- settlement jobs ----------------------------------------------------------------------------

Job = dict[str, Any]
FINISHED = ("COMPLETED", "FAILED", "CANCELLED")


def status_is(*statuses: str) -> Callable[[Job], bool]:
    return lambda job: job["status"] in statuses


async def wait_for_job(
    client: httpx.AsyncClient,
    job_id: str,
    until: Callable[[Job], bool],
    *,
    limit_s: float = 60,
    poll_s: float = 0.05,
) -> Job:
    """GET /jobs/{job_id} every `poll_s` until `until(job)`. A job that finishes otherwise
    raises; so does `limit_s`, which only turns a hang into a clear error (it times nothing)."""
    deadline = time.monotonic() + limit_s
    while True:
        response = await client.get(f"/jobs/{job_id}")
        if response.status_code != 200:
            raise RuntimeError(f"GET /jobs/{job_id}: {response.status_code} {response.text}")
        job: Job = response.json()
        if until(job):
            return job
        if job["status"] in FINISHED:
            raise RuntimeError(f"job finished in an unexpected state: {job}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"job never reached the expected state in {limit_s:g} s: {job}")
        await asyncio.sleep(poll_s)
