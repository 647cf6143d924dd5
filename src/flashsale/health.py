from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel

from flashsale import __version__
from flashsale.deps import State

router = APIRouter(tags=["health"])

Status = Literal["healthy", "unhealthy"]


class HealthChecks(BaseModel):
    database: Status


class Health(BaseModel):
    status: Status
    version: str
    checks: HealthChecks
    uptime: str
    timestamp: datetime


def format_uptime(seconds: float) -> str:
    """Go-style duration, as the seed prints it: 2h15m30s, 4m5s, 7s."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@router.get(
    "/health",
    responses={503: {"model": Health, "description": "The database is unreachable"}},
    summary="Liveness and database reachability",
)
async def health(state: State, response: Response) -> Health:
    database: Status = "healthy" if await state.database.ping() else "unhealthy"
    if database == "unhealthy":
        response.status_code = 503
    return Health(
        status=database,
        version=__version__,
        checks=HealthChecks(database=database),
        uptime=format_uptime(time.monotonic() - state.started_at),
        timestamp=datetime.now(UTC).replace(microsecond=0),
    )
