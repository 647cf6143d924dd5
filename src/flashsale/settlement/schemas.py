from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Literal, Self
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from flashsale.schemas import (
    CURSOR_HINT,
    Limit,
    Printable,
    RequestBody,
    WholeNumber,
    decode_cursor,
    encode_cursor,
)

JobStatus = Literal["QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"]
MAX_RANGE_DAYS = 366

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_JOB_ID = re.compile(r"job_([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def job_key(job_id: UUID) -> str:
    """The public job id, `job_<uuid>`: also the job's lock name in the task queue."""
    return f"job_{job_id}"


def parse_job_key(text: str) -> UUID | None:
    """The UUID of a well-formed public job id (canonical lowercase form only), else None."""
    match = _JOB_ID.fullmatch(text)
    return UUID(match.group(1)) if match else None


def csv_name(job_id: UUID) -> str:
    return f"{job_key(job_id)}.csv"


# The extremes are not ordinary days to the driver (asyncpg sends date.min and date.max as
# -infinity and infinity), and the range's end is `to` + 1 day: keep well inside both.
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(9999, 12, 30)


def _day(value: object) -> object:
    """Exactly `YYYY-MM-DD` (no timestamps, no numbers), a real calendar day, 1970-9999."""
    if isinstance(value, str) and _DAY.fullmatch(value):
        try:
            day = date.fromisoformat(value)
        except ValueError:
            pass
        else:
            if FIRST_DAY <= day <= LAST_DAY:
                return day
            raise ValueError(f"must be between {FIRST_DAY} and {LAST_DAY}")
    raise ValueError("must be a date as YYYY-MM-DD")


Day = Annotated[date, BeforeValidator(_day)]


class SettlementJobCreate(RequestBody):
    from_: Day = Field(alias="from", description="First UTC day, inclusive")
    to: Day = Field(description="Last UTC day, inclusive")

    @model_validator(mode="after")
    def _valid_range(self) -> Self:
        if self.from_ > self.to:
            raise ValueError("'from' must not be after 'to'")
        if (self.to - self.from_).days + 1 > MAX_RANGE_DAYS:
            raise ValueError(f"the range must cover at most {MAX_RANGE_DAYS} days")
        return self


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus


def _absent(value: object) -> bool:
    return value is None


class SettlementJob(BaseModel):
    job_id: str
    status: JobStatus
    progress: float = Field(description="0-100: processed / total, 100 once COMPLETED")
    processed: int
    total: int | None = Field(description="Matching transactions; known once the job runs")
    from_: date = Field(serialization_alias="from")
    to: date
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime = Field(description="When the job last changed (status or progress)")
    download_url: str | None = Field(default=None, exclude_if=_absent)
    error: str | None = Field(default=None, exclude_if=_absent)


class SettlementJobList(BaseModel):
    jobs: list[SettlementJob]
    limit: int
    next_cursor: str | None = Field(description="Pass as `cursor` for older jobs; null: last")


class CancelRequested(BaseModel):
    message: Literal["Job cancellation requested"] = "Job cancellation requested"


class Settlement(BaseModel):
    merchant_id: str
    date: date
    gross_cents: int
    fee_cents: int
    net_cents: int
    txn_count: int
    job_id: str = Field(description="The job that wrote this line")
    generated_at: datetime


class SettlementPage(BaseModel):
    settlements: list[Settlement]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last")


@dataclass(frozen=True, slots=True)
class SettlementKey:
    """Where a settlements page ends. Its cursor is opaque to clients: base64url of
    `merchant_id` NUL `YYYY-MM-DD`. (Not a tuple: FastAPI reads a tuple as a repeated query
    parameter.)"""

    merchant_id: str
    day: date


MerchantId = Annotated[str, Field(min_length=1, max_length=200), Printable]


def settlement_cursor(key: SettlementKey) -> str:
    return encode_cursor(key.merchant_id, key.day.isoformat())


def _settlement_key(value: object) -> object:
    merchant_id, day = decode_cursor(value, 2)
    return SettlementKey(merchant_id, _day(day))  # type: ignore[arg-type]


Cursor = Annotated[SettlementKey, BeforeValidator(_settlement_key)]


@dataclass(frozen=True, slots=True)
class JobKey:
    """Where a page of jobs (newest first) ends; its cursor: base64url of created_at NUL id."""

    created_at: datetime
    id: UUID


def job_cursor(key: JobKey) -> str:
    return encode_cursor(key.created_at.isoformat(), str(key.id))


def _job_key(value: object) -> object:
    created_at, job_id = decode_cursor(value, 2)
    try:
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None:
            raise ValueError(created_at)
        return JobKey(moment, UUID(job_id))
    except ValueError:
        raise ValueError(CURSOR_HINT) from None


JobCursor = Annotated[JobKey, BeforeValidator(_job_key)]


class SettlementQuery(BaseModel):
    """`GET /settlements`'s query parameters; unknown ones are refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)

    from_: Day | None = Field(None, alias="from", description="First day, inclusive")
    to: Day | None = Field(None, description="Last day, inclusive")
    merchant_id: MerchantId | None = Field(None, description="One merchant only")
    limit: Annotated[int, WholeNumber] = Field(100, ge=1, le=1000)
    cursor: Cursor | None = Field(None, description="next_cursor of the previous page")

    @model_validator(mode="after")
    def _valid_range(self) -> Self:
        if self.from_ is not None and self.to is not None and self.from_ > self.to:
            raise ValueError("'from' must not be after 'to'")
        return self


class JobQuery(BaseModel):
    """`GET /jobs`'s query parameters."""

    model_config = ConfigDict(extra="forbid")

    limit: Limit = Field(20, description="Jobs per page, 1-100")
    status: JobStatus | None = Field(None, description="Only jobs in this status")
    cursor: JobCursor | None = Field(None, description="next_cursor of the previous page")
