"""Settlement tasks on procrastinate: `settle` runs one job, `sweep` recovers the lost ones.

`POST /jobs/settlement` writes the job row, then defers a `settle` task for it (lock and
queueing lock = the job id: one waiting task at most, never two runs at once). A worker (see
`worker`) runs the task: it claims the row (-> RUNNING), computes (see `aggregation`), and in one
transaction writes the settlements, stores the CSV and marks the job COMPLETED.

How each failure ends:
- cancel (`POST /jobs/{id}/cancel`): the row is CANCELLED at once and procrastinate is asked to
  abort the task, which cancels it (asyncio) and with it every batch and in-flight query. The
  run also polls its own row with every progress write and stops when it is no longer RUNNING.
- shutdown (SIGTERM): procrastinate lets running jobs finish for JOB_SHUTDOWN_GRACE_S, then
  cancels them; a cancelled run puts its job back to QUEUED and defers a new task.
- a worker killed outright: it stops sending heartbeats; the sweep finds its task stalled after
  JOB_STALLED_AFTER_S, drops it, and the job is requeued.
- a database error: the job is FAILED with the error.
The sweep (a periodic task, every JOB_SWEEP_INTERVAL_S, run by any one worker) also requeues any
unfinished job that has no task (e.g. the server died between writing the job and deferring its
task), deletes expired Idempotency-Key records, and deletes the reports of jobs that finished
more than REPORT_RETENTION_DAYS ago.

The worker registers these tasks under the names below and hands them what they run with (a
`TaskDeps`, in procrastinate's `additional_context`); they defer `settle` by its name on the
app that runs them. So this module never imports the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from uuid import UUID

import asyncpg
import procrastinate
import structlog
from procrastinate.exceptions import AlreadyEnqueued, ProcrastinateException
from procrastinate.jobs import Status

from flashsale.config import Settings
from flashsale.db import Connection
from flashsale.observability import metrics
from flashsale.orders.service import delete_expired_idempotency_keys
from flashsale.settlement import aggregation, report, service
from flashsale.settlement.schemas import job_key, parse_job_key

log = structlog.get_logger()

QUEUE = "settlement"
SETTLE_TASK = "settlement.settle"
SWEEP_TASK = "settlement.sweep"
DEPS_KEY = "settlement"  # where the worker puts the TaskDeps in `additional_context`
# How often a running job stores its progress and checks that its row is still RUNNING.
PROGRESS_INTERVAL_S = 0.25


@dataclass(frozen=True, slots=True)
class TaskDeps:
    """What the tasks run with, given by the worker that runs them."""

    settings: Settings
    pool: asyncpg.Pool  # the worker's pool: the jobs compute on it


class JobStopped(Exception):
    """The run no longer owns its job: it was cancelled, or taken over by another worker."""


def _deps(context: procrastinate.JobContext) -> TaskDeps:
    deps: TaskDeps = context.additional_context[DEPS_KEY]
    return deps


async def defer_settle(app: procrastinate.App, job_id: UUID) -> None:
    """Queue a settle task for the job (nothing to do if one is already waiting)."""
    key = job_key(job_id)
    with contextlib.suppress(AlreadyEnqueued):
        await app.configure_task(
            SETTLE_TASK, allow_unknown=False, lock=key, queueing_lock=key
        ).defer_async(job_id=key)


async def settle(context: procrastinate.JobContext, job_id: str) -> None:
    deps = _deps(context)
    structlog.contextvars.bind_contextvars(job_id=job_id)
    uuid = parse_job_key(job_id)
    if uuid is None:
        log.error("settlement.bad_job_id")
        return
    async with deps.pool.acquire() as conn:
        job = await service.claim_job(conn, job_id=uuid)
    if job is None:
        log.info("settlement.skipped", reason="no longer queued")
        return
    log.info(
        "settlement.started",
        first_day=job.first_day.isoformat(),
        last_day=job.last_day.isoformat(),
        attempt=job.attempt,
    )
    started = time.perf_counter()
    try:
        total = await _run(deps, job)
    except asyncio.CancelledError:
        await asyncio.shield(_after_abort(context.app, deps, job))
        raise
    except JobStopped:
        log.info("settlement.stopped", reason="cancelled or taken over")
        return
    except Exception as exc:
        if await _fail(deps, job, exc):
            metrics.record_job_finished("FAILED", time.perf_counter() - started)
        return
    duration_s = time.perf_counter() - started
    metrics.record_job_finished("COMPLETED", duration_s)
    log.info("settlement.completed", total=total, duration_ms=round(duration_s * 1000, 1))


async def _run(deps: TaskDeps, job: service.ClaimedJob) -> int:
    """Compute, then write everything in one transaction; the number of transactions settled."""
    settings = deps.settings
    progress = aggregation.Progress()
    async with deps.pool.acquire() as control:
        with aggregation.first_failure():
            async with asyncio.TaskGroup() as group:
                work = group.create_task(
                    aggregation.aggregate(
                        deps.pool,
                        first_day=job.first_day,
                        last_day=job.last_day,
                        workers=settings.job_workers,
                        batch_size=settings.job_batch_size,
                        progress=progress,
                    )
                )
                group.create_task(_report_progress(control, job, progress, until=work))
        rows = work.result()
        total = progress.processed
        chunks = await asyncio.to_thread(report.csv_chunks, rows)
        if not await service.complete_job(control, job=job, rows=rows, total=total, report=chunks):
            raise JobStopped()
    return total


async def _report_progress(
    conn: Connection,
    job: service.ClaimedJob,
    progress: aggregation.Progress,
    *,
    until: asyncio.Task[list[service.SettlementRow]],
) -> None:
    """Store progress every PROGRESS_INTERVAL_S, and once more when `until` is done (the job
    then shows all its rows processed while it writes); stop the job (raise JobStopped) as soon
    as its row says it is no longer this run's to do."""
    while True:
        done = (await asyncio.wait({until}, timeout=PROGRESS_INTERVAL_S))[0]
        if done and (until.cancelled() or until.exception() is not None):
            return  # the task group raises the work's failure
        if not await service.record_progress(
            conn, job=job, processed=progress.processed, total=progress.total
        ):
            raise JobStopped()
        if done:
            return


async def _after_abort(app: procrastinate.App, deps: TaskDeps, job: service.ClaimedJob) -> None:
    """The task was cancelled: by a user's cancel (the row already says CANCELLED) or by a
    shutdown, in which case the job goes back to the queue for another worker."""
    try:
        async with deps.pool.acquire() as conn:
            requeued = await service.requeue_job(conn, job=job)
        if requeued:
            await defer_settle(app, job.id)
            log.info("settlement.requeued", reason="worker stopping")
        else:
            log.info("settlement.stopped", reason="cancelled")
    except Exception as exc:  # the sweep requeues it later
        log.warning("settlement.requeue_failed", error=repr(exc))


async def _fail(deps: TaskDeps, job: service.ClaimedJob, exc: Exception) -> bool:
    """Mark the job FAILED with the error; False if that could not be recorded."""
    error = f"{type(exc).__name__}: {exc}"
    log.error("settlement.failed", error=error)
    try:
        async with deps.pool.acquire() as conn:
            return await service.fail_job(conn, job=job, error=error)
    except Exception as write_error:  # the database is away: the sweep requeues the job later
        log.error("settlement.failure_not_recorded", error=repr(write_error))
        return False


async def sweep(context: procrastinate.JobContext, timestamp: int) -> None:
    deps = _deps(context)
    settings = deps.settings
    manager = context.app.job_manager
    # Tasks of workers that stopped sending heartbeats: drop them; their jobs are requeued below.
    stalled = list(
        await manager.get_stalled_jobs(
            queue=QUEUE, seconds_since_heartbeat=settings.job_stalled_after_s
        )
    )
    for task in stalled:
        assert task.id is not None
        with contextlib.suppress(ProcrastinateException):  # another sweep got it first
            await manager.finish_job_by_id_async(task.id, status=Status.ABORTED, delete_job=True)
    await manager.prune_stalled_workers(settings.job_stalled_after_s)
    async with deps.pool.acquire() as conn:
        orphans = await service.requeue_orphans(conn, older_than_s=settings.job_sweep_interval_s)
        expired_keys = await delete_expired_idempotency_keys(conn)
        expired_reports = await service.delete_expired_reports(
            conn, retention_days=settings.report_retention_days
        )
    for job_id in orphans:
        await defer_settle(context.app, job_id)
    if stalled or orphans or expired_keys or expired_reports:
        log.info(
            "settlement.swept",
            stalled_tasks=len(stalled),
            requeued=[job_key(job_id) for job_id in orphans],
            expired_idempotency_keys=expired_keys,
            expired_reports=expired_reports,
        )
