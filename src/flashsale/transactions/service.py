"""Recording and reading transactions one at a time (the bulk path is `importing.py`)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from flashsale.db import Connection, Where
from flashsale.errors import AppError, NotFound
from flashsale.transactions.schemas import (
    FIELDS,
    Transaction,
    TransactionCreate,
    TransactionKey,
    TransactionQuery,
)


class TransactionNotFound(NotFound):
    message = "Transaction not found"


class TransactionConflict(AppError):
    status_code = 409
    code = "TRANSACTION_CONFLICT"
    message = "A transaction with this external_id is stored with other values"


COLUMNS = "id, external_id, merchant_id, amount_cents, fee_cents, status, paid_at, created_at"


def differing_fields(stored: Transaction, given: TransactionCreate) -> list[str]:
    return [field for field in FIELDS if getattr(stored, field) != getattr(given, field)]


async def record_transaction(
    conn: Connection, *, data: TransactionCreate
) -> tuple[Transaction, bool]:
    """Store `data`; (the row, True). A retry (same external_id, same values) stores nothing:
    (the stored row, False). The same external_id with other values: TransactionConflict.
    Racing requests with one external_id: the unique index lets one insert; the others wait
    for its commit and then find its row."""
    values = [getattr(data, field) for field in FIELDS]
    while True:
        row = await conn.fetchrow(
            f"""
            INSERT INTO transactions ({", ".join(FIELDS)}) VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (external_id) DO NOTHING RETURNING {COLUMNS}
            """,
            *values,
        )
        if row is not None:
            return Transaction(**row), True
        row = await conn.fetchrow(
            f"SELECT {COLUMNS} FROM transactions WHERE external_id = $1", data.external_id
        )
        if row is not None:  # (None only if the row were deleted in between: try again)
            break
    stored = Transaction(**row)
    differing = differing_fields(stored, data)
    if differing:
        raise TransactionConflict(
            f"Transaction {data.external_id!r} is stored with other values of: "
            + ", ".join(differing),
            details=[
                {"field": field, "message": "differs from the stored transaction"}
                for field in differing
            ],
        )
    return stored, False


async def get_transaction(conn: Connection, *, transaction_id: int) -> Transaction:
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM transactions WHERE id = $1", transaction_id)
    if row is None:
        raise TransactionNotFound()
    return Transaction(**row)


def _midnight(day: object) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)  # type: ignore[arg-type]


async def list_transactions(
    conn: Connection, *, query: TransactionQuery
) -> tuple[list[Transaction], TransactionKey | None]:
    """A page in (paid_at, id) order after the cursor, and the key to continue from (None on
    the last page): keyset paging on `ix_transactions_paid_at_id` (other filters skip rows)."""
    where = Where()
    if query.cursor is not None:
        where.add("(paid_at, id) > ({}, {})", query.cursor.paid_at, query.cursor.id)
    if query.merchant_id is not None:
        where.add("merchant_id = {}", query.merchant_id)
    if query.from_ is not None:
        where.add("paid_at >= {}", _midnight(query.from_))
    if query.to is not None:
        where.add("paid_at < {}", _midnight(query.to) + timedelta(days=1))
    if query.status is not None:
        where.add("status = {}", query.status)
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM transactions {where.sql} "
        f"ORDER BY paid_at, id LIMIT {where.param(query.limit + 1)}",
        *where.args,
    )
    page = [Transaction(**row) for row in rows[: query.limit]]
    more = len(rows) > query.limit
    return page, TransactionKey(page[-1].paid_at, page[-1].id) if more else None
