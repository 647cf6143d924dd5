"""`flashsale bench`: benchmarks that print their figures (registered by the CLI)."""

from __future__ import annotations

from pathlib import Path

import click


def _int_list(_: click.Context, __: click.Parameter, value: str) -> list[int]:
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None


@click.group()
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
@click.option(
    "--buyer-auth",
    default="none",
    show_default=True,
    type=click.Choice(["none", "jwt"]),
    help="jwt: instead of the runs above, POST /orders with BUYER_AUTH=jwt (a distinct token per "
    "order; each token 3 times) beside the same orders without auth, at one --clients count "
    "(64 unless given) and one --workers value",
)
@click.option(
    "--algorithms",
    default="ES256,RS256,EdDSA",
    show_default=True,
    help="With --buyer-auth jwt: the token algorithms to measure, comma-separated",
)
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 100),
              help="With --buyer-auth jwt: alternating rounds (targets: medians)")  # fmt: skip
@click.option("--profile", is_flag=True,
              help="With --buyer-auth jwt: py-spy of a server worker during a distinct-token run "
              "per algorithm")  # fmt: skip
@click.pass_context
def bench_orders(
    ctx: click.Context, *, clients: list[int], seconds: int, coalescing: str, workers: list[int],
    pool_size: list[int], batch_max: list[int], existing_orders: int, coalescer: bool,
    generator: str, pgbench_clients: list[int], pgbench_seconds: int, buyer_auth: str,
    algorithms: str, rounds: int, profile: bool,
) -> None:  # fmt: skip
    """Hot-product orders/s, p50, p99 over HTTP (wrk) vs the HTTP ceiling (a 404, same
    generator, same servers) and the database's best single-order rate (pgbench); WAL per
    order, a grown orders table, a sold-out product, the ledger. With --buyer-auth jwt: what
    verified buyers cost POST /orders (see `flashsale.bench.buyer_auth`)."""
    from flashsale import processes

    if buyer_auth == "jwt":
        default_clients = ctx.get_parameter_source("clients") is click.core.ParameterSource.DEFAULT
        connections = [64] if default_clients else clients
        if len(connections) != 1 or len(workers) != 1:
            raise click.UsageError("--buyer-auth jwt takes one --clients and one --workers value")
        if generator == "python":
            raise click.UsageError("--buyer-auth jwt needs wrk (--generator auto or wrk)")
        from flashsale.bench import buyer_auth as buyer_auth_bench

        try:
            chosen = buyer_auth_bench.parse_algorithms(algorithms)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--algorithms") from None
        options = buyer_auth_bench.Options(
            connections=connections[0], seconds=seconds, rounds=rounds, algorithms=chosen,
            workers=workers[0], profile=profile,
        )  # fmt: skip
        with processes.database(processes.settings(), migrate=True) as url:
            buyer_auth_bench.run(url, options)
        return
    if profile:
        raise click.UsageError("--profile goes with --buyer-auth jwt")
    from flashsale.bench import orders as orders_bench

    configurations = [
        {"ORDER_COALESCING": mode, "WEB_CONCURRENCY": str(w), "DB_POOL_SIZE": str(p)}
        | ({"ORDER_BATCH_MAX": str(b)} if b else {})
        for mode in coalescing.split(",")
        for w in workers
        for p in pool_size
        for b in (batch_max if mode == "on" else [0])
    ]
    with processes.database(processes.settings(), migrate=True) as url:
        orders_bench.run(
            url, clients=clients, seconds=seconds, configurations=configurations,
            batch_max=batch_max[0], existing_orders=existing_orders, coalescer=coalescer,
            generator=generator, pgbench_clients=pgbench_clients,
            pgbench_seconds=pgbench_seconds,
        )  # fmt: skip


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

    options = settlement_bench.Options(
        merchants=merchants, runs=runs, job_workers=job_workers, batch_size=batch_size,
        repeat=repeat, show_plans=explain,
    )  # fmt: skip
    from flashsale import processes

    with processes.database(processes.settings()) as url:
        settlement_bench.run(url, rows=rows, options=options, keep=keep)


@bench.command("job-events")
@click.option("--rows", default=10_000_000, show_default=True, type=click.IntRange(1, 10**9))
@click.option("--merchants", default=1000, show_default=True, type=click.IntRange(1, 10**6))
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1, 100))
@click.option("--streams", default=100, show_default=True, type=click.IntRange(1, 10_000),
              help="Idle streams whose database connections are counted")  # fmt: skip
def bench_job_events(*, rows: int, merchants: int, runs: int, streams: int) -> None:
    """Progress write -> event latency on another server; connections held by idle streams."""
    from flashsale import processes
    from flashsale.bench import job_events

    with processes.database(processes.settings()) as url:
        job_events.run(url, rows=rows, merchants=merchants, runs=runs, streams=streams)


@bench.command("import")
@click.option(
    "--rows",
    default="1000000",
    show_default=True,
    callback=_int_list,
    help="Rows per import to try, comma-separated (e.g. 1000000,10000000)",
)
@click.option("--existing", default=2_000_000, show_default=True, type=click.IntRange(0, 10**9),
              help="Transactions already in the table of every run")  # fmt: skip
@click.option("--merchants", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option(
    "--formats",
    default="csv,ndjson",
    show_default=True,
    type=click.Choice(["csv", "ndjson", "csv,ndjson"]),
    help="Body formats to import",
)
@click.option("--connections", default=64, show_default=True, type=click.IntRange(1, 10_000),
              help="wrk connections for POST /transactions")  # fmt: skip
@click.option("--seconds", default=10, show_default=True, type=click.IntRange(1, 3600),
              help="Duration of each wrk run (after a 2 s warm-up)")  # fmt: skip
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="WEB_CONCURRENCY of the server")  # fmt: skip
@click.option("--explain", is_flag=True, help="EXPLAIN (ANALYZE, BUFFERS) of the import's INSERT")
@click.option("--profile", is_flag=True, help="py-spy profile of the server during an import")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the exported files go (default: the temporary directory)")  # fmt: skip
def bench_import(
    *, rows: list[int], existing: int, merchants: int, formats: str, connections: int,
    seconds: int, workers: int, explain: bool, profile: bool, work_dir: Path | None,
) -> None:  # fmt: skip
    """Bulk import over HTTP vs the seeder's binary COPY of the same rows (time, WAL, server
    RSS); POST /transactions rate and p99 vs the HTTP ceiling (wrk)."""
    from flashsale import processes
    from flashsale.bench import imports

    options = imports.Options(
        existing=existing, merchants=merchants, formats=formats.split(","),
        connections=connections, seconds=seconds, web_concurrency=workers, explain=explain,
        profile=profile,
    )  # fmt: skip
    with processes.database(processes.settings()) as url:
        imports.run(url, rows=rows, options=options, work_dir=work_dir)
