"""How the `flashsale` commands run: the database they work on, and the processes they start.

- `settings(...)`: the configuration, from the environment and the command's options.
- `database(settings)`: the configured database, or the embedded PostgreSQL started for the
  block and released after it (stopped when no other process of ours still uses it).
- `serve(settings)`: uvicorn with WEB_CONCURRENCY server processes, and settlement jobs run in
  one worker per `serve`: inside the server process itself, or, with several server processes,
  in one supervised `flashsale worker` process beside them.
- `work(settings)`: a standalone settlement worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import asyncpg
import structlog

from flashsale import db, migrations
from flashsale.config import Settings, load_settings
from flashsale.errors import CommandError
from flashsale.observability.exposition import multiprocess_directory
from flashsale.observability.logging import configure_logging

log = structlog.get_logger()

T = TypeVar("T")


class StartupError(CommandError):
    """The database a command needs could not be had; the message says why."""


def settings(**overrides: Any) -> Settings:
    """The settings from the environment, with the command's options on top (None: not given),
    and logging configured by them. Raises ConfigError."""
    loaded = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    configure_logging(loaded.log_level, loaded.log_format)
    return loaded


@contextlib.contextmanager
def database(settings: Settings, *, migrate: bool = False) -> Iterator[str]:
    """The database's URL for the block (migrated first with `migrate`); an embedded PostgreSQL
    started for it is released at the end, however the block ends."""
    try:
        url = settings.configured_database_url
        if url is None:
            try:
                url = db.start_embedded(settings.data_dir)
            except Exception as exc:
                raise StartupError(f"cannot start the embedded PostgreSQL: {exc}") from exc
        else:
            timeout_s = settings.db_connect_timeout_s
            problem = asyncio.run(db.connection_problem(url, timeout_s=timeout_s))
            if problem:
                raise StartupError(
                    f"cannot use the database ({settings.database_variables}): {problem}"
                )
        if migrate:
            migrations.upgrade(url)
        yield url
    finally:
        db.stop_embedded()


def on_connection(settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `work(conn)` on one connection to the configured (or embedded) database."""

    async def run(url: str) -> T:
        conn = await asyncpg.connect(url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    with database(settings) as url:
        return asyncio.run(run(url))


def serve(settings: Settings) -> None:
    """Run the HTTP API until SIGTERM or SIGINT, then stop gracefully."""
    import uvicorn

    from flashsale.access.exposure import check_exposure

    check_exposure(settings)
    with database(settings, migrate=settings.auto_migrate) as url:
        # Server processes build their own app from the environment: give them this database.
        os.environ["DATABASE_URL"] = url
        # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; absorb them so that we
        # return from run() and release the embedded PostgreSQL instead of dying mid-cleanup.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        log.info(
            "server.starting",
            host=settings.server_host,
            port=settings.server_port,
            workers=settings.web_concurrency,
        )
        job_worker = None
        try:
            with multiprocess_directory(settings.web_concurrency):
                if settings.embedded_worker and settings.web_concurrency > 1:
                    # Started after the metrics directory is set: the worker writes its
                    # figures there, so one scrape of the API shows the whole `serve`.
                    os.environ["EMBEDDED_WORKER"] = "false"
                    job_worker = SupervisedWorker({**os.environ, "AUTO_MIGRATE": "false"})
                uvicorn.run(
                    "flashsale.app:create_app",
                    factory=True,
                    host=settings.server_host,
                    port=settings.server_port,
                    workers=settings.web_concurrency,
                    log_config=None,
                    access_log=False,
                    server_header=False,
                    timeout_graceful_shutdown=30,
                )
        finally:
            if job_worker is not None:
                job_worker.stop()
    log.info("server.exited")


def work(settings: Settings, *, metrics_port: bool = True) -> None:
    """Run settlement jobs until SIGTERM or SIGINT, then stop gracefully; serve /metrics on
    METRICS_PORT unless told not to (`serve`'s supervised worker)."""
    from flashsale.settlement.worker import standalone_worker

    with database(settings, migrate=settings.auto_migrate) as url:
        asyncio.run(standalone_worker(settings, url, metrics_port=metrics_port))


class SupervisedWorker:
    """The `flashsale worker` process beside several server processes, restarted if it dies
    (its jobs are then requeued by the sweep, as for any lost worker)."""

    RESTART_DELAY_S = 1.0

    def __init__(self, env: dict[str, str]) -> None:
        self._env = env
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._process = self._start()
        threading.Thread(target=self._watch, name="job-worker-supervisor", daemon=True).start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "flashsale", "worker", "--no-metrics-port"], env=self._env
        )

    def _watch(self) -> None:
        while True:
            code = self._process.wait()
            if self._stopping.wait(self.RESTART_DELAY_S):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                log.error("worker.restarted", exit_code=code)
                self._process = self._start()

    def stop(self) -> None:
        """SIGTERM: a graceful stop (JOB_SHUTDOWN_GRACE_S); no restart after it."""
        with self._lock:
            self._stopping.set()
            process = self._process
        process.terminate()
        process.wait()
