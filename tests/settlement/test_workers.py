"""Where jobs run and what survives: the queue bound, cancelled queued jobs, killed and stopped
workers, the sweep, and several server processes. On a database of their own (`jobs_db`),
where only the workers these tests start run jobs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from datetime import date
from pathlib import Path

import asyncpg
import httpx

from flashsale import migrations
from flashsale.bench.harness import status_is, wait_for_job
from flashsale.settlement.schemas import job_key
from tests.settlement.helpers import (
    FAST_RECOVERY,
    MONTH,
    downloaded_rows,
    expected_csv,
    expected_settlements,
    final_writes_held,
    fully_counted,
    post_job,
    report_chunks,
    run_job,
    running_worker,
    seed,
    settlements,
)
from tests.support import EmbeddedPostgres, eventually, http_client, running_server, start_server


async def test_a_full_queue_refuses_new_jobs_with_503_and_enqueues_nothing(
    api: httpx.AsyncClient, jobs_db: asyncpg.Pool
) -> None:
    body = {"from": "2025-01-01", "to": "2025-01-31"}

    responses = await asyncio.gather(*(api.post("/jobs/settlement", json=body) for _ in range(10)))

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [202] * 3 + [503] * 7  # JOB_QUEUE_SIZE=3, no worker to drain it
    refused = next(response for response in responses if response.status_code == 503)
    assert refused.json()["error"]["code"] == "JOB_QUEUE_FULL"
    assert refused.headers["retry-after"] == "1"
    assert await jobs_db.fetchval("SELECT count(*) FROM settlement_jobs") == 3


async def test_a_job_cancelled_while_queued_never_runs(
    api: httpx.AsyncClient, jobs_db: asyncpg.Pool, jobs_url: str,
    logs_dir: Path,
) -> None:  # fmt: skip
    await seed(jobs_db, 2_000, *MONTH)
    cancelled = await post_job(api, *MONTH)

    response = await api.post(f"/jobs/{cancelled}/cancel")

    assert response.status_code == 200
    job = (await api.get(f"/jobs/{cancelled}")).json()
    assert job["status"] == "CANCELLED"
    assert await jobs_db.fetchval("SELECT count(*) FROM procrastinate_jobs") == 0
    with running_worker(jobs_url, logs_dir):
        later = await post_job(api, date(2025, 1, 1), date(2025, 1, 10))
        await wait_for_job(api, later, status_is("COMPLETED"))
    assert (await api.get(f"/jobs/{cancelled}")).json() == job
    assert await _attempts(jobs_db, cancelled) == 0  # never claimed by any run
    assert await report_chunks(jobs_db, cancelled) == 0
    written = await jobs_db.fetch("SELECT DISTINCT job_id, max(date) FROM settlements GROUP BY 1")
    assert [tuple(row.values()) for row in written] == [(later, date(2025, 1, 10))]


async def test_a_killed_worker_s_job_is_completed_by_another_worker(
    api: httpx.AsyncClient, jobs_db: asyncpg.Pool, jobs_url: str,
    logs_dir: Path,
) -> None:  # fmt: skip
    await seed(jobs_db, 5_000, *MONTH)

    async with final_writes_held(jobs_db):
        with running_worker(jobs_url, logs_dir) as doomed:
            job_id = await post_job(api, *MONTH)
            await wait_for_job(api, job_id, fully_counted)  # mid-job: computed, not written
            doomed.send_signal(signal.SIGKILL)
            assert await asyncio.to_thread(doomed.wait, 30) == -signal.SIGKILL

    with running_worker(jobs_url, logs_dir):
        job = await wait_for_job(api, job_id, status_is("COMPLETED"))

    assert job["processed"] == job["total"] > 0
    assert await _attempts(jobs_db, job_id) == 2
    assert await downloaded_rows(api, job) == await expected_csv(jobs_db, *MONTH)
    assert await settlements(jobs_db) == await expected_settlements(jobs_db, *MONTH)


async def test_sigterm_puts_the_running_job_back_in_the_queue_and_a_restart_completes_it(
    jobs_db: asyncpg.Pool, jobs_url: str, logs_dir: Path
) -> None:
    await seed(jobs_db, 5_000, *MONTH)
    env = {"JOB_SHUTDOWN_GRACE_S": "0.2", **FAST_RECOVERY}

    async with final_writes_held(jobs_db):
        server = start_server(jobs_url, logs_dir, **env)
        async with http_client(server.url) as client:
            job_id = await post_job(client, *MONTH)
            await wait_for_job(client, job_id, fully_counted)
        assert await asyncio.to_thread(server.terminate) == 0

        row = await jobs_db.fetchrow(
            "SELECT status, processed FROM settlement_jobs WHERE id = $1",
            _uuid(job_id),
        )
        assert row is not None
        assert tuple(row.values()) == ("QUEUED", 0)
        assert await _waiting_tasks(jobs_db, job_id) == 1  # requeued, ready for the next worker

    with running_server(jobs_url, logs_dir, **env) as restarted:
        async with http_client(restarted.url) as client:
            job = await wait_for_job(client, job_id, status_is("COMPLETED"))
            assert await downloaded_rows(client, job) == await expected_csv(jobs_db, *MONTH)
    assert await _attempts(jobs_db, job_id) == 2


async def test_the_sweep_runs_jobs_that_have_no_task_and_forgets_expired_idempotency_keys(
    api: httpx.AsyncClient, jobs_db: asyncpg.Pool, jobs_url: str,
    logs_dir: Path,
) -> None:  # fmt: skip
    await seed(jobs_db, 2_000, *MONTH)
    # As if the server died between writing the job and deferring its task.
    orphan = await jobs_db.fetchval(
        "INSERT INTO settlement_jobs (from_date, to_date, created_at) "
        "VALUES ($1, $2, now() - interval '1 minute') RETURNING id",
        *MONTH,
    )
    await jobs_db.execute(
        "INSERT INTO idempotency_keys (key, request_hash, error_code, expires_at) VALUES "
        "('old', 'x', 'OUT_OF_STOCK', now() - interval '1 second'), "
        "('fresh', 'x', 'OUT_OF_STOCK', now() + interval '1 hour')"
    )

    with running_worker(jobs_url, logs_dir):
        job = await wait_for_job(api, job_key(orphan), status_is("COMPLETED"))
        await eventually(
            lambda: _keys_are(jobs_db, ["fresh"]), "the expired key was deleted by the sweep"
        )

    assert job["processed"] == job["total"] > 0


async def test_several_server_processes_share_one_job_worker(
    jobs_db: asyncpg.Pool, jobs_url: str, logs_dir: Path
) -> None:
    await seed(jobs_db, 2_000, *MONTH)

    with running_server(jobs_url, logs_dir, WEB_CONCURRENCY="2") as server:
        async with http_client(server.url) as client:
            job_id = await post_job(client, *MONTH)
            job = await wait_for_job(client, job_id, status_is("COMPLETED"))
            assert await downloaded_rows(client, job) == await expected_csv(jobs_db, *MONTH)
        assert await jobs_db.fetchval("SELECT count(*) FROM procrastinate_workers") == 1
        children = _children(server.process.pid)
        assert (
            sum(
                command.endswith("flashsale worker --no-metrics-port")
                for command in children.values()
            )
            == 1
        )
        assert sum("multiprocessing-fork" in command for command in children.values()) == 2

    assert await jobs_db.fetchval("SELECT count(*) FROM procrastinate_workers") == 0
    ours = [pid for pid, command in children.items() if "resource_tracker" not in command]
    assert _alive(ours) == []


async def test_the_job_worker_beside_several_server_processes_is_restarted_when_it_dies(
    jobs_db: asyncpg.Pool, jobs_url: str, logs_dir: Path
) -> None:
    await seed(jobs_db, 2_000, *MONTH)

    with running_server(jobs_url, logs_dir, WEB_CONCURRENCY="2", **FAST_RECOVERY) as server:

        def job_workers() -> list[int]:
            children = _children(server.process.pid)
            return [
                pid
                for pid, command in children.items()
                if command.endswith("flashsale worker --no-metrics-port")
            ]

        [first] = job_workers()
        os.kill(first, signal.SIGKILL)

        async def replaced() -> bool:
            workers = job_workers()
            return len(workers) == 1 and workers[0] != first

        await eventually(replaced, "a new job worker")
        async with http_client(server.url) as client:
            job = await run_job(client, *MONTH)
            assert await downloaded_rows(client, job) == await expected_csv(jobs_db, *MONTH)
    assert "worker.restarted" in server.log()


async def test_the_embedded_worker_runs_jobs_again_after_a_database_outage(
    tmp_path: Path, logs_dir: Path
) -> None:
    database = EmbeddedPostgres(tmp_path / "pgdata")
    try:
        migrations.upgrade(database.url)
        with running_server(database.url, logs_dir, **FAST_RECOVERY) as server:
            async with http_client(server.url) as client:
                await run_job(client, *MONTH)

                database.stop()
                assert (await client.get("/health")).status_code == 503
                database.start()
                await eventually(lambda: _healthy(client), "the server sees the database again")

                job = await run_job(client, *MONTH)
        assert "worker.failed" in server.log() or "worker.stopped_unexpectedly" in server.log()
        assert job["total"] == 0
    finally:
        database.stop()


async def _healthy(client: httpx.AsyncClient) -> bool:
    return (await client.get("/health")).status_code == 200


def _uuid(job_id: str) -> str:
    return job_id.removeprefix("job_")


async def _attempts(pool: asyncpg.Pool, job_id: str) -> int:
    attempts = await pool.fetchval(
        "SELECT attempt FROM settlement_jobs WHERE id = $1", _uuid(job_id)
    )
    return int(attempts)


async def _waiting_tasks(pool: asyncpg.Pool, job_id: str) -> int:
    count = await pool.fetchval(
        "SELECT count(*) FROM procrastinate_jobs WHERE lock = $1 AND status = 'todo'", job_id
    )
    return int(count)


async def _keys_are(pool: asyncpg.Pool, keys: list[str]) -> bool:
    rows = await pool.fetch("SELECT key FROM idempotency_keys ORDER BY key")
    return [row["key"] for row in rows] == keys


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def _children(pid: int) -> dict[int, str]:
    """Child processes of `pid`: their command lines by pid."""
    out = subprocess.run(
        ["ps", "-ww", "-o", "pid=,args=", "--ppid", str(pid)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return {
        int(pid): command for pid, command in (line.split(maxsplit=1) for line in out.splitlines())
    }
