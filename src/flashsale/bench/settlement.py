"""`flashsale bench settlement`: a settlement job end to end against the database's own best.

In one invocation, for each row count (in a scratch database created for the run, dropped after):
1. Seed N transactions over one month with the seeder's binary COPY (timed; rows in `paid_at`
   order, as payments recorded as they happen are, written frozen), then VACUUM ANALYZE.
2. The database's best single query over the same rows: GROUP BY merchant and UTC day, no ORDER
   BY, with default settings, raised work_mem, and raised work_mem without JIT; best of several.
3. A real `flashsale serve` process (embedded worker): POST /jobs/settlement, poll GET /jobs/{id}
   until COMPLETED (CSV written, settlements stored). Each job run is paired with one more run of
   the single query under its best setting, so that both see the same load on a shared machine.
   The server's RSS is read from /proc before (VmRSS) and after (VmHWM, the peak).
The figures that matter are the ratios job / single query (best to best, median to median), and
how time and memory change from one row count to the next.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from flashsale import migrations, seeding
from flashsale.bench import harness
from flashsale.settlement.aggregation import Batch, day_start

FIRST_DAY, LAST_DAY = date(2025, 1, 1), date(2025, 1, 31)
SINGLE_QUERY = """
SELECT merchant_id, (paid_at AT TIME ZONE 'UTC')::date AS day, sum(amount_cents) AS gross_cents,
       sum(fee_cents) AS fee_cents, count(*) AS txn_count
FROM transactions
WHERE status = 'COMPLETED' AND paid_at >= $1 AND paid_at < $2
GROUP BY 1, 2
"""
SETTINGS: dict[str, list[str]] = {
    "default settings": [],
    "work_mem=256MB": ["SET work_mem = '256MB'"],
    "work_mem=256MB, jit=off": ["SET work_mem = '256MB'", "SET jit = off"],
}
POLL_S = 0.01
# Only turns a hung job into an error: far beyond any job the bench runs.
JOB_LIMIT_S = 3600.0


@dataclass(frozen=True)
class Options:
    merchants: int
    runs: int
    job_workers: list[int]
    batch_size: int
    repeat: int
    show_plans: bool


@dataclass
class Result:
    rows: int
    seed_s: float = 0.0
    query_ms: list[float] = field(default_factory=list)  # the best setting, paired with jobs
    job_ms: dict[int, list[float]] = field(default_factory=dict)  # by JOB_WORKERS
    rss_growth_mb: dict[int, float] = field(default_factory=dict)


async def seed(url: str, rows: int, merchants: int) -> tuple[float, float]:
    """Replace the table's rows with `rows` transactions (COPY), VACUUM ANALYZE; the seeding
    time and the vacuum's."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE settlements, settlement_jobs")
        spec = seeding.TransactionSpec(rows, merchants, FIRST_DAY, LAST_DAY, seed=42)
        started = time.perf_counter()
        await seeding.copy_transactions(conn, spec, replace=True)
        seeded = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute("VACUUM ANALYZE transactions")
        return seeded, time.perf_counter() - started
    finally:
        await conn.close()


def _range() -> tuple[datetime, datetime]:
    return day_start(FIRST_DAY), day_start(LAST_DAY) + timedelta(days=1)


def plan_shape(plan: dict[str, Any]) -> str:
    """'Finalize HashAggregate <- Gather <- Partial HashAggregate <- Parallel Seq Scan'."""
    nodes = []
    while plan:
        mode = plan.get("Partial Mode", "Simple")
        kind = {"Hashed": "HashAggregate", "Sorted": "GroupAggregate"}.get(
            plan.get("Strategy", ""), plan["Node Type"]
        )
        name = ("Parallel " if plan.get("Parallel Aware") else "") + kind
        nodes.append(name if mode == "Simple" else f"{mode} {name}")
        plan = (plan.get("Plans") or [{}])[0]
    return " <- ".join(nodes)


async def best_single_query(url: str, repeat: int) -> dict[str, tuple[float, str]]:
    """Best time (ms) and plan shape of the single GROUP BY under each setting."""
    results = {}
    for label, statements in SETTINGS.items():
        conn = await asyncpg.connect(url)
        try:
            for statement in statements:
                await conn.execute(statement)
            plan = json.loads(
                await conn.fetchval(f"EXPLAIN (FORMAT JSON) {SINGLE_QUERY}", *_range())
            )
            timings = []
            for _ in range(repeat):
                started = time.perf_counter()
                await conn.fetch(SINGLE_QUERY, *_range())
                timings.append((time.perf_counter() - started) * 1000)
            results[label] = (min(timings), plan_shape(plan[0]["Plan"]))
        finally:
            await conn.close()
    return results


async def query_connection(url: str, setting: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url)
    for statement in SETTINGS[setting]:
        await conn.execute(statement)
    return conn


async def time_query(conn: asyncpg.Connection) -> float:
    started = time.perf_counter()
    await conn.fetch(SINGLE_QUERY, *_range())
    return (time.perf_counter() - started) * 1000


async def explain(url: str, batch_size: int) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the single query (default settings) and of one batch."""
    from flashsale.settlement import service

    conn = await asyncpg.connect(url)
    try:
        lines = ["single query, default settings:"]
        for row in await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {SINGLE_QUERY}", *_range()):
            lines.append(f"    {row[0]}")
        count = await service.count_completed(
            conn, start=_range()[0], end=_range()[0] + timedelta(days=1)
        )
        parts = max(1, -(-count // batch_size))
        batch = Batch(FIRST_DAY, _range()[0], _range()[0] + timedelta(days=1) / parts)
        lines.append(f"one batch ({batch.start:%H:%M:%S}..{batch.end:%H:%M:%S} of day one):")
        query = service.AGGREGATE_BATCH_SQL
        for row in await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {query}", batch.start, batch.end):
            lines.append(f"    {row[0]}")
        return "\n".join(lines)
    finally:
        await conn.close()


async def expected_totals(url: str) -> tuple[int, int]:
    """(lines, transactions) of the settlement, from the single query."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(SINGLE_QUERY, *_range())
        return len(rows), sum(row["txn_count"] for row in rows)
    finally:
        await conn.close()


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


async def run_job(base_url: str) -> tuple[float, float, dict[str, Any]]:
    """POST a job for the month and poll until it is finished: (client ms, server ms, job)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        body = {"from": FIRST_DAY.isoformat(), "to": LAST_DAY.isoformat()}
        started = time.perf_counter()
        response = await client.post("/jobs/settlement", json=body)
        response.raise_for_status()
        done = harness.status_is(*harness.FINISHED)
        job = await harness.wait_for_job(
            client, response.json()["job_id"], done, limit_s=JOB_LIMIT_S, poll_s=POLL_S
        )
        elapsed = (time.perf_counter() - started) * 1000
        if job["status"] != "COMPLETED":
            raise RuntimeError(f"job ended {job['status']}: {job.get('error')}")
        created = datetime.fromisoformat(job["created_at"])
        finished = datetime.fromisoformat(job["finished_at"])
        csv_lines = (await client.get(job["download_url"])).text.count("\n") - 1
        job["csv_lines"] = csv_lines
        return elapsed, (finished - created).total_seconds() * 1000, job


def run(url: str, *, rows: list[int], options: Options, keep: bool) -> None:
    scratch = asyncio.run(harness.create_database(url, "flashsale_bench_settlement"))
    name = harness.database_name(scratch)
    print(
        f"flashsale bench settlement: {FIRST_DAY}..{LAST_DAY}, {options.merchants} merchants, "
        f"scratch database {name}"
    )
    try:
        migrations.upgrade(scratch)
        results = [_one_size(scratch, count, options) for count in rows]
    finally:
        if keep:
            print(f"\nkept the scratch database {name}")
        else:
            asyncio.run(harness.drop_database(url, scratch))
    _summary(results)


def _one_size(url: str, count: int, options: Options) -> Result:
    result = Result(count)
    print(f"\n{count:,} transactions")
    result.seed_s, after_s = asyncio.run(seed(url, count, options.merchants))
    print(
        f"  seed (binary COPY + ANALYZE): {result.seed_s:.2f} s "
        f"({count / result.seed_s:,.0f} rows/s); VACUUM ANALYZE {after_s:.2f} s"
    )
    repeat = options.repeat
    print(f"  the database's single query (GROUP BY merchant, UTC day), best of {repeat}:")
    scan = asyncio.run(best_single_query(url, repeat))
    for label, (ms, shape) in scan.items():
        print(f"    {label:26s} {ms:8.1f} ms   {shape}")
    setting = min(scan, key=lambda label: scan[label][0])
    print(f"    best setting: {setting}")
    if options.show_plans:
        plans = asyncio.run(explain(url, options.batch_size))
        print("  plans:\n    " + plans.replace("\n", "\n    "))
    expected = asyncio.run(expected_totals(url))
    for workers in options.job_workers:
        _jobs(url, result, workers, setting=setting, options=options, expected=expected)
    return result


def _jobs(
    url: str, result: Result, workers: int, *, setting: str, options: Options,
    expected: tuple[int, int],
) -> None:  # fmt: skip
    env = {
        "JOB_WORKERS": str(workers),
        "JOB_BATCH_SIZE": str(options.batch_size),
        "LOG_LEVEL": "warning",
        # One process serves and runs the job (embedded worker): its RSS is the job's memory.
        "WEB_CONCURRENCY": "1",
    }
    print(
        f"  settlement job through `flashsale serve` (JOB_WORKERS={workers}, "
        f"JOB_BATCH_SIZE={options.batch_size}), POST -> COMPLETED polled every "
        f"{POLL_S * 1000:.0f} ms, each paired with the single query ({setting}):"
    )
    with (
        tempfile.TemporaryDirectory() as data_dir,
        harness.running_server(url, {**env, "DATA_DIR": data_dir}) as server,
    ):
        idle = memory_kb(server.process.pid)["VmRSS"]
        jobs, queries = asyncio.run(_paired_runs(url, server.url, setting, options.runs, expected))
        peak = memory_kb(server.process.pid)["VmHWM"]
        print(f"    cancel: {asyncio.run(cancel_latency(url, server.url, server.process.pid))}")
    result.job_ms[workers] = jobs
    result.query_ms += queries
    result.rss_growth_mb[workers] = (peak - idle) / 1024
    print(
        f"    job: best {min(jobs):.1f} ms, median {statistics.median(jobs):.1f} ms; "
        f"single query: best {min(queries):.1f} ms, median {statistics.median(queries):.1f} ms"
    )
    print(
        f"    job / single query: {min(jobs) / min(queries):.2f} (best to best), "
        f"{statistics.median(jobs) / statistics.median(queries):.2f} (median to median)"
    )
    print(
        f"    server RSS: idle {idle / 1024:.1f} MB, peak {peak / 1024:.1f} MB "
        f"(growth {(peak - idle) / 1024:+.1f} MB)"
    )


async def _paired_runs(
    url: str, server_url: str, setting: str, runs: int, expected: tuple[int, int]
) -> tuple[list[float], list[float]]:
    conn = await query_connection(url, setting)
    jobs, queries = [], []
    try:
        for attempt in range(1, runs + 1):
            client_ms, server_ms, job = await run_job(server_url)
            query_ms = await time_query(conn)
            jobs.append(client_ms)
            queries.append(query_ms)
            got = (job["csv_lines"], job["total"])
            check = "ok" if got == expected else f"MISMATCH: expected {expected}, got {got}"
            print(
                f"    run {attempt}: job {client_ms:8.1f} ms (created_at -> finished_at "
                f"{server_ms:.1f} ms; {job['total']:,} transactions, {job['csv_lines']} lines: "
                f"{check}); single query {query_ms:8.1f} ms"
            )
    finally:
        await conn.close()
    return jobs, queries


def _progress_or_done(job: harness.Job) -> bool:
    return bool(job["processed"]) or job["status"] not in ("QUEUED", "RUNNING")


async def cancel_latency(url: str, base_url: str, server_pid: int) -> str:
    """Cancel a job once it has stored progress; time until the server runs no query any more."""
    conn = await asyncpg.connect(url)
    busy = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
            body = {"from": FIRST_DAY.isoformat(), "to": LAST_DAY.isoformat()}
            job_id = (await client.post("/jobs/settlement", json=body)).json()["job_id"]
            job = await harness.wait_for_job(
                client, job_id, _progress_or_done, limit_s=JOB_LIMIT_S, poll_s=0.001
            )
            response = await client.post(f"/jobs/{job_id}/cancel")
            cancelled = time.perf_counter()
            if response.status_code != 200:
                return "not measured: the job finished before it stored any progress"
            while await conn.fetchval(busy, f"flashsale:{server_pid}"):
                continue
            stopped_ms = (time.perf_counter() - cancelled) * 1000
            status = (await client.get(f"/jobs/{job_id}")).json()["status"]
    finally:
        await conn.close()
    return (
        f"at {job['progress']}% ({job['processed']:,} of {job['total']:,} rows), the server "
        f"ran no more queries {stopped_ms:.1f} ms after the 200 (job {status})"
    )


def _summary(results: list[Result]) -> None:
    print("\nsummary (ratio: job / single query, best to best and median to median)")
    header = ("rows", "JOB_WORKERS", "seed", "query best", "job best", "ratio", "query med",
              "job med", "ratio", "RSS growth")  # fmt: skip
    print("  {:>11} {:>11} {:>7} {:>10} {:>9} {:>5} {:>9} {:>9} {:>5} {:>10}".format(*header))
    for result in results:
        query_best, query_median = min(result.query_ms), statistics.median(result.query_ms)
        for workers, jobs in result.job_ms.items():
            job_best, job_median = min(jobs), statistics.median(jobs)
            print(
                f"  {result.rows:>11,} {workers:>11} {result.seed_s:>6.2f}s {query_best:>8.1f}ms "
                f"{job_best:>7.1f}ms {job_best / query_best:>5.2f} {query_median:>7.1f}ms "
                f"{job_median:>7.1f}ms {job_median / query_median:>5.2f} "
                f"{result.rss_growth_mb[workers]:>+8.1f}MB"
            )
    if len(results) > 1:
        first, last = results[0], results[-1]
        query_growth = statistics.median(last.query_ms) / statistics.median(first.query_ms)
        for workers in first.job_ms:
            job_growth = statistics.median(last.job_ms[workers]) / statistics.median(
                first.job_ms[workers]
            )
            print(
                f"  {last.rows:,} vs {first.rows:,} rows (x{last.rows / first.rows:g}), "
                f"JOB_WORKERS={workers}: job time x{job_growth:.2f}, single query "
                f"x{query_growth:.2f} (medians)"
            )
