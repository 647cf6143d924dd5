"""The `flashsale` command: parses options and dispatches to `processes` (serve, worker,
migrate), `seeding` (seed) and `bench`.

Only click is imported here: each command imports what it runs when it runs, so that `--help`,
`--version` and a typo answer at once instead of after loading the whole service.
"""

from __future__ import annotations

import time
from datetime import date
from typing import TYPE_CHECKING, Any

import click

from flashsale.access.cli import dev, keys
from flashsale.bench.cli import bench
from flashsale.errors import CommandError

if TYPE_CHECKING:
    import asyncpg


class _Commands(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        """A bad setting or a database that cannot be started is a one-line error, not a
        traceback."""
        try:
            return super().invoke(ctx)
        except CommandError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Commands)
@click.version_option(package_name="flashsale")
def main() -> None:
    """flashsale: limited-stock orders that never oversell, and merchant settlement jobs."""


main.add_command(bench)
main.add_command(keys)
main.add_command(dev)


@main.command()
@click.option("--host", help="Bind address [env SERVER_HOST, default 127.0.0.1]")
@click.option("--port", type=int, help="Port [env SERVER_PORT, default 8080]")
@click.option("--workers", type=int, help="Worker processes [env WEB_CONCURRENCY, default 2]")
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Run the HTTP API (embedded PostgreSQL unless a database is configured)."""
    from flashsale import processes

    processes.serve(processes.settings(server_host=host, server_port=port, web_concurrency=workers))


@main.command()
@click.option(
    "--no-metrics-port",
    is_flag=True,
    help="Serve no /metrics on METRICS_PORT (as the worker `flashsale serve` supervises, whose "
    "figures are in the API's /metrics)",
)
def worker(no_metrics_port: bool) -> None:
    """Run settlement jobs (any number of these, on any hosts, against one database)."""
    from flashsale import processes

    processes.work(processes.settings(), metrics_port=not no_metrics_port)


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
    from flashsale import migrations, processes

    with processes.database(processes.settings()) as url:
        migrations.upgrade(url, revision)


@migrate.command()
@click.argument("revision")
def downgrade(revision: str) -> None:
    """Downgrade to REVISION ('base' removes every table)."""
    from flashsale import migrations, processes

    with processes.database(processes.settings()) as url:
        migrations.downgrade(url, revision)


@main.group(name="db")
def database() -> None:
    """Reach the database this service uses (configured, or the embedded PostgreSQL)."""


@database.command()
def url() -> None:
    """Print its connection URL (the embedded one: a Unix socket in DATA_DIR, database
    `flashsale`)."""
    from flashsale import db, processes

    settings = processes.settings()
    running = settings.configured_database_url is not None or db.embedded_running(settings.data_dir)
    with processes.database(settings) as connection_url:
        click.echo(connection_url)
    if not running:
        click.echo(
            "(the embedded PostgreSQL is not running: it answers while `flashsale serve` runs; "
            "`flashsale db psql` starts it for its session)",
            err=True,
        )


@database.command(context_settings={"ignore_unknown_options": True})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
def psql(psql_args: tuple[str, ...]) -> None:
    """Open psql on it (psql from PATH, else the embedded PostgreSQL's own); PSQL_ARGS are
    passed on, e.g. `flashsale db psql -c 'SELECT 1'`."""
    import shutil
    import subprocess

    from flashsale import db, processes

    with processes.database(processes.settings()) as connection_url:
        binary = shutil.which("psql") or str(db.embedded_binary("psql"))
        # The operator's own arguments, as a list (no shell): psql is theirs to drive.
        code = subprocess.call([binary, connection_url, *psql_args])  # noqa: S603
    raise SystemExit(code)


@main.group(name="import")
def import_group() -> None:
    """Bulk-load data into the database."""


@import_group.command(name="transactions")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option(
    "--format",
    "form",
    type=click.Choice(["csv", "ndjson"]),
    help="Default: ndjson for .ndjson/.jsonl files, else csv",
)
@click.option(
    "--on-duplicate",
    type=click.Choice(["fail", "skip"]),
    default="fail",
    show_default=True,
    help="An external_id already stored: import nothing, or skip it when its values are the same",
)
def import_transactions(file: str, form: str | None, on_duplicate: str) -> None:
    """Import payment transactions from FILE (CSV with the header
    external_id,merchant_id,amount_cents,fee_cents,status,paid_at, or NDJSON), all or nothing:
    as POST /transactions/import does, directly against the database. Ctrl-C imports nothing."""
    import os
    from collections.abc import AsyncIterator

    from tqdm import tqdm

    from flashsale import processes
    from flashsale.errors import AppError
    from flashsale.transactions import importing

    path = file
    if form is None:
        form = "ndjson" if path.lower().endswith((".ndjson", ".jsonl")) else "csv"

    async def chunks() -> AsyncIterator[bytes]:
        with open(path, "rb") as source:  # noqa: ASYNC230 (local reads of 1 MiB: brief)
            while chunk := source.read(1 << 20):
                yield chunk

    size = os.path.getsize(path)

    async def work(conn: asyncpg.Connection) -> None:
        started = time.perf_counter()
        with tqdm(total=size, unit="B", unit_scale=True, desc="reading", disable=None) as bar:
            lines = 0

            def progress(size: int, new_lines: int) -> None:
                nonlocal lines
                lines += new_lines
                bar.set_postfix(lines=f"{lines:,}", refresh=False)
                bar.update(size)

            result = await importing.import_transactions(
                conn, chunks(), form=form, on_duplicate=on_duplicate,  # type: ignore[arg-type]
                on_progress=progress, on_phase=bar.set_description,
            )  # fmt: skip
        elapsed = time.perf_counter() - started
        click.echo(
            f"transactions: imported {result.imported:,}, skipped {result.skipped:,} "
            f"in {elapsed:.2f} s"
        )

    try:
        processes.on_connection(processes.settings(), work)
    except AppError as exc:
        raise click.ClickException(_error_report(exc)) from None


def _error_report(error: Any) -> str:
    """An import's refusal as the API gives it: the message, then one line per detail."""
    lines = [error.detail_message]
    for detail in error.details or []:
        where = ", ".join(
            f"{key} {value}" for key, value in detail.items() if key != "message" and value
        )
        lines.append(f"  {where}: {detail.get('message', '')}".rstrip(": "))
    return "\n".join(lines)


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
@click.option("--reset", is_flag=True, help="Replace the transactions already there")
@click.option("--append", is_flag=True, help="Add to the transactions already there")
def seed(
    *, products: int, stock: int, price: int, transactions: int, merchants: int,
    first_day: date, last_day: date, seed: int, reset: bool, append: bool,
) -> None:  # fmt: skip
    """Create the demo products that do not exist yet and bulk-load payment transactions
    (deterministic per --seed). Refuses to add to existing transactions without --append or
    --reset."""
    from tqdm import tqdm

    from flashsale import processes, seeding

    if first_day > last_day:
        raise click.BadParameter("--from must not be after --to")
    if reset and append:
        raise click.UsageError("--reset and --append exclude each other")
    spec = seeding.TransactionSpec(transactions, merchants, first_day, last_day, seed)

    async def work(conn: asyncpg.Connection) -> None:
        if transactions and not (reset or append):
            existing = await seeding.transaction_count(conn)
            if existing:
                raise click.ClickException(
                    f"transactions already holds {existing:,} rows: add --append to add "
                    f"{transactions:,} more, or --reset to replace them"
                )
        if products:
            ids, present = await seeding.create_demo_products(
                conn, count=products, stock=stock, price=price
            )
            created = f"created {len(ids)} (ids {ids[0]}..{ids[-1]})" if ids else "created none"
            click.echo(f"products: {created}, {present} already there")
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

    processes.on_connection(processes.settings(), work)
