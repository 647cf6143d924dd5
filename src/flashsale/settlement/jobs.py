"""Settlement jobs on procrastinate: the task queue, the settle task, the sweep, the worker.

`POST /jobs/settlement` writes the job row, then defers a `settle` task for it (lock and
queueing lock = the job id: one waiting task at most, never two runs at once). A worker runs
the task: it claims the row (-> RUNNING), computes (see `aggregation`), and in one transaction
writes the settlements, publishes the CSV and marks the job COMPLETED.

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
task) and deletes expired Idempotency-Key records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
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
from flashsale.settlement.schemas import csv_name, job_key, parse_job_key

log = structlog.get_logger()

QUEUE = "settlement"
SETTLE_TASK = "settlement.settle"
SWEEP_TASK = "settlement.sweep"
# How often a running job stores its progress and checks that its row is still RUNNING.
PROGRESS_INTERVAL_S = 0.25
WORKER_RESTART_DELAY_S = 1.0


class JobStopped(Exception):
    """The run no longer owns its job: it was cancelled, or taken over by another worker."""


class JobRuntime:
    """A process's handle on settlement jobs: the procrastinate app (to defer and abort tasks)
    and, in a process that runs jobs, the asyncpg pool they compute on."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        application_name = f"flashsale:{os.getpid()}"
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(
                conninfo=url,
                min_size=1,
                max_size=settings.job_concurrency + 3,  # LISTEN, fetch, heartbeat, job endings
                timeout=5,
                kwargs={"application_name": application_name},
            )
        )
        self.settle_task = self.app.task(name=SETTLE_TASK, queue=QUEUE, pass_context=True)(settle)
        sweep_task = self.app.task(
            name=SWEEP_TASK, queue=QUEUE, pass_context=True, queueing_lock=SWEEP_TASK, priority=10
        )(sweep)
        every = settings.job_sweep_interval_s
        self.app.periodic(cron=f"* * * * * */{every}", periodic_id="sweep")(sweep_task)
        self.url = url
        self.application_name = application_name
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "jobs run only in a process that runs a worker"
        return self._pool

    async def defer(self, job_id: UUID) -> None:
        """Queue a task for the job (nothing to do if one is already waiting)."""
        key = job_key(job_id)
        with contextlib.suppress(AlreadyEnqueued):
            await self.settle_task.configure(lock=key, queueing_lock=key).defer_async(job_id=key)

    async def abort(self, job_id: UUID) -> None:
        """Delete the job's waiting task, or abort its running one (asyncio cancellation)."""
        manager = self.app.job_manager
        for task in await manager.list_jobs_async(lock=job_key(job_id)):
            if task.id is not None and task.status in (Status.TODO.value, Status.DOING.value):
                await manager.cancel_job_by_id_async(task.id, abort=True, delete_job=True)

    async def run_worker(self) -> None:
        """Run jobs until cancelled. Cancelling is a graceful stop: running jobs get
        JOB_SHUTDOWN_GRACE_S to finish, then they are aborted and requeued. A worker that stops
        by itself (it lost the database) is started again after a pause."""
        settings = self.settings
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=0,
            max_size=settings.job_concurrency * (settings.job_workers + 1),
            max_inactive_connection_lifetime=300,
            server_settings={
                "application_name": self.application_name,
                "statement_timeout": "0",  # jobs are long by nature; cancellation stops them
                # A job runs the same few statements hundreds of times, always best served by
                # the same plan (an index-only range scan): skip planning every execution.
                "plan_cache_mode": "force_generic_plan",
            },
        )
        try:
            while True:
                try:
                    await self.app.run_worker_async(
                        queues=[QUEUE],
                        name=f"flashsale-worker-{os.getpid()}",
                        concurrency=settings.job_concurrency,
                        # LISTEN/NOTIFY wakes workers at once; polling is the fallback (e.g. for
                        # the first sweep, deferred before the worker listens).
                        fetch_job_polling_interval=min(5.0, settings.job_sweep_interval_s),
                        shutdown_graceful_timeout=settings.job_shutdown_grace_s,
                        update_heartbeat_interval=settings.job_stalled_after_s / 4,
                        stalled_worker_timeout=settings.job_stalled_after_s,
                        delete_jobs="always",  # our job rows keep the history
                        additional_context={"runtime": self},
                        install_signal_handlers=False,
                    )
                    log.warning("worker.stopped_unexpectedly")
                except Exception as exc:
                    log.error("worker.failed", error=repr(exc))
                await asyncio.sleep(WORKER_RESTART_DELAY_S)
        finally:
            await self._pool.close()
            self._pool = None


@contextlib.asynccontextmanager
async def job_runtime(settings: Settings, url: str, *, worker: bool) -> AsyncIterator[JobRuntime]:
    """The process's JobRuntime; with `worker`, a worker runs jobs in the background meanwhile
    and is stopped gracefully on exit."""
    # procrastinate logs every job start and end, and each periodic defer, at info: ours suffice.
    logging.getLogger("procrastinate").setLevel(max(logging.WARNING, logging.getLogger().level))
    runtime = JobRuntime(settings, url)
    await runtime.app.open_async()
    running = asyncio.create_task(runtime.run_worker()) if worker else None
    try:
        yield runtime
    finally:
        if running is not None:
            running.cancel()  # a graceful stop: see run_worker
            with contextlib.suppress(asyncio.CancelledError):
                await running
        await runtime.app.close_async()


async def standalone_worker(settings: Settings, url: str) -> None:
    """`flashsale worker`: run jobs until SIGTERM or SIGINT, then stop gracefully."""
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    metrics_server = metrics.serve_worker_metrics(settings)
    async with job_runtime(settings, url, worker=True), metrics.sampling(None):
        log.info("worker.started", concurrency=settings.job_concurrency)
        await stop.wait()
    if metrics_server is not None:
        metrics_server.shutdown()
    log.info("worker.stopped")


# --- Tasks ---------------------------------------------------------------------------------------


async def settle(context: procrastinate.JobContext, job_id: str) -> None:
    runtime: JobRuntime = context.additional_context["runtime"]
    structlog.contextvars.bind_contextvars(job_id=job_id)
    uuid = parse_job_key(job_id)
    if uuid is None:
        log.error("settlement.bad_job_id")
        return
    async with runtime.pool.acquire() as conn:
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
        total = await _run(runtime, job)
    except asyncio.CancelledError:
        await asyncio.shield(_after_abort(runtime, job))
        raise
    except JobStopped:
        log.info("settlement.stopped", reason="cancelled or taken over")
        return
    except Exception as exc:
        if await _fail(runtime, job, exc):
            metrics.record_job_finished("FAILED", time.perf_counter() - started)
        return
    duration_s = time.perf_counter() - started
    metrics.record_job_finished("COMPLETED", duration_s)
    log.info("settlement.completed", total=total, duration_ms=round(duration_s * 1000, 1))


async def _run(runtime: JobRuntime, job: service.ClaimedJob) -> int:
    """Compute, then write everything in one transaction; the number of transactions settled."""
    settings = runtime.settings
    progress = aggregation.Progress()
    async with runtime.pool.acquire() as control:
        with aggregation.first_failure():
            async with asyncio.TaskGroup() as group:
                work = group.create_task(
                    aggregation.aggregate(
                        runtime.pool,
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

        async def publish() -> str:
            name = csv_name(job.id)
            await asyncio.to_thread(report.write_csv, settings.downloads_dir, name, rows)
            return name

        if not await service.complete_job(
            control, job=job, rows=rows, total=total, publish=publish
        ):
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


async def _after_abort(runtime: JobRuntime, job: service.ClaimedJob) -> None:
    """The task was cancelled: by a user's cancel (the row already says CANCELLED) or by a
    shutdown, in which case the job goes back to the queue for another worker."""
    try:
        async with runtime.pool.acquire() as conn:
            requeued = await service.requeue_job(conn, job=job)
        if requeued:
            await runtime.defer(job.id)
            log.info("settlement.requeued", reason="worker stopping")
        else:
            log.info("settlement.stopped", reason="cancelled")
    except Exception as exc:  # the sweep requeues it later
        log.warning("settlement.requeue_failed", error=repr(exc))


async def _fail(runtime: JobRuntime, job: service.ClaimedJob, exc: Exception) -> bool:
    """Mark the job FAILED with the error; False if that could not be recorded."""
    error = f"{type(exc).__name__}: {exc}"
    log.error("settlement.failed", error=error)
    try:
        async with runtime.pool.acquire() as conn:
            return await service.fail_job(conn, job=job, error=error)
    except Exception as write_error:  # the database is away: the sweep requeues the job later
        log.error("settlement.failure_not_recorded", error=repr(write_error))
        return False


async def sweep(context: procrastinate.JobContext, timestamp: int) -> None:
    runtime: JobRuntime = context.additional_context["runtime"]
    settings = runtime.settings
    manager = runtime.app.job_manager
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
    async with runtime.pool.acquire() as conn:
        orphans = await service.requeue_orphans(conn, older_than_s=settings.job_sweep_interval_s)
        expired_keys = await delete_expired_idempotency_keys(conn)
    for job_id in orphans:
        await runtime.defer(job_id)
    if stalled or orphans or expired_keys:
        log.info(
            "settlement.swept",
            stalled_tasks=len(stalled),
            requeued=[job_key(job_id) for job_id in orphans],
            expired_idempotency_keys=expired_keys,
        )
