"""Field types shared by every domain's request schemas: validated once, at the edge."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

BIGINT_MAX = 2**63 - 1


# Code points no name or identifier may contain: Unicode's control (Cc), format (Cf), surrogate
# (Cs) and private-use (Co) characters, as of Unicode 14.0. A fixed table, not `unicodedata`, so
# the database's `flashsale_printable()` (migration 0007, built from this table) agrees with the
# edge whatever Python runs; `test_printable_agrees_with_the_database` checks every code point.
NOT_PRINTABLE: tuple[tuple[int, int], ...] = (
    (0x0000, 0x001F), (0x007F, 0x009F), (0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C),
    (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2), (0x180E, 0x180E),
    (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F), (0xD800, 0xF8FF),
    (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD),
    (0x13430, 0x13438), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001),
    (0xE0020, 0xE007F), (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD),
)  # fmt: skip
# The white space `str.strip()` removes that the table above does not already forbid.
EDGE_SPACES: tuple[int, ...] = (
    0x0020,
    0x00A0,
    0x1680,
    *range(0x2000, 0x200B),
    0x2028,
    0x2029,
    0x202F,
    0x205F,
    0x3000,
)


def code_point_class(ranges: Iterable[tuple[int, int]]) -> str:
    """A regular-expression bracket expression of these code point ranges, in the escapes
    both Python's `re` and PostgreSQL's regular expressions read (`\\U0010fffd`)."""
    return "[" + "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in ranges) + "]"


def sql_printable_function() -> str:
    """`flashsale_printable(text)`: the `Printable` rule in SQL, for CHECKs and the bulk import.
    (PostgreSQL text holds neither NUL nor surrogates: the table is cut to what it can hold.)
    Not STRICT, so that PostgreSQL inlines it; the ends are tested one character each (a
    regular expression anchored at the end costs more): together 1 s less per million rows."""
    ranges = [(max(low, 1), high) for low, high in NOT_PRINTABLE if (low, high) != (0xD800, 0xF8FF)]
    ranges.append((0xE000, 0xF8FF))
    spaces = code_point_class((space, space) for space in EDGE_SPACES)
    return f"""
        CREATE FUNCTION flashsale_printable(value text) RETURNS boolean
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        RETURN value !~ '{code_point_class(ranges)}'
            AND left(value, 1) !~ '{spaces}' AND right(value, 1) !~ '{spaces}'
    """


_SPACES = code_point_class((space, space) for space in EDGE_SPACES)
_NOT_PRINTABLE_RE = re.compile(code_point_class(NOT_PRINTABLE))
_PADDED_RE = re.compile(f"^{_SPACES}|{_SPACES}$")


def _printable(value: str) -> str:
    """Reject control, format, surrogate and private-use characters (they break logs and CSVs)
    and surrounding white space."""
    if _NOT_PRINTABLE_RE.search(value):
        raise ValueError("must not contain control or non-printable characters")
    if _PADDED_RE.search(value):
        raise ValueError("must not start or end with whitespace")
    return value


# Annotate a str with this to reject control characters and padding.
Printable = AfterValidator(_printable)

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-](?:0\d|1[0-5]):[0-5]\d)",
    re.IGNORECASE,
)
RFC3339_HINT = (
    "must be an RFC 3339 timestamp with an offset (at most 15:59), e.g. 2026-12-24T18:00:00Z"
)
YEARS_HINT = "must be in 1970-9999 (UTC)"


def _rfc3339(value: object) -> datetime:
    """An RFC 3339 timestamp with its offset (no naive times, no epoch numbers), in UTC,
    microseconds at most (PostgreSQL's precision), from 1970-01-01T00:00Z to the end of 9999.
    Offsets stop at 15:59, as PostgreSQL's do (the bulk import parses timestamps there)."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError(RFC3339_HINT)
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError:
        raise ValueError(f"{RFC3339_HINT} (this one is not a valid date or time)") from None
    try:
        moment = parsed.astimezone(UTC)
    except OverflowError:  # past the end of 9999 in UTC
        raise ValueError(YEARS_HINT) from None
    if moment.year < 1970:
        raise ValueError(YEARS_HINT)
    return moment


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
