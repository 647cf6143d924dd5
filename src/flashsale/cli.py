"""The `flashsale` command: serve | worker | migrate | seed | bench."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import date
from typing import Any

import asyncpg
import click
import structlog
from tqdm import tqdm

from flashsale import db, migrations
from flashsale.config import ConfigError, Settings, load_settings
from flashsale.observability import metrics
from flashsale.observability.logging import configure_logging

log = structlog.get_logger()


def _settings(**overrides: Any) -> Settings:
    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _database_url(settings: Settings) -> str:
    try:
        return db.database_url(settings)
    except Exception as exc:
        raise click.ClickException(f"cannot start the embedded PostgreSQL: {exc}") from exc


def _on_database(settings: Settings, work: Callable[[asyncpg.Connection], Any]) -> Any:
    """Run `work(conn)` on one connection to the configured (or embedded) database."""

    async def run() -> Any:
        conn = await asyncpg.connect(_database_url(settings))
        try:
            return await work(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(run())
    finally:
        db.stop_embedded()


@click.group()
@click.version_option(package_name="flashsale")
def main() -> None:
    """flashsale: limited-stock orders that never oversell, and merchant settlement jobs."""


@main.command()
@click.option("--host", help="Bind address [env SERVER_HOST, default 127.0.0.1]")
@click.option("--port", type=int, help="Port [env SERVER_PORT, default 8080]")
@click.option("--workers", type=int, help="Worker processes [env WEB_CONCURRENCY, default 2]")
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Run the HTTP API (embedded PostgreSQL unless a database is configured)."""
    import uvicorn

    settings = _settings(server_host=host, server_port=port, web_concurrency=workers)
    url = _database_url(settings)
    try:
        if settings.auto_migrate:
            migrations.upgrade(url)
        # Worker processes build their own app from the environment: give them this database.
        os.environ["DATABASE_URL"] = url
        # Settlement jobs run in one worker per `serve`: in the server process itself, or with
        # several server processes, in a `flashsale worker` process beside them.
        job_worker = None
        if settings.embedded_worker and settings.web_concurrency > 1:
            os.environ["EMBEDDED_WORKER"] = "false"
            job_worker = SupervisedWorker({**os.environ, "AUTO_MIGRATE": "false"})
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
        try:
            with metrics.multiprocess_directory(settings.web_concurrency):
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
    finally:
        db.stop_embedded()
    log.info("server.exited")


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
        return subprocess.Popen([sys.executable, "-m", "flashsale", "worker"], env=self._env)

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


@main.command()
def worker() -> None:
    """Run settlement jobs (any number of these, on any hosts, against one database)."""
    from flashsale.settlement.worker import standalone_worker

    settings = _settings()
    url = _database_url(settings)
    try:
        if settings.auto_migrate:
            migrations.upgrade(url)
        asyncio.run(standalone_worker(settings, url))
    finally:
        db.stop_embedded()


@main.group(invoke_without_command=True)
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Apply database migrations (default: upgrade to the newest)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(upgrade)


@migrate.command()
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Upgrade to REVISION (default head)."""
    settings = _settings()
    try:
        migrations.upgrade(_database_url(settings), revision)
    finally:
        db.stop_embedded()


@migrate.command()
@click.argument("revision")
def downgrade(revision: str) -> None:
    """Downgrade to REVISION ('base' removes every table)."""
    settings = _settings()
    try:
        migrations.downgrade(_database_url(settings), revision)
    finally:
        db.stop_embedded()


def _parse_day(_: click.Context, __: click.Parameter, value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


@main.command()
@click.option("--products", default=1, show_default=True, type=click.IntRange(0, 10_000))
@click.option("--stock", default=100, show_default=True, type=click.IntRange(0, 10**12))
@click.option(
    "--price",
    default=1000,
    show_default=True,
    type=click.IntRange(0, 10**10),
    help="Unit price in cents",
)
@click.option("--transactions", default=0, show_default=True, type=click.IntRange(0, 10**9))
@click.option("--merchants", default=10, show_default=True, type=click.IntRange(1, 100_000))
@click.option(
    "--from",
    "first_day",
    default="2025-01-01",
    show_default=True,
    callback=_parse_day,
    help="First day of paid_at (UTC)",
)
@click.option(
    "--to",
    "last_day",
    default="2025-01-31",
    show_default=True,
    callback=_parse_day,
    help="Last day of paid_at (UTC, inclusive)",
)
@click.option("--seed", default=42, show_default=True, type=int, help="Random seed")
@click.option("--reset", is_flag=True, help="Empty the transactions table first")
def seed(
    *, products: int, stock: int, price: int, transactions: int, merchants: int,
    first_day: date, last_day: date, seed: int, reset: bool,
) -> None:  # fmt: skip
    """Create demo products and bulk-load payment transactions (deterministic per --seed)."""
    from flashsale import seeding

    if first_day > last_day:
        raise click.BadParameter("--from must not be after --to")
    settings = _settings()
    spec = seeding.TransactionSpec(transactions, merchants, first_day, last_day, seed)

    async def work(conn: asyncpg.Connection) -> None:
        if products:
            ids = await seeding.create_demo_products(conn, count=products, stock=stock, price=price)
            click.echo(f"products: created {len(ids)} (ids {ids[0]}..{ids[-1]})")
        if reset and not transactions:
            await conn.execute("TRUNCATE transactions")
        if transactions:
            started = time.perf_counter()
            with tqdm(
                total=transactions, unit="rows", unit_scale=True, desc="transactions", disable=None
            ) as bar:
                await seeding.copy_transactions(conn, spec, replace=reset, on_progress=bar.update)
            elapsed = time.perf_counter() - started
            click.echo(
                f"transactions: loaded {transactions:,} in {elapsed:.2f} s "
                f"({transactions / elapsed:,.0f} rows/s)"
            )

    _on_database(settings, work)


def _int_list(_: click.Context, __: click.Parameter, value: str) -> list[int]:
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None


@main.group()
def bench() -> None:
    """Benchmarks that print their figures (run them on an otherwise idle machine)."""


@bench.command("orders")
@click.option(
    "--clients",
    default="64,512",
    show_default=True,
    callback=_int_list,
    help="Concurrent HTTP connections, comma-separated",
)
@click.option(
    "--seconds",
    default=10,
    show_default=True,
    type=click.IntRange(1, 3600),
    help="Duration of each measured run (after a 2 s warm-up)",
)
@click.option(
    "--coalescing",
    default="on",
    show_default=True,
    type=click.Choice(["on", "off", "on,off", "off,on"]),
    help="ORDER_COALESCING values to try",
)
@click.option(
    "--workers",
    default="2",
    show_default=True,
    callback=_int_list,
    help="WEB_CONCURRENCY values to try, comma-separated",
)
@click.option(
    "--pool-size",
    default="8",
    show_default=True,
    callback=_int_list,
    help="DB_POOL_SIZE values to try, comma-separated",
)
@click.option(
    "--batch-max",
    default="256",
    show_default=True,
    callback=_int_list,
    help="ORDER_BATCH_MAX values to try with coalescing on, comma-separated",
)
@click.option(
    "--existing-orders",
    default=2_000_000,
    show_default=True,
    type=click.IntRange(0, 10**9),
    help="Orders inserted behind the servers' back after the first run, then measured again "
    "(0: skip)",
)
@click.option(
    "--coalescer",
    is_flag=True,
    help="Also measure flash-sale mode without HTTP (the coalescer in the bench's process)",
)
@click.option(
    "--generator",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "wrk", "python"]),
    help="Load generator: wrk when on PATH (auto), or the Python fallback",
)
@click.option("--pgbench-clients", default="8,16,64", show_default=True, callback=_int_list)
@click.option("--pgbench-seconds", default=10, show_default=True, type=click.IntRange(1, 600))
def bench_orders(
    *, clients: list[int], seconds: int, coalescing: str, workers: list[int],
    pool_size: list[int], batch_max: list[int], existing_orders: int, coalescer: bool,
    generator: str, pgbench_clients: list[int], pgbench_seconds: int,
) -> None:  # fmt: skip
    """Hot-product orders/s, p50, p99 over HTTP (wrk) vs the HTTP ceiling (a 404, same
    generator, same servers) and the database's best single-order rate (pgbench); WAL per
    order, a grown orders table, a sold-out product, the ledger."""
    from flashsale.bench import orders as orders_bench

    settings = _settings()
    configurations = [
        {"ORDER_COALESCING": mode, "WEB_CONCURRENCY": str(w), "DB_POOL_SIZE": str(p)}
        | ({"ORDER_BATCH_MAX": str(b)} if b else {})
        for mode in coalescing.split(",")
        for w in workers
        for p in pool_size
        for b in (batch_max if mode == "on" else [0])
    ]
    url = _database_url(settings)
    try:
        migrations.upgrade(url)
        orders_bench.run(
            url, clients=clients, seconds=seconds, configurations=configurations,
            batch_max=batch_max[0], existing_orders=existing_orders, coalescer=coalescer,
            generator=generator, pgbench_clients=pgbench_clients,
            pgbench_seconds=pgbench_seconds,
        )  # fmt: skip
    finally:
        db.stop_embedded()


@bench.command("settlement")
@click.option(
    "--rows",
    default="1000000",
    show_default=True,
    callback=_int_list,
    help="Transaction counts to try, comma-separated (e.g. 1000000,10000000)",
)
@click.option("--merchants", default=10, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1, 100))
@click.option(
    "--job-workers",
    default="8",
    show_default=True,
    callback=_int_list,
    help="JOB_WORKERS values to try, comma-separated",
)
@click.option("--batch-size", default=10_000, show_default=True, type=click.IntRange(100, 10**7))
@click.option("--repeat", default=5, show_default=True, type=click.IntRange(1, 100),
              help="Runs of the single query per setting (the best counts)")  # fmt: skip
@click.option("--explain", is_flag=True, help="Print EXPLAIN (ANALYZE, BUFFERS) plans")
@click.option("--keep", is_flag=True, help="Keep the scratch database")
def bench_settlement(
    *, rows: list[int], merchants: int, runs: int, job_workers: list[int], batch_size: int,
    repeat: int, explain: bool, keep: bool,
) -> None:  # fmt: skip
    """A settlement job end to end vs the database's best single query; seed time, RSS."""
    from flashsale.bench import settlement as settlement_bench

    settings = _settings()
    try:
        options = settlement_bench.Options(
            merchants=merchants, runs=runs, job_workers=job_workers, batch_size=batch_size,
            repeat=repeat, show_plans=explain,
        )  # fmt: skip
        settlement_bench.run(_database_url(settings), rows=rows, options=options, keep=keep)
    finally:
        db.stop_embedded()
