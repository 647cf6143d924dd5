"""`GET /jobs/{job_id}/events`, read from a server that does not run the job (`api_server` has
no worker; a separate `flashsale worker` runs the jobs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx

from flashsale.bench.harness import LiveServer, wait_for_job
from flashsale.settlement.schemas import job_key
from tests.settlement.helpers import (
    MONTH,
    completed_in,
    final_writes_held,
    fully_counted,
    lock_waiters,
    post_job,
    running_worker,
    seed,
)
from tests.support import eventually, http_client, running_server

# Small batches on one connection: a job of 600,000 rows takes seconds, writing its progress
# every PROGRESS_INTERVAL_S. (200,000 rows once took 0.5 s on a quiet machine: only two
# progress writes, and the test that wants three failed.)
SLOW_JOBS = {"JOB_WORKERS": "1", "JOB_BATCH_SIZE": "100"}


async def events_of(client: httpx.AsyncClient, job_id: str) -> AsyncIterator[dict[str, object]]:
    """The stream's events, parsed, until the server ends it."""
    async with client.stream("GET", f"/jobs/{job_id}/events") as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                yield json.loads(line.removeprefix("data: "))


async def collect(client: httpx.AsyncClient, job_id: str) -> list[dict[str, object]]:
    return [event async for event in events_of(client, job_id)]


def assert_ordered(events: list[dict[str, object]], last: str) -> None:
    """QUEUED, then RUNNING with `processed` never going down, then `last` only at the end."""
    order = {"QUEUED": 0, "RUNNING": 1, last: 2}
    ranks = [order[str(event["status"])] for event in events]
    assert ranks == sorted(ranks), [event["status"] for event in events]
    assert events[-1]["status"] == last
    assert [event["status"] for event in events].count(last) == 1
    running = [int(str(event["processed"])) for event in events if event["status"] == "RUNNING"]
    assert running == sorted(running)
    stamps = [str(event["updated_at"]) for event in events]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)


async def test_a_job_s_events_reach_another_server_in_order_and_end_with_completed(
    api: httpx.AsyncClient, jobs_db: asyncpg.Pool, jobs_url: str, logs_dir: Path
) -> None:
    await seed(jobs_db, 600_000, *MONTH)
    job_id = await post_job(api, *MONTH)
    stream = asyncio.create_task(collect(api, job_id))
    await eventually(lambda: _streams_open(api, 1), "the stream is open")

    with running_worker(jobs_url, logs_dir, **SLOW_JOBS):
        events = await asyncio.wait_for(stream, 120)

    assert events[0]["status"] == "QUEUED"
    assert_ordered(events, "COMPLETED")
    progress = {event["processed"] for event in events if event["status"] == "RUNNING"}
    assert len(progress) >= 3, events  # progress writes arrive as they happen, not only the end
    assert events[-1] == (await api.get(f"/jobs/{job_id}")).json()
    assert events[-1]["processed"] == events[-1]["total"] == await completed_in(jobs_db, *MONTH)
    await eventually(lambda: _streams_open(api, 0), "the ended stream is closed on the server")


async def test_a_stream_ends_with_cancelled_when_the_job_is_cancelled(
    api: httpx.AsyncClient, jobs_db: asyncpg.Pool, jobs_url: str, logs_dir: Path
) -> None:
    await seed(jobs_db, 5_000, *MONTH)

    async with final_writes_held(jobs_db):
        with running_worker(jobs_url, logs_dir):
            job_id = await post_job(api, *MONTH)
            await wait_for_job(api, job_id, fully_counted)
            stream = asyncio.create_task(collect(api, job_id))
            await eventually(lambda: _streams_open(api, 1), "the stream is open")
            assert (await api.post(f"/jobs/{job_id}/cancel")).status_code == 200
            events = await asyncio.wait_for(stream, 30)

    assert events[0]["status"] == "RUNNING"
    assert_ordered(events, "CANCELLED")


async def test_a_stream_ends_with_failed_when_the_job_fails(
    api: httpx.AsyncClient, jobs_db: asyncpg.Pool, jobs_url: str, logs_dir: Path
) -> None:
    await seed(jobs_db, 5_000, *MONTH)

    async with final_writes_held(jobs_db):
        with running_worker(jobs_url, logs_dir) as worker:
            job_id = await post_job(api, *MONTH)
            stream = asyncio.create_task(collect(api, job_id))
            await wait_for_job(api, job_id, fully_counted)

            async def writer_waits() -> bool:
                return bool(await lock_waiters(jobs_db, worker.pid))

            await eventually(writer_waits, "the job waits to write")
            [writer] = await lock_waiters(jobs_db, worker.pid)
            await jobs_db.execute("SELECT pg_terminate_backend($1)", writer)
            events = await asyncio.wait_for(stream, 30)

    assert_ordered(events, "FAILED")
    assert "connection" in str(events[-1]["error"]).lower()


async def test_a_finished_job_s_stream_is_its_state_once_and_unknown_jobs_are_404(
    api: httpx.AsyncClient, jobs_db: asyncpg.Pool
) -> None:
    job_id = await insert_job(jobs_db, status="CANCELLED")

    assert await collect(api, job_id) == [(await api.get(f"/jobs/{job_id}")).json()]
    for unknown in (f"job_{uuid.uuid4()}", "job_x", "0"):
        response = await api.get(f"/jobs/{unknown}/events")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "JOB_NOT_FOUND"
    await eventually(lambda: _streams_open(api, 0), "no stream is left open")


async def test_100_idle_streams_hold_no_database_connection_and_the_bound_is_503(
    jobs_db: asyncpg.Pool, jobs_url: str, logs_dir: Path
) -> None:
    job_id = await insert_job(jobs_db, status="QUEUED")
    with running_server(
        jobs_url, logs_dir, EMBEDDED_WORKER="false", JOB_EVENT_STREAMS_MAX="100"
    ) as server:
        async with http_client(server.url, connections=120) as client:
            before = await _connections_of(jobs_db, server)
            async with contextlib.AsyncExitStack() as streams:
                for _ in range(100):
                    response = await streams.enter_async_context(
                        client.stream("GET", f"/jobs/{job_id}/events")
                    )
                    assert response.status_code == 200
                await eventually(lambda: _streams_open(client, 100), "100 streams are open")
                held = await _connections_of(jobs_db, server)
                refused = await client.get(f"/jobs/{job_id}/events")
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "TOO_MANY_STREAMS"
            # Clients gone: the server closes their streams (no write needed to notice).
            await eventually(lambda: _streams_open(client, 0), "the streams were closed")
            assert (await client.get(f"/jobs/{job_id}")).status_code == 200

    # The pool's connections and one listener, however many streams are open.
    assert held == before, (before, held)
    assert held.count(f"flashsale:{server.process.pid}:job-events-listener") == 1


async def insert_job(pool: asyncpg.Pool, *, status: str) -> str:
    """A job row that no worker will touch (none runs on `jobs_url` unless a test starts one)."""
    job = await pool.fetchval(
        "INSERT INTO settlement_jobs (from_date, to_date, status) VALUES ($1, $2, $3) RETURNING id",
        *MONTH,
        status,
    )
    return job_key(job)


async def _connections_of(pool: asyncpg.Pool, server: LiveServer) -> list[str]:
    rows = await pool.fetch(
        "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE $1 ORDER BY 1",
        f"flashsale:{server.process.pid}%",
    )
    return [row["application_name"] for row in rows]


async def _streams_open(client: httpx.AsyncClient, count: int) -> bool:
    metrics = (await client.get("/metrics")).text
    line = next(
        line for line in metrics.splitlines() if line.startswith("flashsale_job_event_streams ")
    )
    return float(line.split()[1]) == count
