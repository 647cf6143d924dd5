from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import FileResponse

from flashsale.config import Settings
from flashsale.deps import AdminOnly, Db
from flashsale.errors import UNAUTHORIZED_DOC, documented
from flashsale.observability import metrics
from flashsale.schemas import Limit
from flashsale.settlement import service
from flashsale.settlement.schemas import (
    CancelRequested,
    JobAccepted,
    JobStatus,
    SettlementJob,
    SettlementJobCreate,
    SettlementJobList,
    csv_name,
    parse_job_key,
)
from flashsale.settlement.worker import JobRuntime

log = structlog.get_logger()

# The admin side: every route here needs the API key when API_KEY is set.
router = APIRouter(
    tags=["settlement"],
    dependencies=[AdminOnly],
    responses={401: UNAUTHORIZED_DOC},
)

JobId = Annotated[str, Path(description="Job id, job_<uuid>")]


async def _jobs(request: Request) -> JobRuntime:
    jobs: JobRuntime = request.app.state.jobs
    return jobs


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


Jobs = Annotated[JobRuntime, Depends(_jobs)]
AppSettings = Annotated[Settings, Depends(_settings)]


@router.post(
    "/jobs/settlement",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        400: documented("Invalid dates or range (VALIDATION_ERROR)"),
        503: documented("JOB_QUEUE_SIZE jobs are already waiting (JOB_QUEUE_FULL)"),
    },
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


@router.get("/jobs", responses={400: documented("Invalid limit or status")}, summary="Recent jobs")
async def list_jobs(
    database: Db,
    limit: Annotated[Limit, Query()] = 20,
    status: Annotated[JobStatus | None, Query()] = None,
) -> SettlementJobList:
    async with database.connection() as conn:
        jobs = await service.list_jobs(conn, limit=limit, status=status)
    return SettlementJobList(jobs=jobs, limit=limit)


@router.get(
    "/jobs/{job_id}",
    responses={404: documented("No such job (JOB_NOT_FOUND)")},
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
    responses={
        404: documented("No such job (JOB_NOT_FOUND)"),
        409: documented("The job has already finished (JOB_NOT_CANCELLABLE)"),
    },
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
    "/downloads/{name:path}",
    response_class=FileResponse,
    responses={
        200: {"content": {"text/csv": {}}, "description": "The settlement CSV"},
        404: documented("No such file (FILE_NOT_FOUND)"),
    },
    summary="Download a completed job's CSV",
)
async def download(name: str, database: Db, settings: AppSettings) -> FileResponse:
    # Only `job_<uuid>.csv` of a COMPLETED job: the path is rebuilt from the parsed UUID, so no
    # name, however encoded, can reach a file outside the downloads directory.
    uuid = parse_job_key(name.removesuffix(".csv")) if name.endswith(".csv") else None
    if uuid is None:
        raise service.FileNotFound()
    async with database.connection() as conn:
        await service.ensure_downloadable(conn, job_id=uuid)
    path = settings.downloads_dir / csv_name(uuid)
    if not path.is_file():
        log.warning("settlement.file_missing", path=str(path))
        raise service.FileNotFound()
    return FileResponse(path, media_type="text/csv", filename=path.name)
