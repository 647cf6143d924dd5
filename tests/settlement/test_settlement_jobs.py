"""Settlement jobs end to end through the live server: results, re-runs, overlaps, cancels, errors."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import httpx

from flashsale.bench.harness import LiveServer, status_is, wait_for_job
from tests.settlement.helpers import (
    MONTH,
    add_transaction,
    completed_in,
    downloaded_rows,
    expected_csv,
    expected_settlements,
    final_writes_held,
    fully_counted,
    lock_waiters,
    post_job,
    report_chunks,
    run_job,
    seed,
    seed_month,
    settlements,
    transactions_locked,
)
from tests.support import eventually


async def test_a_job_settles_every_merchant_day_exactly_as_sql_does(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await seed_month(pool)

    job = await run_job(client, *MONTH)

    assert job["total"] == job["processed"] == await completed_in(pool, *MONTH)
    assert job["progress"] == 100
    assert (job["from"], job["to"]) == ("2025-01-01", "2025-01-31")
    assert job["started_at"] <= job["finished_at"]
    assert job["download_url"] == f"/downloads/{job['job_id']}.csv"
    assert "error" not in job

    response = await client.get(job["download_url"])
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == (
        f'attachment; filename="{job["job_id"]}.csv"'
    )
    rows = await downloaded_rows(client, job)
    assert rows == await expected_csv(pool, *MONTH)
    assert ["merchant_big", "2025-01-20", "45000000.00", "1305000.90", "43694999.10", "3"] in rows
    edge = [row for row in rows if row[0] == "merchant_edge"]
    assert edge == [
        ["merchant_edge", "2025-01-01", "1.01", "0.03", "0.98", "1"],
        ["merchant_edge", "2025-01-31", "2.02", "0.04", "1.98", "1"],
    ]

    stored = await pool.fetch("SELECT DISTINCT job_id FROM settlements")
    assert [row["job_id"] for row in stored] == [job["job_id"]]
    assert await settlements(pool) == await expected_settlements(pool, *MONTH)


async def test_rerunning_a_range_changes_nothing_and_replaces_what_changed(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await seed_month(pool)
    first = await run_job(client, *MONTH)
    rows_after_first = await settlements(pool, with_job=True)
    csv_after_first = await downloaded_rows(client, first)

    second = await run_job(client, *MONTH)

    assert await settlements(pool, with_job=True) == rows_after_first  # not a byte touched
    assert await downloaded_rows(client, second) == csv_after_first

    # The data changes: a merchant-day disappears, another one grows.
    await pool.execute(
        "UPDATE transactions SET status = 'REFUNDED' WHERE merchant_id = 'merchant_big'"
    )
    await add_transaction(pool, "merchant_001", datetime(2025, 1, 5, 8, tzinfo=UTC), 10_000, 320)

    third = await run_job(client, *MONTH)

    assert await settlements(pool) == await expected_settlements(pool, *MONTH)
    assert await downloaded_rows(client, third) == await expected_csv(pool, *MONTH)
    changed = await pool.fetch(
        "SELECT merchant_id, date FROM settlements WHERE job_id = $1", third["job_id"]
    )
    assert [tuple(row.values()) for row in changed] == [("merchant_001", date(2025, 1, 5))]


async def test_overlapping_jobs_running_together_agree_with_sql(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await seed_month(pool)
    early, late = (date(2025, 1, 1), date(2025, 1, 20)), (date(2025, 1, 10), date(2025, 1, 31))

    async with final_writes_held(pool):
        ids = await asyncio.gather(post_job(client, *early), post_job(client, *late))
        # Both computed side by side; both now wait to write.
        await asyncio.gather(*(wait_for_job(client, job_id, fully_counted) for job_id in ids))

    jobs = await asyncio.gather(
        *(wait_for_job(client, job_id, status_is("COMPLETED")) for job_id in ids)
    )
    assert await downloaded_rows(client, jobs[0]) == await expected_csv(pool, *early)
    assert await downloaded_rows(client, jobs[1]) == await expected_csv(pool, *late)
    assert await settlements(pool) == await expected_settlements(pool, *MONTH)


async def test_cancelling_a_running_job_cancels_its_in_flight_queries_and_writes_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool, server: LiveServer, logs_dir: Path
) -> None:
    await seed_month(pool)
    await run_job(client, date(2025, 1, 1), date(2025, 1, 31))
    before = await settlements(pool, with_job=True)

    async with transactions_locked(pool):
        job_id = await post_job(client, *MONTH)
        await wait_for_job(client, job_id, status_is("RUNNING"))
        await eventually(
            lambda: _blocked(pool, server), "the job's first query waits on the table lock"
        )

        response = await client.post(f"/jobs/{job_id}/cancel")

        assert response.status_code == 200
        assert response.json() == {"message": "Job cancellation requested"}
        assert (await client.get(f"/jobs/{job_id}")).json()["status"] == "CANCELLED"
        # Still holding the lock: the job's queries are gone only if they were cancelled.
        await eventually(lambda: _not_blocked(pool, server), "the job's queries were cancelled")
        again = await client.post(f"/jobs/{job_id}/cancel")
        assert again.status_code == 409
        assert again.json()["error"] == {
            "code": "JOB_NOT_CANCELLABLE",
            "message": "The job was already cancelled",
        }

    await eventually(lambda: _task_gone(pool, job_id), "the job's task ended")
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert job["status"] == "CANCELLED"
    assert "download_url" not in job
    assert await settlements(pool, with_job=True) == before
    assert await report_chunks(pool, job_id) == 0
    assert (await client.get(f"/downloads/{job_id}.csv")).status_code == 404


async def test_cancelling_a_job_about_to_write_writes_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool, logs_dir: Path
) -> None:
    await seed(pool, 5_000, *MONTH)

    async with final_writes_held(pool):
        job_id = await post_job(client, *MONTH)
        counted = await wait_for_job(client, job_id, fully_counted)
        assert counted["progress"] < 100

        assert (await client.post(f"/jobs/{job_id}/cancel")).status_code == 200

    await eventually(lambda: _task_gone(pool, job_id), "the job's task ended")
    assert (await client.get(f"/jobs/{job_id}")).json()["status"] == "CANCELLED"
    assert await settlements(pool) == []
    assert await report_chunks(pool, job_id) == 0


async def test_a_database_error_fails_the_job_with_the_error_and_the_server_carries_on(
    client: httpx.AsyncClient, pool: asyncpg.Pool, server: LiveServer
) -> None:
    await seed(pool, 5_000, *MONTH)

    async with final_writes_held(pool):
        job_id = await post_job(client, *MONTH)
        await wait_for_job(client, job_id, fully_counted)
        await eventually(lambda: _blocked(pool, server), "the job waits to write")
        [writer] = await lock_waiters(pool, server.process.pid)
        await pool.execute("SELECT pg_terminate_backend($1)", writer)

        failed = await wait_for_job(client, job_id, status_is("FAILED", "COMPLETED"))

    assert failed["status"] == "FAILED"
    assert "connection" in failed["error"].lower()
    assert "download_url" not in failed
    assert await settlements(pool) == []
    assert (await client.get("/health")).status_code == 200
    await run_job(client, *MONTH)
    assert await settlements(pool) == await expected_settlements(pool, *MONTH)


async def _blocked(pool: asyncpg.Pool, server: LiveServer) -> bool:
    return bool(await lock_waiters(pool, server.process.pid))


async def _not_blocked(pool: asyncpg.Pool, server: LiveServer) -> bool:
    return not await lock_waiters(pool, server.process.pid)


async def _task_gone(pool: asyncpg.Pool, job_id: str) -> bool:
    """The job's procrastinate task is over (finished tasks are deleted)."""
    return not await pool.fetchval(
        "SELECT count(*) FROM procrastinate_jobs WHERE lock = $1 AND status IN ('todo', 'doing')",
        job_id,
    )
