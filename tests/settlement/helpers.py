"""Settlement test plumbing: data sets, an independent SQL oracle, job polling, locks, workers."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from flashsale import seeding
from flashsale.bench import harness
from flashsale.bench.harness import FINISHED, Job, status_is, wait_for_job
from flashsale.settlement.schemas import parse_job_key
from flashsale.settlement.service import WRITE_LOCK
from tests.support import ROOT

# A month of payments for 7 merchants, plus three dense days (several batches each).
MONTH = (date(2025, 1, 1), date(2025, 1, 31))


async def seed(pool: asyncpg.Pool, count: int, first: date, last: date, *, seed: int = 1) -> None:
    spec = seeding.TransactionSpec(count, 7, first, last, seed)
    async with pool.acquire() as conn:
        await seeding.copy_transactions(conn, spec)


async def add_transaction(
    pool: asyncpg.Pool,
    merchant_id: str,
    paid_at: datetime,
    amount_cents: int,
    fee_cents: int = 0,
    status: str = "COMPLETED",
) -> None:
    await pool.execute(
        "INSERT INTO transactions (external_id, merchant_id, amount_cents, fee_cents, status, "
        "paid_at) VALUES ('test-' || gen_random_uuid(), $1, $2, $3, $4, $5)",
        merchant_id,
        amount_cents,
        fee_cents,
        status,
        paid_at,
    )


async def seed_month(pool: asyncpg.Pool) -> None:
    """The month, edge cases at both ends of the range, and a merchant-day over 2^31 cents."""
    await seed(pool, 8_000, *MONTH, seed=1)
    await seed(pool, 45_000, date(2025, 1, 14), date(2025, 1, 16), seed=2)
    edge = "merchant_edge"
    await add_transaction(pool, edge, datetime(2025, 1, 1, tzinfo=UTC), 101, 3)  # first instant
    await add_transaction(pool, edge, datetime(2025, 1, 31, 23, 59, 59, 999999, tzinfo=UTC), 202, 4)
    await add_transaction(pool, edge, datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), 7)
    await add_transaction(pool, edge, datetime(2025, 2, 1, tzinfo=UTC), 9)  # first excluded
    for status in ("PENDING", "FAILED", "REFUNDED"):
        await add_transaction(pool, edge, datetime(2025, 1, 10, tzinfo=UTC), 1000, 1, status)
    for _ in range(3):  # 4.5e9 cents in one merchant-day: beyond a 32-bit sum
        at = datetime(2025, 1, 20, 12, tzinfo=UTC)
        await add_transaction(pool, "merchant_big", at, 1_500_000_000, 43_500_030)


async def expected_csv(pool: asyncpg.Pool, first: date, last: date) -> list[list[str]]:
    """The CSV lines, computed independently: filter on the UTC date, format in SQL."""
    rows = await pool.fetch(
        """
        SELECT merchant_id, (paid_at AT TIME ZONE 'UTC')::date::text AS day,
               to_char(sum(amount_cents) / 100.0, 'FM999999999999990.00') AS gross,
               to_char(sum(fee_cents) / 100.0, 'FM999999999999990.00') AS fee,
               to_char(sum(amount_cents - fee_cents) / 100.0, 'FM999999999999990.00') AS net,
               count(*)::text AS txn_count
        FROM transactions
        WHERE status = 'COMPLETED' AND (paid_at AT TIME ZONE 'UTC')::date BETWEEN $1 AND $2
        GROUP BY 1, 2 ORDER BY 1, 2
        """,
        first,
        last,
    )
    return [list(row.values()) for row in rows]


async def expected_settlements(
    pool: asyncpg.Pool, first: date, last: date
) -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        """
        SELECT merchant_id, (paid_at AT TIME ZONE 'UTC')::date AS day, sum(amount_cents),
               sum(fee_cents), sum(amount_cents - fee_cents), count(*)
        FROM transactions
        WHERE status = 'COMPLETED' AND (paid_at AT TIME ZONE 'UTC')::date BETWEEN $1 AND $2
        GROUP BY 1, 2 ORDER BY 1, 2
        """,
        first,
        last,
    )
    return [tuple(row.values()) for row in rows]


async def settlements(pool: asyncpg.Pool, *, with_job: bool = False) -> list[tuple[Any, ...]]:
    extra = ", job_id, generated_at" if with_job else ""
    rows = await pool.fetch(
        "SELECT merchant_id, date, gross_cents, fee_cents, net_cents, txn_count"
        f"{extra} FROM settlements ORDER BY 1, 2"
    )
    return [tuple(row.values()) for row in rows]


async def completed_in(pool: asyncpg.Pool, first: date, last: date) -> int:
    count = await pool.fetchval(
        "SELECT count(*) FROM transactions WHERE status = 'COMPLETED' "
        "AND (paid_at AT TIME ZONE 'UTC')::date BETWEEN $1 AND $2",
        first,
        last,
    )
    return int(count)


# --- Jobs through the API ------------------------------------------------------------------------


async def post_job(client: httpx.AsyncClient, first: date, last: date) -> str:
    response = await client.post(
        "/jobs/settlement", json={"from": first.isoformat(), "to": last.isoformat()}
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def fully_counted(job: Job) -> bool:
    """Every batch aggregated: the run now waits to write (or has written) its results."""
    return (
        job["status"] == "RUNNING"
        and job["total"] is not None
        and (job["processed"] == job["total"] > 0)
    )


async def run_job(client: httpx.AsyncClient, first: date, last: date) -> Job:
    job_id = await post_job(client, first, last)
    job = await wait_for_job(client, job_id, status_is(*FINISHED))
    assert job["status"] == "COMPLETED", job
    return job


async def downloaded_rows(client: httpx.AsyncClient, job: Job) -> list[list[str]]:
    response = await client.get(job["download_url"])
    assert response.status_code == 200, response.text
    lines = response.text.splitlines()
    assert lines[0] == "merchant_id,date,gross,fee,net,txn_count"
    return [line.split(",") for line in lines[1:]]


async def report_chunks(pool: asyncpg.Pool, job_id: str) -> int:
    """How many chunks of a report the job stored (0: none)."""
    count = await pool.fetchval(
        "SELECT count(*) FROM settlement_report_chunks WHERE job_id = $1",
        parse_job_key(job_id),
    )
    return int(count)


# --- Holding a job at a chosen point -------------------------------------------------------------


@contextlib.asynccontextmanager
async def final_writes_held(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Jobs compute everything, then wait for this lock before writing anything."""
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", WRITE_LOCK)
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", WRITE_LOCK)


@contextlib.asynccontextmanager
async def transactions_locked(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Every query on `transactions` waits until the block ends."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE transactions IN ACCESS EXCLUSIVE MODE")
        yield


async def lock_waiters(pool: asyncpg.Pool, pid: int) -> list[int]:
    """Backends of the process `pid` waiting on a lock."""
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
        f"flashsale:{pid}",
    )
    return [row["pid"] for row in rows]


# --- Standalone workers --------------------------------------------------------------------------

# Fast failure detection, so that recovery tests take seconds.
FAST_RECOVERY = {"JOB_SWEEP_INTERVAL_S": "1", "JOB_STALLED_AFTER_S": "2"}


@contextlib.contextmanager
def running_worker(
    database_url: str, log_dir: Path, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A `flashsale worker` for a test (see `harness.running_worker`): fast recovery, info logs,
    a DATA_DIR of its own (reports are in the database: no directory is shared), its log kept
    in `log_dir`."""
    name = f"worker-{time.monotonic_ns()}"
    environment = {"DATA_DIR": str(log_dir / f"data-{name}"), "LOG_LEVEL": "info"}
    environment |= {**FAST_RECOVERY, **env}
    log_path = log_dir / f"{name}.log"
    with harness.running_worker(database_url, environment, log_path=log_path, cwd=ROOT) as worker:
        yield worker.process
