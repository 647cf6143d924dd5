"""Database plumbing: choosing the database, the embedded PostgreSQL, the asyncpg pool.

The transaction rule. A route takes a connection (`Database.connection()`) and passes it to
service functions; it never opens a transaction itself. A service function that runs one
statement relies on autocommit: that statement is its own transaction (e.g. placing an order
without a key: one guarded UPDATE and INSERT). A service function that needs several statements
to be atomic opens its own transaction inside (`create_job`, `complete_job`,
`copy_transactions`, the settlement's shared snapshot), or calls a database function that is
one (`place_order_batch()`), and says so in its docstring. So every transaction is written in the
one function that owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from flashsale.config import Settings
from flashsale.errors import DatabaseTimeout, DatabaseUnavailable
from flashsale.observability import metrics

log = structlog.get_logger()

EMBEDDED_DATABASE = "flashsale"
# A request waits at most this long for a pooled connection before it gets a 503.
ACQUIRE_TIMEOUT_S = 5.0

# Failures that mean "the database is not reachable right now" rather than "the query is wrong".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, no route, socket file missing
    asyncio.TimeoutError,  # pool acquire or connect took too long
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # connection closed under us
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)

# What service functions take: a connection, or the pool's proxy for one.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy

_embedded_servers: dict[Path, Any] = {}


def database_url(settings: Settings) -> str:
    """The URL to use: the configured one, or the embedded PostgreSQL's (started if needed)."""
    return settings.configured_database_url or start_embedded(settings.data_dir)


def import_pgserver() -> Any:
    """pgserver, with a private runtime directory for its lock file and sockets.

    pgserver asks platformdirs for XDG_RUNTIME_DIR at import; where that is unset (servers, CI,
    containers) platformdirs falls back to /tmp/runtime-<uid>, and refuses even that when /tmp is
    not sticky. Every process of this user must agree on the directory (it holds pgserver's
    inter-process lock), so it is a fixed, private one under the home directory.
    """
    if not os.environ.get("XDG_RUNTIME_DIR"):
        runtime = Path.home() / ".cache" / "flashsale" / "run"
        with contextlib.suppress(OSError):
            runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
            runtime.chmod(0o700)
            os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    with warnings.catch_warnings():  # whatever platformdirs still has to say is not ours
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver


def start_embedded(data_dir: Path) -> str:
    """Start (or attach to) the embedded PostgreSQL in `data_dir/pgdata`; return its URL.

    pgserver stops the server when the last process that started it exits normally.
    """
    pgserver = import_pgserver()
    pgdata = (data_dir / "pgdata").resolve()
    if pgdata not in _embedded_servers:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        log.info("db.embedded_starting", pgdata=str(pgdata))
        _embedded_servers[pgdata] = pgserver.get_server(pgdata, cleanup_mode="stop")
    server = _embedded_servers[pgdata]
    if EMBEDDED_DATABASE not in server.psql("SELECT datname FROM pg_database;"):
        server.psql(f"CREATE DATABASE {EMBEDDED_DATABASE};")
    return str(server.get_uri(EMBEDDED_DATABASE))


def embedded_running(data_dir: Path) -> bool:
    """Whether an embedded PostgreSQL runs on `data_dir` (its postmaster.pid is there)."""
    return (data_dir / "pgdata" / "postmaster.pid").exists()


def embedded_binary(name: str) -> Path:
    """A PostgreSQL client program shipped with the embedded server (psql, pg_dump, ...)."""
    return Path(import_pgserver().__file__).parent / "pginstall" / "bin" / name


def stop_embedded() -> None:
    """Release the embedded servers this process started (stopped if no other process uses them)."""
    while _embedded_servers:
        _, server = _embedded_servers.popitem()
        server.cleanup()


async def connection_problem(url: str, *, timeout_s: float) -> str | None:
    """Why a connection to `url` cannot be had, in one line; None when it can."""
    try:
        conn = await asyncpg.connect(url, timeout=timeout_s)
    except asyncpg.InvalidCatalogNameError as exc:
        return f"{exc} (create it first, e.g. with createdb)"
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return str(exc)
    except (OSError, TimeoutError) as exc:
        return f"cannot connect: {exc or type(exc).__name__}"
    await conn.close()
    return None


_RECONNECT_DELAY_S = 1.0


async def listen_forever(
    url: str,
    channel: str,
    *,
    name: str,
    on_payload: Callable[[str], None],
    on_listening: Callable[[], None],
    on_down: Callable[[], None] = lambda: None,
    down_event: str,
) -> None:
    """LISTEN on `channel` on a connection of its own (application_name `name`) until
    cancelled, reconnecting when it drops. `on_listening` runs each time it listens again (the
    caller catches up on what was missed meanwhile); `on_down` each time it stops; the loss is
    logged as `down_event`."""
    while True:
        try:
            conn = await asyncpg.connect(
                url, timeout=10, server_settings={"application_name": name}
            )
            try:
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _, done=closed: done.set())
                await conn.add_listener(
                    channel, lambda _conn, _pid, _channel, payload: on_payload(str(payload))
                )
                on_listening()
                await closed.wait()
                log.warning(down_event, error="connection closed")
            finally:
                await conn.close(timeout=2)
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:  # type: ignore[misc]
            log.warning(down_event, error=repr(exc))
        finally:
            on_down()
        await asyncio.sleep(_RECONNECT_DELAY_S)


class Where:
    """A WHERE clause of only the filters a request gives (so each combination is planned for
    what it has), every value a numbered parameter: `add("date >= {}", day)`."""

    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.args: list[object] = []

    def param(self, value: object) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, condition: str, *values: object) -> None:
        self.conditions.append(condition.format(*(self.param(value) for value in values)))

    @property
    def sql(self) -> str:
        return f"WHERE {' AND '.join(self.conditions)}" if self.conditions else ""


def sqlalchemy_url(url: str) -> str:
    """The same database as a SQLAlchemy URL on the psycopg 3 driver (for Alembic)."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("postgres", "postgresql"):
        return url
    return f"postgresql+psycopg://{rest}"


async def _keep_session(_: asyncpg.Connection) -> None:
    """Skip asyncpg's per-release reset query (RESET ALL, UNLISTEN *, unlock, CLOSE ALL): one
    round trip per request saved. Safe because no code here changes session state: no SET,
    LISTEN, session advisory locks or cursors outside transactions (an open transaction is
    still rolled back by the pool)."""


class Database:
    """The process's connection pool behind a FIFO gate.

    asyncpg's pool lets a newcomer take a connection that was just handed to a waiting task,
    which sends the waiter to the back of the queue: under a crowd the oldest requests starve
    and the tail latency grows. The semaphore is FIFO, so
    requests get connections in arrival order and the pool itself never has waiters.
    """

    def __init__(self, pool: asyncpg.Pool, size: int, url: str) -> None:
        self.pool = pool
        self.size = size
        self.url = url
        self._gate = asyncio.Semaphore(size)
        # Whether the last unit of work reached PostgreSQL (a request, a health check, a scrape):
        # False after an outage error, True again after the next one that gets through.
        self.reachable = True

    @property
    def open_connections(self) -> int:
        return self.pool.get_size()

    @property
    def idle_connections(self) -> int:
        return self.pool.get_idle_size()

    @classmethod
    async def connect(cls, settings: Settings, url: str, *, size: int | None = None) -> Database:
        """One per process. Every connection gets the request statement timeout."""
        size = size or settings.db_pool_size
        pool = await asyncpg.create_pool(
            url,
            reset=_keep_session,
            min_size=min(2, size),
            max_size=size,
            timeout=settings.db_connect_timeout_s,
            max_inactive_connection_lifetime=300,
            server_settings={
                "application_name": f"flashsale:{os.getpid()}",
                "statement_timeout": str(settings.db_statement_timeout_ms),
                "idle_in_transaction_session_timeout": "60000",
            },
        )
        assert pool is not None
        return cls(pool, size, url)

    @contextlib.asynccontextmanager
    async def connection(
        self, *, acquire_timeout_s: float = ACQUIRE_TIMEOUT_S, operation: str | None = None
    ) -> AsyncIterator[Connection]:
        """A connection for one unit of work; outages and timeouts become 503s, not 500s.

        Metrics: the wait for the connection, and how long the unit of work holds it, labelled
        `operation` (default: the current request's method and route, or background).
        """
        started = time.perf_counter()
        try:
            async with asyncio.timeout(acquire_timeout_s):
                await self._gate.acquire()
        except TimeoutError as exc:
            raise DatabaseUnavailable("No database connection became free in time") from exc
        try:
            async with self.pool.acquire(timeout=acquire_timeout_s) as conn:
                acquired = time.perf_counter()
                metrics.DB_ACQUIRE.observe(acquired - started)
                try:
                    yield conn
                finally:
                    metrics.observe_db_operation(time.perf_counter() - acquired, operation)
            self.reachable = True
        except UNAVAILABLE_ERRORS as exc:
            self.reachable = False
            log.warning("db.unavailable", error=repr(exc))
            raise DatabaseUnavailable() from exc
        except asyncpg.QueryCanceledError as exc:
            log.warning("db.statement_timeout", error=str(exc))
            raise DatabaseTimeout() from exc
        finally:
            self._gate.release()

    @contextlib.asynccontextmanager
    async def dedicated_connection(self, *, name: str) -> AsyncIterator[asyncpg.Connection]:
        """A connection of its own, outside the pool, without the request statement timeout:
        for long work (a bulk import streaming for minutes) that must never keep requests
        waiting for a pooled connection. Outages become 503s, as in `connection`."""
        try:
            conn = await asyncpg.connect(
                self.url, timeout=ACQUIRE_TIMEOUT_S, server_settings={"application_name": name}
            )
        except UNAVAILABLE_ERRORS as exc:
            log.warning("db.unavailable", error=repr(exc))
            raise DatabaseUnavailable() from exc
        try:
            yield conn
        except UNAVAILABLE_ERRORS as exc:
            log.warning("db.unavailable", error=repr(exc))
            raise DatabaseUnavailable() from exc
        finally:
            try:
                await conn.close(timeout=2)
            except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError):  # type: ignore[misc]
                conn.terminate()

    async def ping(self, *, within_s: float = 2.0) -> bool:
        """True when a connection can be had and answers `SELECT 1` within `within_s`."""
        with contextlib.suppress(DatabaseUnavailable, DatabaseTimeout, asyncpg.PostgresError):
            async with asyncio.timeout(within_s), self.connection() as conn:
                return bool(await conn.fetchval("SELECT 1"))
        return False

    async def close(self, *, grace_s: float = 10.0) -> None:
        """Close gracefully; terminate what does not close in time."""
        try:
            await asyncio.wait_for(self.pool.close(), grace_s)
        except TimeoutError:
            self.pool.terminate()
