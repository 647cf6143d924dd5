"""Settlement jobs: their rows, the per-batch aggregation and the final write, as SQL functions.

A job's row in `settlement_jobs` is the source of truth for its status and progress. Every write
a running job makes is guarded by `status = 'RUNNING' AND attempt = <its attempt>`: a job that was
cancelled, or taken over by another worker after a presumed crash, can never write again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from uuid import UUID

import asyncpg

from flashsale.db import Connection, Where
from flashsale.errors import AppError, NotFound
from flashsale.settlement.schemas import (
    JobKey,
    JobStatus,
    Settlement,
    SettlementJob,
    SettlementKey,
    csv_name,
    job_key,
)

# Advisory lock ids; any constants distinct from the application's other advisory locks.
QUEUE_LOCK = 7_346_512_101  # serializes "count waiting jobs, then enqueue"
WRITE_LOCK = 7_346_512_102  # serializes the final writes of overlapping jobs (no deadlocks)

_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")


class JobNotFound(NotFound):
    code = "JOB_NOT_FOUND"
    message = "Job not found"


class JobNotCancellable(AppError):
    status_code = 409
    code = "JOB_NOT_CANCELLABLE"
    message = "The job has already finished"


class JobQueueFull(AppError):
    status_code = 503
    code = "JOB_QUEUE_FULL"
    message = "Too many settlement jobs are waiting; retry later"


class FileNotFound(NotFound):
    code = "FILE_NOT_FOUND"
    message = "File not found"


class ReportExpired(AppError):
    status_code = 410
    code = "REPORT_EXPIRED"
    message = (
        "The job's report is no longer stored (reports are kept for REPORT_RETENTION_DAYS); "
        "run a job for the same range to settle it again"
    )


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job as one run sees it: the run's writes are guarded by its `attempt`."""

    id: UUID
    first_day: date
    last_day: date
    attempt: int


# One settlement line: merchant_id, date, gross_cents, fee_cents, txn_count.
SettlementRow = tuple[str, date, int, int, int]

_JOB_COLUMNS = (
    "id, status, from_date, to_date, total, processed, error, created_at, started_at, finished_at, "
    "updated_at, report_bytes"
)


def _job(row: asyncpg.Record) -> SettlementJob:
    status: JobStatus = row["status"]
    total, processed = row["total"], row["processed"]
    if status == "COMPLETED":
        progress = 100.0
    elif total:  # 100 only once COMPLETED: the results are still to be written
        progress = min(99.9, math.floor(1000 * processed / total) / 10)
    else:
        progress = 0.0
    return SettlementJob(
        job_id=job_key(row["id"]),
        status=status,
        progress=progress,
        processed=processed,
        total=total,
        from_=row["from_date"],
        to=row["to_date"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
        # Absent once the report has been deleted (REPORT_RETENTION_DAYS): the download is 410.
        download_url=f"/downloads/{csv_name(row['id'])}" if row["report_bytes"] else None,
        error=row["error"] if status == "FAILED" else None,
    )


# --- The API's side ------------------------------------------------------------------------------


async def create_job(
    conn: Connection, *, first_day: date, last_day: date, queue_size: int
) -> SettlementJob:
    """Insert a QUEUED job, unless `queue_size` jobs are already waiting (strictly bounded)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", QUEUE_LOCK)
        # A new statement after the lock: its snapshot sees every job enqueued before us.
        row = await conn.fetchrow(
            f"""
            INSERT INTO settlement_jobs (from_date, to_date)
            SELECT $1, $2
            WHERE (SELECT count(*) FROM settlement_jobs WHERE status = 'QUEUED') < $3
            RETURNING {_JOB_COLUMNS}
            """,
            first_day,
            last_day,
            queue_size,
        )
    if row is None:
        raise JobQueueFull()
    return _job(row)


async def get_job(conn: Connection, *, job_id: UUID) -> SettlementJob:
    row = await conn.fetchrow(f"SELECT {_JOB_COLUMNS} FROM settlement_jobs WHERE id = $1", job_id)
    if row is None:
        raise JobNotFound()
    return _job(row)


async def get_jobs(conn: Connection, *, job_ids: Collection[UUID]) -> list[SettlementJob]:
    """The jobs of `job_ids` that exist, in no particular order."""
    rows = await conn.fetch(
        f"SELECT {_JOB_COLUMNS} FROM settlement_jobs WHERE id = ANY($1::uuid[])", list(job_ids)
    )
    return [_job(row) for row in rows]


async def list_jobs(
    conn: Connection, *, limit: int, status: JobStatus | None = None, after: JobKey | None = None
) -> tuple[list[SettlementJob], JobKey | None]:
    """Newest first, after `after`; and the key to continue from (None on the last page)."""
    where = Where()
    if status is not None:
        where.add("status = {}", status)
    if after is not None:
        where.add("(created_at, id) < ({}, {})", after.created_at, after.id)
    rows = await conn.fetch(
        f"""
        SELECT {_JOB_COLUMNS} FROM settlement_jobs {where.sql}
        ORDER BY created_at DESC, id DESC LIMIT {where.param(limit + 1)}
        """,
        *where.args,
    )
    last = rows[limit - 1] if len(rows) > limit else None
    return [_job(row) for row in rows[:limit]], (
        JobKey(last["created_at"], last["id"]) if last is not None else None
    )


async def cancel_job(conn: Connection, *, job_id: UUID) -> float | None:
    """QUEUED or RUNNING -> CANCELLED, at once. A running job's final write re-checks its row
    under a lock, so once this returns the job can no longer write settlements or a CSV.
    Returns how long the job had been running (None if it had not started)."""
    cancelled = await conn.fetchrow(
        """
        UPDATE settlement_jobs SET status = 'CANCELLED', finished_at = now()
        WHERE id = $1 AND status IN ('QUEUED', 'RUNNING')
        RETURNING extract(epoch FROM finished_at - started_at)::float8 AS ran_s
        """,
        job_id,
    )
    if cancelled is not None:
        ran_s: float | None = cancelled["ran_s"]
        return ran_s
    status = await conn.fetchval("SELECT status FROM settlement_jobs WHERE id = $1", job_id)
    if status == "CANCELLED":
        raise JobNotCancellable("The job was already cancelled")
    if status is not None:
        raise JobNotCancellable(f"The job has already finished ({status})")
    raise JobNotFound()


@dataclass(frozen=True, slots=True)
class StoredReport:
    size: int
    finished_at: datetime


async def stored_report(conn: Connection, *, job_id: UUID) -> StoredReport:
    """A COMPLETED job's report: FileNotFound for any other job, ReportExpired once deleted."""
    row = await conn.fetchrow(
        "SELECT report_bytes, finished_at FROM settlement_jobs "
        "WHERE id = $1 AND status = 'COMPLETED'",
        job_id,
    )
    if row is None:
        raise FileNotFound()
    if row["report_bytes"] is None:
        raise ReportExpired()
    return StoredReport(row["report_bytes"], row["finished_at"])


async def report_chunk(conn: Connection, *, job_id: UUID, seq: int) -> bytes | None:
    data: bytes | None = await conn.fetchval(
        "SELECT data FROM settlement_report_chunks WHERE job_id = $1 AND seq = $2", job_id, seq
    )
    return data


# --- A job's run ---------------------------------------------------------------------------------


async def claim_job(conn: Connection, *, job_id: UUID) -> ClaimedJob | None:
    """Start a run: QUEUED (or RUNNING, left by a run that died) -> RUNNING, from scratch.
    None when the job is gone or finished (cancelled while queued, completed, ...)."""
    row = await conn.fetchrow(
        """
        UPDATE settlement_jobs
        SET status = 'RUNNING', attempt = attempt + 1, started_at = now(), processed = 0,
            total = NULL, error = NULL
        WHERE id = $1 AND status IN ('QUEUED', 'RUNNING')
        RETURNING from_date, to_date, attempt
        """,
        job_id,
    )
    if row is None:
        return None
    return ClaimedJob(job_id, row["from_date"], row["to_date"], row["attempt"])


async def record_progress(
    conn: Connection, *, job: ClaimedJob, processed: int, total: int | None
) -> bool:
    """Store progress; False when the run no longer owns the job (cancelled or taken over)."""
    owned = await conn.fetchval(
        """
        UPDATE settlement_jobs SET processed = $3, total = $4
        WHERE id = $1 AND attempt = $2 AND status = 'RUNNING'
        RETURNING true
        """,
        job.id,
        job.attempt,
        processed,
        total,
    )
    return bool(owned)


async def requeue_job(conn: Connection, *, job: ClaimedJob) -> bool:
    """RUNNING -> QUEUED (the run was stopped, e.g. by a shutdown); False if no longer ours."""
    requeued = await conn.fetchval(
        """
        UPDATE settlement_jobs
        SET status = 'QUEUED', processed = 0, total = NULL, started_at = NULL
        WHERE id = $1 AND attempt = $2 AND status = 'RUNNING'
        RETURNING true
        """,
        job.id,
        job.attempt,
    )
    return bool(requeued)


async def fail_job(conn: Connection, *, job: ClaimedJob, error: str) -> bool:
    failed = await conn.fetchval(
        """
        UPDATE settlement_jobs SET status = 'FAILED', error = $3, finished_at = now()
        WHERE id = $1 AND attempt = $2 AND status = 'RUNNING'
        RETURNING true
        """,
        job.id,
        job.attempt,
        error[:2000],
    )
    return bool(failed)


async def export_snapshot(conn: Connection) -> str:
    """The snapshot of the REPEATABLE READ transaction open on `conn`, for others to share."""
    return str(await conn.fetchval("SELECT pg_export_snapshot()"))


async def import_snapshot(conn: Connection, snapshot: str) -> None:
    """First statement of a REPEATABLE READ transaction: see exactly what the exporter sees."""
    if not _SNAPSHOT_ID.fullmatch(snapshot):  # SET takes no parameters: never interpolate junk
        raise ValueError(f"unexpected snapshot id {snapshot!r}")
    await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")


async def count_completed(conn: Connection, *, start: datetime, end: datetime) -> int:
    """COMPLETED transactions paid in [start, end): an index-only scan of the covering index."""
    count = await conn.fetchval(
        "SELECT count(*) FROM transactions "
        "WHERE status = 'COMPLETED' AND paid_at >= $1 AND paid_at < $2",
        start,
        end,
    )
    return int(count)


# Per merchant: gross, fee and count of COMPLETED transactions paid in [$1, $2). A batch lies
# within one UTC day, so the day needs no per-row computation.
AGGREGATE_BATCH_SQL = """
SELECT merchant_id, sum(amount_cents)::bigint AS gross_cents, sum(fee_cents)::bigint AS fee_cents,
       count(*) AS txn_count
FROM transactions
WHERE status = 'COMPLETED' AND paid_at >= $1 AND paid_at < $2
GROUP BY merchant_id
"""


async def aggregate_batch(
    conn: Connection, *, start: datetime, end: datetime
) -> list[asyncpg.Record]:
    return await conn.fetch(AGGREGATE_BATCH_SQL, start, end)


_REPLACE_SETTLEMENTS = """
WITH fresh AS (
    SELECT * FROM unnest($3::text[], $4::date[], $5::bigint[], $6::bigint[], $7::bigint[])
        AS f (merchant_id, date, gross_cents, fee_cents, txn_count)
), stale AS (
    DELETE FROM settlements s
    WHERE s.date BETWEEN $1 AND $2
      AND NOT EXISTS (SELECT 1 FROM fresh f WHERE (f.merchant_id, f.date) = (s.merchant_id, s.date))
)
INSERT INTO settlements AS s
    (merchant_id, date, gross_cents, fee_cents, net_cents, txn_count, job_id)
SELECT merchant_id, date, gross_cents, fee_cents, gross_cents - fee_cents, txn_count, $8
FROM fresh
ON CONFLICT (merchant_id, date) DO UPDATE
SET gross_cents = excluded.gross_cents, fee_cents = excluded.fee_cents,
    net_cents = excluded.net_cents, txn_count = excluded.txn_count, job_id = excluded.job_id,
    generated_at = now()
-- An unchanged row is left as it is: re-running a range changes nothing at all.
WHERE (s.gross_cents, s.fee_cents, s.txn_count)
      IS DISTINCT FROM (excluded.gross_cents, excluded.fee_cents, excluded.txn_count)
"""


async def complete_job(
    conn: Connection,
    *,
    job: ClaimedJob,
    rows: Sequence[SettlementRow],
    total: int,
    report: Sequence[bytes],
) -> bool:
    """In one transaction: replace the range's settlements with `rows`, store the CSV
    (`report`, in chunks), mark the job COMPLETED. False, writing nothing, when the run no
    longer owns the job (cancelled meanwhile, or taken over)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
        # The row lock makes a concurrent cancel wait for our commit (and then find COMPLETED).
        owned = await conn.fetchval(
            "SELECT true FROM settlement_jobs "
            "WHERE id = $1 AND attempt = $2 AND status = 'RUNNING' FOR UPDATE",
            job.id,
            job.attempt,
        )
        if not owned:
            return False
        merchants, days, gross, fees, counts = zip(*rows, strict=True) if rows else ([],) * 5
        await conn.execute(
            _REPLACE_SETTLEMENTS,
            job.first_day,
            job.last_day,
            merchants,
            days,
            gross,
            fees,
            counts,
            job_key(job.id),
        )
        await conn.copy_records_to_table(
            "settlement_report_chunks",
            columns=("job_id", "seq", "data"),
            records=((job.id, seq, chunk) for seq, chunk in enumerate(report)),
        )
        await conn.execute(
            """
            UPDATE settlement_jobs
            SET status = 'COMPLETED', processed = $2, total = $2, file_name = $3,
                report_bytes = $4, finished_at = now()
            WHERE id = $1
            """,
            job.id,
            total,
            csv_name(job.id),
            sum(map(len, report)),
        )
    return True


# --- The sweep -----------------------------------------------------------------------------------


async def requeue_orphans(conn: Connection, *, older_than_s: float) -> list[UUID]:
    """Unfinished jobs that no queued or running task will ever pick up (the process died
    between writing the job and deferring its task, or a stopped run's task is gone):
    back to QUEUED; the caller defers a task for each."""
    rows = await conn.fetch(
        """
        UPDATE settlement_jobs j
        SET status = 'QUEUED', processed = 0, total = NULL, started_at = NULL
        WHERE j.status IN ('QUEUED', 'RUNNING')
          AND coalesce(j.started_at, j.created_at) < now() - make_interval(secs => $1)
          AND NOT EXISTS (
              SELECT 1 FROM procrastinate_jobs p
              WHERE p.status IN ('todo', 'doing') AND p.lock = 'job_' || j.id::text)
        RETURNING j.id
        """,
        older_than_s,
    )
    return [row["id"] for row in rows]


async def delete_expired_reports(conn: Connection, *, retention_days: int) -> int:
    """Delete the reports of jobs that finished more than `retention_days` ago; how many."""
    async with conn.transaction():
        expired = await conn.fetch(
            """
            UPDATE settlement_jobs SET report_bytes = NULL
            WHERE report_bytes IS NOT NULL
              AND finished_at < now() - make_interval(days => $1)
            RETURNING id
            """,
            retention_days,
        )
        await conn.execute(
            "DELETE FROM settlement_report_chunks WHERE job_id = ANY($1::uuid[])",
            [row["id"] for row in expired],
        )
    return len(expired)


# --- Settlements ---------------------------------------------------------------------------------


async def list_settlements(
    conn: Connection,
    *,
    first_day: date | None,
    last_day: date | None,
    merchant_id: str | None,
    after: SettlementKey | None,
    limit: int,
) -> tuple[list[Settlement], SettlementKey | None]:
    """A page in (merchant_id, date) order, after `after`; and the key to continue from (None
    on the last page). Keyset paging on the primary key: a deep page costs what the first does."""
    where = Where()
    if after is not None:
        where.add("(merchant_id, date) > ({}, {})", after.merchant_id, after.day)
    if merchant_id is not None:
        where.add("merchant_id = {}", merchant_id)
    if first_day is not None:
        where.add("date >= {}", first_day)
    if last_day is not None:
        where.add("date <= {}", last_day)
    rows = await conn.fetch(
        f"""
        SELECT merchant_id, date, gross_cents, fee_cents, net_cents, txn_count, job_id,
               generated_at
        FROM settlements {where.sql}
        ORDER BY merchant_id, date LIMIT {where.param(limit + 1)}
        """,
        *where.args,
    )
    page = [Settlement(**row) for row in rows[:limit]]
    more = len(rows) > limit
    return page, SettlementKey(page[-1].merchant_id, page[-1].date) if more else None
