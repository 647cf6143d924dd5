"""`flashsale bench job-events`: how late a job's progress reaches a stream on another server,
and what idle streams cost the database.

In a scratch database (dropped after): seed N transactions over one month (binary COPY), then
start two `flashsale serve` processes on it: A runs the jobs (embedded worker), B runs none and
serves the streams. So every event crosses from A's worker through PostgreSQL to B.

1. Idle streams: B opens `--streams` streams on a job nobody runs; the connections B holds
   (pg_stat_activity, by application_name) are counted before and while they are open.
2. Latency: for each of `--runs` jobs over the month (POSTed to A), a client of B reads the
   stream, and beside it a plain asyncpg LISTEN on the trigger's channel (the floor: what
   PostgreSQL's own notification costs). For every RUNNING progress event the latency is the
   arrival time minus the row's `updated_at` (the write's clock time, before its commit); for
   the LISTEN it is the notification's arrival minus the same write's `updated_at`.
   The clients and servers share the machine's clock.

It measures latency with one client per stream, not throughput: there is no load to generate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from uuid import UUID

import asyncpg
import httpx

from flashsale import migrations, seeding
from flashsale.bench import harness
from flashsale.bench.settlement import FIRST_DAY, LAST_DAY
from flashsale.settlement.events import JOB_CHANGED_CHANNEL


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _describe(label: str, latencies_ms: list[float]) -> str:
    if not latencies_ms:
        return f"  {label}: no samples"
    return (
        f"  {label}: {len(latencies_ms)} events, median {statistics.median(latencies_ms):.2f} ms, "
        f"p99 {_percentile(latencies_ms, 0.99):.2f} ms, max {max(latencies_ms):.2f} ms"
    )


async def _connections(conn: asyncpg.Connection, pid: int) -> list[str]:
    rows = await conn.fetch(
        "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE $1",
        f"flashsale:{pid}%",
    )
    return sorted(row["application_name"] for row in rows)


async def idle_streams(url: str, server: harness.LiveServer, streams: int) -> None:
    conn = await asyncpg.connect(url)
    # A job with no task, and no worker anywhere yet: it stays QUEUED, its streams idle.
    job_id = await conn.fetchval(
        "INSERT INTO settlement_jobs (from_date, to_date) VALUES ($1, $2) RETURNING id",
        FIRST_DAY,
        LAST_DAY,
    )
    limits = httpx.Limits(max_connections=streams + 10)
    try:
        async with (
            httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client,
            contextlib.AsyncExitStack() as open_streams,
        ):
            before = await _connections(conn, server.process.pid)
            for _ in range(streams):
                response = await open_streams.enter_async_context(
                    client.stream("GET", f"/jobs/job_{job_id}/events")
                )
                response.raise_for_status()
            await asyncio.sleep(1)
            during = await _connections(conn, server.process.pid)
        print(
            f"  {streams} idle streams on B: B holds {len(during)} database connections with "
            f"them open, {len(before)} without ({', '.join(during)})"
        )
    finally:
        await conn.execute("DELETE FROM settlement_jobs WHERE id = $1", job_id)
        await conn.close()


async def one_job(url: str, runner: str, streamer: str) -> tuple[list[float], list[float]]:
    """POST a job to `runner`, read its events from `streamer`; (stream, LISTEN) latencies."""
    stream_ms: list[float] = []
    listen_ms: list[float] = []
    listener = await asyncpg.connect(url)
    reader = await asyncpg.connect(url)
    watched: set[UUID] = set()
    pending: list[asyncio.Task[None]] = []

    async def on_listen(job_id: UUID, arrived: float) -> None:
        updated = await reader.fetchval(
            "SELECT updated_at FROM settlement_jobs WHERE id = $1 AND status = 'RUNNING' "
            "AND processed > 0",
            job_id,
        )
        if updated is not None:
            listen_ms.append((arrived - updated.timestamp()) * 1000)

    def notified(_c: object, _p: int, _ch: str, payload: object) -> None:
        arrived = time.time()
        job_id = UUID(str(payload))
        if job_id in watched:
            pending.append(asyncio.create_task(on_listen(job_id, arrived)))

    await listener.add_listener(JOB_CHANGED_CHANNEL, notified)
    try:
        async with (
            httpx.AsyncClient(base_url=runner, timeout=600) as run_client,
            httpx.AsyncClient(base_url=streamer, timeout=600) as stream_client,
        ):
            body = {"from": FIRST_DAY.isoformat(), "to": LAST_DAY.isoformat()}
            job_id = (await run_client.post("/jobs/settlement", json=body)).json()["job_id"]
            watched.add(UUID(job_id.removeprefix("job_")))
            status = None
            async with stream_client.stream("GET", f"/jobs/{job_id}/events") as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    arrived = time.time()
                    event = json.loads(line.removeprefix("data: "))
                    status = event["status"]
                    if status == "RUNNING" and event["processed"]:
                        updated = datetime.fromisoformat(event["updated_at"]).timestamp()
                        stream_ms.append((arrived - updated) * 1000)
            if status != "COMPLETED":
                raise RuntimeError(f"the job ended {status}")
        await asyncio.gather(*pending)
    finally:
        await listener.close()
        await reader.close()
    return stream_ms, listen_ms


def run(url: str, *, rows: int, merchants: int, runs: int, streams: int) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    scratch = asyncio.run(harness.create_database(url, "flashsale_bench_events"))
    print(
        f"flashsale bench job-events: {rows:,} transactions over {FIRST_DAY}..{LAST_DAY}, "
        f"{merchants} merchants, scratch database {harness.database_name(scratch)}"
    )
    try:
        migrations.upgrade(scratch)
        asyncio.run(_seed(scratch, rows, merchants))
        stream_all: list[float] = []
        listen_all: list[float] = []
        with (
            tempfile.TemporaryDirectory() as data_dir,
            harness.running_server(
                scratch,
                {
                    "WEB_CONCURRENCY": "1",
                    "EMBEDDED_WORKER": "false",
                    "DATA_DIR": str(Path(data_dir) / "b"),
                    "JOB_EVENT_STREAMS_MAX": str(max(streams, 1000)),
                },
            ) as streamer,
        ):
            print("B serves the streams (no worker); A, started next, runs the jobs")
            asyncio.run(idle_streams(scratch, streamer, streams))
            a_env = {"WEB_CONCURRENCY": "1", "DATA_DIR": str(Path(data_dir) / "a")}
            with harness.running_server(scratch, a_env) as runner:
                for attempt in range(1, runs + 1):
                    started = time.perf_counter()
                    stream_ms, listen_ms = asyncio.run(one_job(scratch, runner.url, streamer.url))
                    print(f"  job {attempt}: {time.perf_counter() - started:.1f} s")
                    print("  " + _describe("event at B's client", stream_ms))
                    print("  " + _describe("LISTEN (floor)", listen_ms))
                    stream_all += stream_ms
                    listen_all += listen_ms
        print("\nsummary: progress write -> arrival (all jobs)")
        print(_describe("event at a client of B", stream_all))
        print(_describe("plain LISTEN on the channel", listen_all))
        if stream_all and listen_all:
            ratio = statistics.median(stream_all) / statistics.median(listen_all)
            print(f"  event / LISTEN (medians): {ratio:.2f}")
    finally:
        asyncio.run(harness.drop_database(url, scratch))


async def _seed(url: str, rows: int, merchants: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        spec = seeding.TransactionSpec(rows, merchants, FIRST_DAY, LAST_DAY, seed=42)
        await seeding.copy_transactions(conn, spec, replace=True)
        await conn.execute("VACUUM ANALYZE transactions")
        print(f"  seeded in {time.perf_counter() - started:.1f} s")
    finally:
        await conn.close()
