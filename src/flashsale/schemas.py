"""Field types shared by every domain's request schemas: validated once, at the edge."""

from __future__ import annotations

import base64
import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

BIGINT_MAX = 2**63 - 1


def _printable(value: str) -> str:
    """Reject control, format, surrogate and unassigned characters (they break logs and CSVs)."""
    if any(unicodedata.category(char).startswith("C") for char in value):
        raise ValueError("must not contain control or non-printable characters")
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    return value


# Annotate a str with this to reject control characters and padding.
Printable = AfterValidator(_printable)

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})", re.IGNORECASE
)
_RFC3339_HINT = "must be an RFC 3339 timestamp with an offset, e.g. 2026-12-24T18:00:00Z"


def _rfc3339(value: object) -> datetime:
    """An RFC 3339 timestamp with its offset (no naive times, no epoch numbers), in UTC,
    microseconds at most (PostgreSQL's precision), years 1970-9999."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError(_RFC3339_HINT)
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError:
        raise ValueError(f"{_RFC3339_HINT} (this one is not a valid date or time)") from None
    if parsed.year < 1970:
        raise ValueError("must be in 1970-9999")
    return parsed.astimezone(UTC)


# A point in time, given as RFC 3339 with an offset, kept (and returned) in UTC.
Timestamp = Annotated[datetime, BeforeValidator(_rfc3339)]

_DIGITS = re.compile(r"[0-9]{1,19}")


def _whole_number_text(value: object) -> object:
    """A number given as text (a path or query value) must be plain ASCII digits: no `1.0`,
    `+1`, ` 1` or `1e3`, which lax parsing would take as 1 (a JSON body's `1.0` is refused by
    strict mode already). Anything else is left to the field's own validation."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise ValueError("must be a whole number, written with digits only")
    return value


WholeNumber = BeforeValidator(_whole_number_text)
RowId = Annotated[int, WholeNumber, Field(ge=1, le=BIGINT_MAX)]
Limit = Annotated[int, WholeNumber, Field(ge=1, le=100)]
# Deep OFFSET scans are slow; past this, use a filter instead.
Offset = Annotated[int, WholeNumber, Field(ge=0, le=100_000)]


class RequestBody(BaseModel):
    """Base of every JSON request body: JSON types only (no "1" for 1), no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid")


# --- Keyset paging -------------------------------------------------------------------------------

_BASE64URL = re.compile(r"[A-Za-z0-9_-]{1,4096}")
CURSOR_HINT = "must be a next_cursor returned by this endpoint"


def encode_cursor(*parts: str) -> str:
    """An opaque page cursor: the sort key where a page ended, as base64url of its parts."""
    return base64.urlsafe_b64encode("\0".join(parts).encode()).decode().rstrip("=")


def decode_cursor(value: object, parts: int) -> list[str]:
    """The `parts` strings of a cursor made by `encode_cursor`; ValueError for anything else."""
    if isinstance(value, str) and _BASE64URL.fullmatch(value):
        try:
            decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        except ValueError:
            pass
        else:
            fields = decoded.split("\0")
            if len(fields) == parts and all(fields):
                return fields
    raise ValueError(CURSOR_HINT)
