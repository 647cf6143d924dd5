from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from flashsale.schemas import (
    BIGINT_MAX,
    CURSOR_HINT,
    Printable,
    RequestBody,
    RowId,
    Timestamp,
    WholeNumber,
    decode_cursor,
    encode_cursor,
)
from flashsale.settlement.schemas import Day

TransactionStatus = Literal["COMPLETED", "PENDING", "FAILED", "REFUNDED"]
STATUSES: tuple[TransactionStatus, ...] = ("COMPLETED", "PENDING", "FAILED", "REFUNDED")
# The fields a transaction is given, in the import's CSV column order.
FIELDS = ("external_id", "merchant_id", "amount_cents", "fee_cents", "status", "paid_at")

EXTERNAL_ID_HINT = "must be 1-128 visible ASCII characters (no spaces)"
_VISIBLE_ASCII = re.compile(r"[!-~]{1,128}")


def _external_id(value: str) -> str:
    if not _VISIBLE_ASCII.fullmatch(value):
        raise ValueError(EXTERNAL_ID_HINT)
    return value


ExternalId = Annotated[
    str, AfterValidator(_external_id), Field(description="The processor's id: 1-128 visible ASCII")
]
MerchantId = Annotated[str, Field(min_length=1, max_length=64), Printable]
Cents = Annotated[int, Field(ge=0, le=BIGINT_MAX)]


class TransactionCreate(RequestBody):
    external_id: ExternalId
    merchant_id: MerchantId
    amount_cents: Cents
    fee_cents: Cents = Field(description="At most amount_cents")
    status: TransactionStatus
    paid_at: Timestamp

    @model_validator(mode="after")
    def _fee_within_amount(self) -> Self:
        if self.fee_cents > self.amount_cents:
            raise ValueError("fee_cents must not exceed amount_cents")
        return self


class Transaction(BaseModel):
    id: int
    external_id: str
    merchant_id: str
    amount_cents: int
    fee_cents: int
    status: TransactionStatus
    paid_at: datetime
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TransactionKey:
    """Where a page (in paid_at, id order) ends; its cursor: base64url of paid_at NUL id."""

    paid_at: datetime
    id: int


def transaction_cursor(key: TransactionKey) -> str:
    return encode_cursor(key.paid_at.isoformat(), str(key.id))


def _transaction_key(value: object) -> object:
    paid_at, row_id = decode_cursor(value, 2)
    try:
        moment = datetime.fromisoformat(paid_at)
        if moment.tzinfo is None or not row_id.isdigit() or not 1 <= int(row_id) <= BIGINT_MAX:
            raise ValueError(paid_at)
        return TransactionKey(moment, int(row_id))
    except ValueError:
        raise ValueError(CURSOR_HINT) from None


Cursor = Annotated[TransactionKey, BeforeValidator(_transaction_key)]


class TransactionQuery(BaseModel):
    """`GET /transactions`'s query parameters; unknown ones are refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)

    merchant_id: MerchantId | None = Field(None, description="One merchant only")
    from_: Day | None = Field(None, alias="from", description="First UTC day of paid_at")
    to: Day | None = Field(None, description="Last UTC day of paid_at, inclusive")
    status: TransactionStatus | None = None
    limit: Annotated[int, WholeNumber] = Field(100, ge=1, le=1000)
    cursor: Cursor | None = Field(None, description="next_cursor of the previous page")

    @model_validator(mode="after")
    def _valid_range(self) -> Self:
        if self.from_ is not None and self.to is not None and self.from_ > self.to:
            raise ValueError("'from' must not be after 'to'")
        return self


class TransactionPage(BaseModel):
    transactions: list[Transaction]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last")


TransactionId = RowId
OnDuplicate = Literal["fail", "skip"]
ImportFormat = Literal["csv", "ndjson"]


class ImportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    on_duplicate: OnDuplicate = Field(
        "fail",
        description="An external_id already stored: `fail` imports nothing (409); `skip` "
        "skips it when its values are the same (a different value is still a 409)",
    )


class ImportResult(BaseModel):
    imported: int
    skipped: int
