"""Field types shared by every domain's request schemas: validated once, at the edge."""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

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

RowId = Annotated[int, Field(ge=1, le=BIGINT_MAX)]
Limit = Annotated[int, Field(ge=1, le=100)]
# Deep OFFSET scans are slow; past this, use a filter instead.
Offset = Annotated[int, Field(ge=0, le=100_000)]


class RequestBody(BaseModel):
    """Base of every JSON request body: JSON types only (no "1" for 1), no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid")
