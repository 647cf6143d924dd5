from __future__ import annotations

from collections.abc import AsyncIterator
from email.utils import format_datetime
from typing import Annotated

import structlog
from fastapi import APIRouter, Path, Query, Response, status
from fastapi.responses import StreamingResponse

from flashsale.access.control import AccessRoute, Forbidden, OperatorOnly
from flashsale.deps import AppSettings, Db, JobEventHub, Jobs
from flashsale.errors import Unauthorized, ValidationFailed
from flashsale.observability import metrics
from flashsale.settlement import service
from flashsale.settlement.events import EventStreamResponse, TooManyStreams
from flashsale.settlement.schemas import (
    CancelRequested,
    JobAccepted,
    JobQuery,
    SettlementJob,
    SettlementJobCreate,
    SettlementJobList,
    SettlementPage,
    SettlementQuery,
    csv_name,
    job_cursor,
    job_key,
    parse_job_key,
    settlement_cursor,
)
from flashsale.web.errors import documented

log = structlog.get_logger()

# The admin side: every route here needs an operator key (a viewer's for reads) when keys are set.
router = APIRouter(
    tags=["settlement"],
    dependencies=[OperatorOnly],
    responses=documented(Unauthorized, Forbidden),
    route_class=AccessRoute,
)

JobId = Annotated[str, Path(description="Job id, job_<uuid>")]


@router.post(
    "/jobs/settlement",
    status_code=status.HTTP_202_ACCEPTED,
    responses=documented(ValidationFailed, service.JobQueueFull),
    summary="Queue a settlement job for the UTC days from..to (inclusive)",
)
async def create_settlement_job(
    body: SettlementJobCreate, database: Db, jobs: Jobs, settings: AppSettings, response: Response
) -> JobAccepted:
    async with database.connection() as conn:
        job = await service.create_job(
            conn, first_day=body.from_, last_day=body.to, queue_size=settings.job_queue_size
        )
    job_id = parse_job_key(job.job_id)
    assert job_id is not None
    try:
        await jobs.defer(job_id)
    except Exception as exc:  # the job is safely queued in its row: the sweep defers it later
        log.warning("settlement.defer_failed", job_id=job.job_id, error=repr(exc))
    response.headers["Location"] = f"/jobs/{job.job_id}"
    return JobAccepted(job_id=job.job_id, status=job.status)


@router.get(
    "/jobs", responses=documented(ValidationFailed), summary="Jobs, newest first, a page at a time"
)
async def list_jobs(database: Db, query: Annotated[JobQuery, Query()]) -> SettlementJobList:
    async with database.connection() as conn:
        jobs, last = await service.list_jobs(
            conn, limit=query.limit, status=query.status, after=query.cursor
        )
    return SettlementJobList(
        jobs=jobs, limit=query.limit, next_cursor=job_cursor(last) if last is not None else None
    )


@router.get(
    "/jobs/{job_id}",
    responses=documented(service.JobNotFound),
    summary="A job's status and progress",
)
async def get_job(job_id: JobId, database: Db) -> SettlementJob:
    uuid = parse_job_key(job_id)
    if uuid is None:
        raise service.JobNotFound()
    async with database.connection() as conn:
        return await service.get_job(conn, job_id=uuid)


@router.post(
    "/jobs/{job_id}/cancel",
    responses=documented(service.JobNotFound, service.JobNotCancellable),
    summary="Cancel a QUEUED or RUNNING job: it writes no settlements and no CSV",
)
async def cancel_job(job_id: JobId, database: Db, jobs: Jobs) -> CancelRequested:
    uuid = parse_job_key(job_id)
    if uuid is None:
        raise service.JobNotFound()
    async with database.connection() as conn:
        ran_s = await service.cancel_job(conn, job_id=uuid)
    metrics.record_job_finished("CANCELLED", ran_s)
    try:
        await jobs.abort(uuid)
    except Exception as exc:  # the run still stops: it polls its row, now CANCELLED
        log.warning("settlement.abort_failed", job_id=job_id, error=repr(exc))
    return CancelRequested()


@router.get(
    "/jobs/{job_id}/events",
    status_code=200,
    response_class=EventStreamResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-Sent Events: `data: <the job, as GET /jobs/{job_id}>` at "
            "once and on every change, `: heartbeat` comments while nothing changes; the "
            "stream ends after a terminal status",
        },
        **documented(service.JobNotFound, TooManyStreams),
    },
    summary="A job's status and progress, live",
)
async def job_events(job_id: JobId, database: Db, events: JobEventHub) -> EventStreamResponse:
    uuid = parse_job_key(job_id)
    if uuid is None:
        raise service.JobNotFound()
    watch = events.open(uuid)  # before the read: no change after it can be missed
    try:
        async with database.connection() as conn:
            job = await service.get_job(conn, job_id=uuid)
    except BaseException:
        events.close(watch)
        raise
    return EventStreamResponse(events.stream(watch, job))


@router.get(
    "/downloads/{name:path}",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {}}, "description": "The settlement CSV"},
        **documented(service.FileNotFound, service.ReportExpired),
    },
    summary="Download a completed job's CSV",
)
async def download(name: str, database: Db) -> StreamingResponse:
    # Only `job_<uuid>.csv` of a COMPLETED job whose report is still stored.
    uuid = parse_job_key(name.removesuffix(".csv")) if name.endswith(".csv") else None
    if uuid is None:
        raise service.FileNotFound()
    async with database.connection() as conn:
        report = await service.stored_report(conn, job_id=uuid)

    async def chunks() -> AsyncIterator[bytes]:
        # One short query per chunk: a slow client never holds a database connection.
        sent = seq = 0
        while sent < report.size:
            async with database.connection(operation="report_download") as conn:
                chunk = await service.report_chunk(conn, job_id=uuid, seq=seq)
            if chunk is None:  # deleted by the retention sweep during the transfer
                log.warning("settlement.report_vanished", job_id=job_key(uuid), sent=sent)
                return
            yield chunk
            sent += len(chunk)
            seq += 1

    file_name = csv_name(uuid)
    return StreamingResponse(
        chunks(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Length": str(report.size),
            "Content-Disposition": f'attachment; filename="{file_name}"',
            "Last-Modified": format_datetime(report.finished_at, usegmt=True),
            "ETag": f'"{file_name}"',  # a stored report never changes
        },
    )


@router.get(
    "/settlements",
    responses=documented(ValidationFailed),
    summary="Settlement lines by merchant then date, a page at a time (keyset)",
)
async def list_settlements(
    database: Db, query: Annotated[SettlementQuery, Query()]
) -> SettlementPage:
    async with database.connection() as conn:
        page, last = await service.list_settlements(
            conn,
            first_day=query.from_,
            last_day=query.to,
            merchant_id=query.merchant_id,
            after=query.cursor,
            limit=query.limit,
        )
    return SettlementPage(
        settlements=page, next_cursor=settlement_cursor(last) if last is not None else None
    )
