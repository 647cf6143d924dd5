"""`flashsale bench import`: bulk imports through HTTP against the database's own best load,
and one-at-a-time `POST /transactions` against the HTTP ceiling.

In one invocation, in scratch databases created for the run (dropped after):
1. A base database holding `existing` transactions (the seeder), cloned for every measured run so
   that each starts from the same table: same rows, same indexes, statistics as the seeder left
   them (not refreshed after the loads).
2. For each row count N: the baseline, N rows by the seeder's binary COPY straight into
   `transactions` (the database's fastest load, with every index and CHECK the import pays for);
   those very rows exported as CSV and NDJSON files.
3. Each file POSTed to `/transactions/import` of a real `flashsale serve` on a clone of the base,
   streamed from disk. Timed end to end; the server's RSS (its processes summed) sampled every
   50 ms; this process's CPU time over the upload, to show the client is not the bottleneck;
   WAL written per row, against the baseline's. The imported rows are compared with the
   baseline's (count and sums).
4. `POST /transactions` from wrk (one thread, a new external_id per request) on the server whose
   table now holds existing + N rows, against wrk's own ceiling: the same numbered POSTs to an
   unknown route (routing, middleware and the 404 envelope, no database).
`--explain` adds EXPLAIN (ANALYZE, BUFFERS) of the import's INSERT on one more clone; `--profile`
a py-spy profile (py-spy from PyPI) of the server during the first import, top frames by samples.
The figures that matter: import time / baseline (target <= 2x), RSS growth (target <= 50 MB,
flat from 1M to 10M rows), and POST /transactions vs the ceiling.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from flashsale import migrations, seeding
from flashsale.bench import harness, wrk
from flashsale.bench.loadgen import LoadResult
from flashsale.bench.orders import CEILING_PATH, WARMUP_S
from flashsale.transactions import importing
from flashsale.transactions.schemas import FIELDS

FIRST_DAY, LAST_DAY = date(2025, 1, 1), date(2025, 1, 31)
TARGET_X_BASELINE = 2.0
TARGET_RSS_GROWTH_MB = 50.0
RSS_SAMPLE_S = 0.05
FORMATS = {"csv": "text/csv", "ndjson": "application/x-ndjson"}
CHUNK_BYTES = 1 << 20
# Only turns a hung import into an error: far beyond any import the bench runs.
IMPORT_LIMIT_S = 3600.0
# The rows a load appended to the base's `existing` ones, as the import receives them.
_EXPORT = {
    "csv": """SELECT external_id, merchant_id, amount_cents, fee_cents, status,
        to_char(paid_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS paid_at
        FROM transactions WHERE id > {existing} ORDER BY id""",
    "ndjson": """SELECT json_build_object('external_id', external_id,
        'merchant_id', merchant_id, 'amount_cents', amount_cents, 'fee_cents', fee_cents,
        'status', status, 'paid_at',
        to_char(paid_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
        FROM transactions WHERE id > {existing} ORDER BY id""",
}
_FINGERPRINT = """
SELECT count(*), coalesce(sum(amount_cents), 0), coalesce(sum(fee_cents), 0),
       coalesce(sum(extract(epoch FROM paid_at)), 0), count(DISTINCT external_id)
FROM transactions WHERE id > $1
"""
_ONE_TRANSACTION = (
    '{"external_id": "bench-' + wrk.COUNTER + '", "merchant_id": "merchant_001", '
    '"amount_cents": 1999, "fee_cents": 88, "status": "COMPLETED", '
    '"paid_at": "2025-01-15T12:00:00Z"}'
)


@dataclass(frozen=True)
class Options:
    existing: int
    merchants: int
    formats: list[str]
    connections: int
    seconds: int
    web_concurrency: int
    explain: bool
    profile: bool


@dataclass
class Load:
    """One way of loading N rows: its wall time, WAL, and (imports) the server's memory."""

    label: str
    seconds: float
    wal_bytes: int
    file_bytes: int = 0
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_peak_mb - self.rss_before_mb


@dataclass
class SizeResult:
    rows: int
    baseline: Load
    imports: list[Load] = field(default_factory=list)
    single: LoadResult | None = None
    ceiling: LoadResult | None = None
    problems: list[str] = field(default_factory=list)


# --- the database side --------------------------------------------------------------------------


async def _wal_lsn(conn: asyncpg.Connection) -> int:
    """The WAL position, as a byte offset (asyncpg decodes pg_lsn to an int)."""
    return int(await conn.fetchval("SELECT pg_current_wal_lsn()"))


async def _row(url: str, sql: str, *args: object) -> tuple[Any, ...]:
    """One row of `sql` on a connection of its own (the checks between the runs)."""
    conn = await asyncpg.connect(url)
    try:
        return tuple(await conn.fetchrow(sql, *args) or ())
    finally:
        await conn.close()


def _value(url: str, sql: str, *args: object) -> int:
    return int(asyncio.run(_row(url, sql, *args))[0])


async def _checkpointed_lsn(url: str) -> int:
    """The WAL position right after a CHECKPOINT (every load starts with the same full-page
    writes ahead of it)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CHECKPOINT")
        return await _wal_lsn(conn)
    finally:
        await conn.close()


async def _prepare_base(url: str, options: Options) -> None:
    conn = await asyncpg.connect(url)
    try:
        if options.existing:
            spec = seeding.TransactionSpec(
                options.existing, options.merchants, FIRST_DAY, LAST_DAY, seed=1
            )
            await seeding.copy_transactions(conn, spec, replace=True)
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def _clone(admin_url: str, base_url: str, prefix: str) -> str:
    """A copy of the base database (files copied: FILE_COPY does not write it all to the WAL)."""
    url = harness.with_database(admin_url, f"{prefix}_{harness.database_name(base_url)[-10:]}")
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(
            f'CREATE DATABASE "{harness.database_name(url)}" '
            f'TEMPLATE "{harness.database_name(base_url)}" STRATEGY FILE_COPY'
        )
    finally:
        await conn.close()
    return url


async def _baseline(url: str, rows: int, options: Options, files: dict[str, Path]) -> Load:
    """`flashsale seed`'s load of `rows` rows after the existing ones: its binary COPY timed
    (the baseline), its ANALYZE timed apart; then those rows exported to `files` (one per
    format) for the imports."""
    spec = seeding.TransactionSpec(rows, options.merchants, FIRST_DAY, LAST_DAY, seed=2)
    lsn = await _checkpointed_lsn(url)
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        await seeding.copy_transactions(conn, spec, analyze=False)
        seconds = time.perf_counter() - started
        load = Load("flashsale seed's binary COPY", seconds, await _wal_lsn(conn) - lsn)
        started = time.perf_counter()
        await conn.execute("ANALYZE transactions")
        print(f"  (flashsale seed's ANALYZE after it: {time.perf_counter() - started:.2f} s, "
              "not counted in the baseline)")  # fmt: skip
        for form, path in files.items():
            with path.open("wb") as out:
                await conn.copy_from_query(
                    _EXPORT[form].format(existing=options.existing), output=out,
                    format="csv" if form == "csv" else "text", header=form == "csv",
                )  # fmt: skip
        return load
    finally:
        await conn.close()


async def _explain_insert(url: str, path: Path) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the import's INSERT over the staged CSV file, rolled back."""
    conn = await asyncpg.connect(url)
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute(importing.CREATE_STAGING_SQL)
        await conn.copy_to_table(
            importing.STAGING, source=path, columns=FIELDS, format="csv", header=True
        )
        rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {importing.INSERT_SQL}")
        return [row[0] for row in rows]
    finally:
        await transaction.rollback()
        await conn.close()


# --- the server side ----------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def tree_rss_kb(pid: int) -> int:
    """VmRSS of `pid` and all its descendants, in kB (Linux)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            pending += _children(current)
    return total


@contextlib.contextmanager
def _peak_rss(pid: int) -> Iterator[list[int]]:
    """[peak kB] of the process tree, sampled in a thread for the block."""
    peak = [tree_rss_kb(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(RSS_SAMPLE_S):
            peak[0] = max(peak[0], tree_rss_kb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], tree_rss_kb(pid))


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


@contextlib.contextmanager
def _py_spy(pid: int, enabled: bool) -> Iterator[Path | None]:
    """py-spy recording the server's processes for the block (raw collapsed stacks)."""
    executable = shutil.which("py-spy")
    if not enabled or executable is None:
        if enabled:
            print("    (no profile: py-spy is not installed; pip install py-spy)")
        yield None
        return
    output = Path(tempfile.mkstemp(prefix="flashsale-import-", suffix=".txt")[1])
    recorder = subprocess.Popen(  # noqa: S603 - py-spy from PyPI, our arguments
        [executable, "record", "--pid", str(pid), "--subprocesses", "--format", "raw",
         "--rate", "200", "--output", str(output), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield output
    finally:
        recorder.send_signal(2)  # SIGINT: py-spy writes what it recorded and exits
        recorder.wait(60)


def top_frames(collapsed: str, count: int = 10) -> tuple[int, list[tuple[str, float]]]:
    """(samples, the frames most samples were in when taken, as fractions) from py-spy's raw
    (collapsed stacks) output."""
    own: collections.Counter[str] = collections.Counter()
    for line in collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        if stack and samples.isdigit():
            own[stack.split(";")[-1]] += int(samples)
    total = sum(own.values())
    return total, [(frame, n / total) for frame, n in own.most_common(count)]


def _import(server: harness.LiveServer, path: Path, form: str, profile: bool) -> Load:
    """POST the file, streamed, to /transactions/import; timed, with the server's memory."""
    before_kb = tree_rss_kb(server.process.pid)
    cpu_started = time.process_time()
    with _py_spy(server.process.pid, profile) as profile_path, \
            _peak_rss(server.process.pid) as peak_kb:  # fmt: skip
        started = time.perf_counter()
        response = httpx.post(
            f"{server.url}/transactions/import", content=_file_chunks(path),
            headers={"Content-Type": FORMATS[form]}, timeout=IMPORT_LIMIT_S,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
    if response.status_code != 201:
        raise RuntimeError(f"import answered {response.status_code}: {response.text[:2000]}")
    print(f"    {response.status_code} {response.text}")
    load = Load(f"POST /transactions/import ({form})", elapsed, 0, path.stat().st_size,
                before_kb / 1024, peak_kb[0] / 1024, time.process_time() - cpu_started)  # fmt: skip
    if profile_path is not None:
        samples, frames = top_frames(profile_path.read_text())
        print(f"    py-spy, the server during the import, {samples:,} samples at 200/s (busy "
              "threads only); where they were taken:")  # fmt: skip
        for frame, share in frames:
            print(f"      {share:6.1%}  {frame}")
        profile_path.unlink(missing_ok=True)
    return load


def _wrk(server: harness.LiveServer, path: str, connections: int, seconds: float) -> LoadResult:
    return wrk.run(server.url + path, connections=connections, seconds=seconds, method="POST",
                   body=_ONE_TRANSACTION)  # fmt: skip


# --- the run ------------------------------------------------------------------------------------


def run(admin_url: str, *, rows: list[int], options: Options, work_dir: Path | None = None) -> None:
    if wrk.binary() is None:
        raise RuntimeError("flashsale bench import needs wrk (Debian package: wrk)")
    base = asyncio.run(harness.create_database(admin_url, "flashsale_bench_import"))
    print(
        f"flashsale bench import: {options.existing:,} existing transactions in every run, "
        f"{options.merchants} merchants, WEB_CONCURRENCY={options.web_concurrency}, "
        f"scratch database {harness.database_name(base)} (and clones)"
    )
    results = []
    try:
        migrations.upgrade(base)
        started = time.perf_counter()
        asyncio.run(_prepare_base(base, options))
        print(f"  base prepared in {time.perf_counter() - started:.1f} s")
        with tempfile.TemporaryDirectory(prefix="flashsale-bench-import-", dir=work_dir) as tmp:
            for count in rows:
                results.append(_one_size(admin_url, base, count, options, Path(tmp)))
    finally:
        asyncio.run(harness.drop_database(admin_url, base))
    _summary(results)


@contextlib.contextmanager
def _cloned(admin_url: str, base: str, prefix: str) -> Iterator[str]:
    url = asyncio.run(_clone(admin_url, base, prefix))
    try:
        yield url
    finally:
        asyncio.run(harness.drop_database(admin_url, url))


def _one_size(admin_url: str, base: str, count: int, options: Options, tmp: Path) -> SizeResult:
    print(f"\n{count:,} rows into a table of {options.existing:,}")
    files = {form: tmp / f"transactions-{count}.{form}" for form in options.formats}
    with _cloned(admin_url, base, "flashsale_bench_seed") as url:
        baseline = asyncio.run(_baseline(url, count, options, files))
        expected = asyncio.run(_row(url, _FINGERPRINT, options.existing))
    result = SizeResult(count, baseline)
    _print_load(baseline, count, baseline)
    env = {
        "WEB_CONCURRENCY": str(options.web_concurrency), "EMBEDDED_WORKER": "false",
        "IMPORT_MAX_BYTES": str(max(path.stat().st_size for path in files.values()) + 1),
        "LOG_LEVEL": "warning",
    }  # fmt: skip
    for number, (form, path) in enumerate(files.items()):
        last = number == len(files) - 1
        with _cloned(admin_url, base, f"flashsale_bench_{form}") as url, \
                harness.running_server(url, env) as server:  # fmt: skip
            lsn = asyncio.run(_checkpointed_lsn(url))
            load = _import(server, path, form, options.profile and number == 0)
            load.wal_bytes = _value(url, "SELECT pg_current_wal_lsn()") - lsn
            result.imports.append(load)
            _print_load(load, count, baseline)
            got = asyncio.run(_row(url, _FINGERPRINT, options.existing))
            if got != expected:
                result.problems.append(f"{form} import: {got} != the baseline's {expected}")
            print(f"    rows and sums as the baseline's: {'ok' if got == expected else 'NO'}")
            if last:
                _one_at_a_time(server, url, result, options)
    if options.explain and "csv" in files:
        with _cloned(admin_url, base, "flashsale_bench_explain") as url:
            plan = asyncio.run(_explain_insert(url, files["csv"]))
        print("  EXPLAIN (ANALYZE, BUFFERS) of the import's INSERT:\n    " + "\n    ".join(plan))
    for path in files.values():
        path.unlink(missing_ok=True)
    return result


def _one_at_a_time(
    server: harness.LiveServer, url: str, result: SizeResult, options: Options
) -> None:
    total = options.existing + result.rows
    print(f"  POST /transactions, wrk -t1 -c{options.connections}, table of {total:,} rows:")
    _wrk(server, CEILING_PATH, options.connections, WARMUP_S)
    result.ceiling = _wrk(server, CEILING_PATH, options.connections, options.seconds)
    print(f"    HTTP ceiling (numbered POSTs, 404): {result.ceiling.summary()}")
    _wrk(server, "/transactions", options.connections, WARMUP_S)
    time.sleep(1)  # the warm-up's requests still in flight when wrk stopped complete meanwhile
    last_id = _value(url, "SELECT coalesce(max(id), 0) FROM transactions")
    single = _wrk(server, "/transactions", options.connections, options.seconds)
    result.single = single
    stored = _value(url, "SELECT count(*) FROM transactions WHERE id > $1", last_id)
    print(f"    POST /transactions:                  {single.summary()}")
    # wrk does not count the requests in flight when it stops (at most one per connection).
    in_range = single.ok <= stored <= single.ok + options.connections
    check = "ok" if in_range else "MISMATCH"
    print(f"    {single.rate / result.ceiling.rate:.2f}x HTTP ceiling; rows stored {stored:,} "
          f"for {single.ok:,} 201s ({check})")  # fmt: skip
    if not in_range or single.non_2xx or single.socket_errors.total:
        result.problems.append(f"POST /transactions: {stored} rows for {single.summary()}")


def _print_load(load: Load, rows: int, baseline: Load) -> None:
    line = (
        f"  {load.label:34s} {load.seconds:7.2f} s  {rows / load.seconds:10,.0f} rows/s  "
        f"WAL {load.wal_bytes / rows:5.0f} B/row"
    )
    if load is not baseline:
        line += (
            f"  {load.seconds / baseline.seconds:4.2f}x baseline\n"
            f"    file {load.file_bytes / 2**20:,.0f} MiB; server RSS {load.rss_before_mb:.0f} -> "
            f"peak {load.rss_peak_mb:.0f} MB (+{load.rss_growth_mb:.0f}); this client's CPU "
            f"{load.client_cpu_s:.1f} s of {load.seconds:.1f} s"
        )
    print(line)


def _summary(results: list[SizeResult]) -> None:
    print(f"\nsummary (targets: import <= {TARGET_X_BASELINE:g}x the baseline, "
          f"server RSS growth <= {TARGET_RSS_GROWTH_MB:g} MB)")  # fmt: skip
    print(f"  {'rows':>11s}  {'load':34s} {'s':>7s}  {'x base':>6s}  {'RSS +MB':>7s}")
    problems = []
    for result in results:
        for load in [result.baseline, *result.imports]:
            ratio = load.seconds / result.baseline.seconds
            growth = f"{load.rss_growth_mb:7.0f}" if load is not result.baseline else " " * 7
            print(f"  {result.rows:11,d}  {load.label:34s} {load.seconds:7.2f}  {ratio:6.2f}  "
                  f"{growth}")  # fmt: skip
            if load is not result.baseline and load.label.endswith("(csv)"):
                if ratio > TARGET_X_BASELINE:
                    problems.append(f"{result.rows:,} rows, {load.label}: {ratio:.2f}x baseline")
                if load.rss_growth_mb > TARGET_RSS_GROWTH_MB:
                    problems.append(
                        f"{result.rows:,} rows, {load.label}: RSS +{load.rss_growth_mb:.0f} MB"
                    )
        if result.single and result.ceiling:
            print(f"  {result.rows:11,d}  POST /transactions {result.single.rate:9,.0f}/s, "
                  f"p99 {result.single.percentile_ms(99):.1f} ms, "
                  f"{result.single.rate / result.ceiling.rate:.2f}x HTTP ceiling")  # fmt: skip
        problems += result.problems
    print("\n" + ("\n".join(f"MISSED: {p}" for p in problems) if problems else "all targets met"))
