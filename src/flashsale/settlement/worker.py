"""The settlement job runtime and the worker lifecycle.

`JobRuntime` is a process's handle on settlement jobs: the procrastinate app, on which it
registers the tasks (see `tasks`: what they do, and how each failure of a job ends) and defers
and aborts them; in a process that runs jobs, it also runs the worker, started again whenever it
stops by itself. `job_runtime` gives a process its runtime (the server's runs a worker too with
EMBEDDED_WORKER); `standalone_worker` is `flashsale worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import procrastinate
import structlog
from procrastinate.jobs import Status

from flashsale.background import running
from flashsale.config import Settings
from flashsale.observability import exposition
from flashsale.observability.sampling import sampling
from flashsale.settlement import tasks
from flashsale.settlement.schemas import job_key

log = structlog.get_logger()

WORKER_RESTART_DELAY_S = 1.0


class JobRuntime:
    """A process's handle on settlement jobs: the procrastinate app (to defer and abort tasks)
    and, in a process that runs jobs, the worker and the asyncpg pool they compute on."""

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
        self.app.task(name=tasks.SETTLE_TASK, queue=tasks.QUEUE, pass_context=True)(tasks.settle)
        sweep_task = self.app.task(
            name=tasks.SWEEP_TASK,
            queue=tasks.QUEUE,
            pass_context=True,
            queueing_lock=tasks.SWEEP_TASK,
            priority=10,
        )(tasks.sweep)
        every = settings.job_sweep_interval_s
        self.app.periodic(cron=f"* * * * * */{every}", periodic_id="sweep")(sweep_task)
        self.url = url
        self.application_name = application_name

    async def defer(self, job_id: UUID) -> None:
        """Queue a task for the job (nothing to do if one is already waiting)."""
        await tasks.defer_settle(self.app, job_id)

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
        pool = await asyncpg.create_pool(
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
        deps = tasks.TaskDeps(settings=settings, pool=pool)
        try:
            while True:
                try:
                    await self.app.run_worker_async(
                        queues=[tasks.QUEUE],
                        name=f"flashsale-worker-{os.getpid()}",
                        concurrency=settings.job_concurrency,
                        # LISTEN/NOTIFY wakes workers at once; polling is the fallback (e.g. for
                        # the first sweep, deferred before the worker listens).
                        fetch_job_polling_interval=min(5.0, settings.job_sweep_interval_s),
                        shutdown_graceful_timeout=settings.job_shutdown_grace_s,
                        update_heartbeat_interval=settings.job_stalled_after_s / 4,
                        stalled_worker_timeout=settings.job_stalled_after_s,
                        delete_jobs="always",  # our job rows keep the history
                        additional_context={tasks.DEPS_KEY: deps},
                        install_signal_handlers=False,
                    )
                    log.warning("worker.stopped_unexpectedly")
                except Exception as exc:
                    log.error("worker.failed", error=repr(exc))
                await asyncio.sleep(WORKER_RESTART_DELAY_S)
        finally:
            await pool.close()


@contextlib.asynccontextmanager
async def job_runtime(settings: Settings, url: str, *, worker: bool) -> AsyncIterator[JobRuntime]:
    """The process's JobRuntime; with `worker`, a worker runs jobs in the background meanwhile
    and is stopped gracefully on exit."""
    # procrastinate logs every job start and end, and each periodic defer, at info: ours suffice.
    logging.getLogger("procrastinate").setLevel(max(logging.WARNING, logging.getLogger().level))
    runtime = JobRuntime(settings, url)
    await runtime.app.open_async()
    try:
        # Cancelling the worker is a graceful stop: see run_worker.
        async with running(runtime.run_worker()) if worker else contextlib.nullcontext():
            yield runtime
    finally:
        await runtime.app.close_async()


async def standalone_worker(settings: Settings, url: str, *, metrics_port: bool = True) -> None:
    """`flashsale worker`: run jobs until SIGTERM or SIGINT, then stop gracefully."""
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    metrics_server = exposition.serve_worker_metrics(settings) if metrics_port else None
    async with job_runtime(settings, url, worker=True), sampling(None):
        log.info("worker.started", concurrency=settings.job_concurrency)
        await stop.wait()
    if metrics_server is not None:
        metrics_server.shutdown()
    log.info("worker.stopped")
