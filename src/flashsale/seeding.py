"""Demo and benchmark data: products, and payment transactions bulk-loaded with binary COPY.

Transactions are generated with NumPy and encoded straight into PostgreSQL's binary COPY format
(no Python object per row), so a million rows are generated in a fraction of the time COPY takes.
The output depends only on the arguments: the same `seed` gives the same rows.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np

from flashsale.db import Connection

# Distributions as in the seed's seeder: amounts 1.00-499.99, fee 2.9% + 30 cents, mostly COMPLETED.
MIN_AMOUNT_CENTS = 100
MAX_AMOUNT_CENTS = 49_999
STATUSES: tuple[tuple[bytes, float], ...] = (
    (b"COMPLETED", 0.90),
    (b"PENDING", 0.04),
    (b"FAILED", 0.03),
    (b"REFUNDED", 0.03),
)
CHUNK_ROWS = 200_000
COLUMNS = ("external_id", "merchant_id", "amount_cents", "fee_cents", "status", "paid_at")
EXTERNAL_ID_DIGITS = 12

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)


@dataclass(frozen=True)
class TransactionSpec:
    count: int
    merchants: int
    first_day: date
    last_day: date
    seed: int


def merchant_ids(merchants: int) -> list[str]:
    width = max(3, len(str(merchants)))
    return [f"merchant_{i:0{width}d}" for i in range(1, merchants + 1)]


def fee_cents(amount_cents: np.ndarray) -> np.ndarray:
    """2.9% rounded half up, plus 30 cents, in integer arithmetic."""
    return (amount_cents * 29 + 500) // 1000 + 30


def _microseconds_since_pg_epoch(day: date) -> int:
    moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return (moment - _PG_EPOCH) // timedelta(microseconds=1)


def external_ids(seed: int, first_number: int, count: int) -> np.ndarray:
    """`seed-<seed>-<number>` for `count` consecutive numbers, as fixed-width bytes, built
    without a Python string per row."""
    prefix = np.frombuffer(f"seed-{seed}-".encode(), dtype=np.uint8)
    numbers = np.arange(first_number, first_number + count, dtype=np.int64)
    powers = 10 ** np.arange(EXTERNAL_ID_DIGITS - 1, -1, -1, dtype=np.int64)
    text = np.empty((count, prefix.size + EXTERNAL_ID_DIGITS), dtype=np.uint8)
    text[:, : prefix.size] = prefix
    text[:, prefix.size :] = numbers[:, None] // powers % 10 + ord("0")
    return text.view(f"S{text.shape[1]}").ravel()


def _row_dtype(external_width: int, merchant_width: int, status_width: int) -> np.dtype[np.void]:
    """One binary COPY tuple: field count, then (length, value) per column, big-endian."""
    return np.dtype(
        [
            ("fields", ">i2"),
            ("external_len", ">i4"), ("external", f"S{external_width}"),
            ("merchant_len", ">i4"), ("merchant", f"S{merchant_width}"),
            ("amount_len", ">i4"), ("amount", ">i8"),
            ("fee_len", ">i4"), ("fee", ">i8"),
            ("status_len", ">i4"), ("status", f"S{status_width}"),
            ("paid_at_len", ">i4"), ("paid_at", ">i8"),
        ]
    )  # fmt: skip


def transaction_copy_chunks(
    spec: TransactionSpec, *, first_number: int = 1
) -> Iterator[tuple[bytes, int]]:
    """Yield (binary COPY bytes, row count) chunks; header first, trailer last. Row i (from 0)
    gets the external id `seed-<seed>-<first_number + i>` (12 digits)."""
    rng = np.random.default_rng(spec.seed)
    names = np.array([name.encode() for name in merchant_ids(spec.merchants)])
    start_us = _microseconds_since_pg_epoch(spec.first_day)
    end_us = _microseconds_since_pg_epoch(spec.last_day + timedelta(days=1))
    labels = [label for label, _ in STATUSES]
    weights = [weight for _, weight in STATUSES]
    yield _COPY_HEADER, 0
    # Rows come in paid_at order, as recorded payments do: chunk i covers the i-th slice of the
    # period (sorted inside). The table is then laid out by time, so a time range is a few
    # contiguous pages and the index is built by appends (faster than in random order), and
    # index-only scans of a range touch a few visibility-map pages, not all of them.
    chunks = -(-spec.count // CHUNK_ROWS)
    number = first_number
    for chunk in range(chunks):
        size = spec.count // chunks + (chunk < spec.count % chunks)
        external = external_ids(spec.seed, number, size)
        number += size
        low = start_us + (end_us - start_us) * chunk // chunks
        high = start_us + (end_us - start_us) * (chunk + 1) // chunks
        merchant = names[rng.integers(0, spec.merchants, size)]
        amount = rng.integers(MIN_AMOUNT_CENTS, MAX_AMOUNT_CENTS + 1, size, dtype=np.int64)
        status = rng.choice(len(labels), size, p=weights)
        paid_at = np.sort(rng.integers(low, high, size, dtype=np.int64))
        parts = []
        # Text columns have a fixed width per status, so each status is one fixed-size dtype.
        for index, label in enumerate(labels):
            mask = status == index
            row_type = _row_dtype(external.itemsize, names.itemsize, len(label))
            rows = np.empty(int(mask.sum()), dtype=row_type)
            rows["fields"] = len(COLUMNS)
            rows["external_len"], rows["external"] = external.itemsize, external[mask]
            rows["merchant_len"], rows["merchant"] = names.itemsize, merchant[mask]
            rows["amount_len"], rows["amount"] = 8, amount[mask]
            rows["fee_len"], rows["fee"] = 8, fee_cents(amount[mask])
            rows["status_len"], rows["status"] = len(label), label
            rows["paid_at_len"], rows["paid_at"] = 8, paid_at[mask]
            parts.append(rows.tobytes())
        yield b"".join(parts), size
    yield _COPY_TRAILER, 0


async def copy_transactions(
    conn: Connection,
    spec: TransactionSpec,
    *,
    replace: bool = False,
    analyze: bool = True,
    on_progress: Callable[[int], object] = lambda rows: None,
) -> None:
    """Load the spec's rows, after the existing ones, or instead of them (`replace`), then
    ANALYZE the table (unless not `analyze`). Appended rows' external ids are numbered after
    the highest row id, so they are new too."""

    async def source(first_number: int) -> AsyncIterator[bytes]:
        for data, rows in transaction_copy_chunks(spec, first_number=first_number):
            yield data
            on_progress(rows)

    async with conn.transaction():
        if replace:
            await conn.execute("TRUNCATE transactions")
        last_id = await conn.fetchval("SELECT coalesce(max(id), 0) FROM transactions")
        # FREEZE (allowed right after a TRUNCATE in the same transaction) writes the rows already
        # frozen and all-visible: no vacuum pass needed before index-only scans can skip the heap.
        await conn.copy_to_table(
            "transactions",
            source=source(last_id + 1),
            columns=COLUMNS,
            format="binary",
            freeze=replace,
        )
    if analyze:
        await conn.execute("ANALYZE transactions")


async def create_demo_products(
    conn: Connection, *, count: int, stock: int, price: int
) -> tuple[list[int], int]:
    """The demo products that do not exist yet (by name), created: their ids, and how many
    were there already. So a second `flashsale seed` adds none."""
    names = [
        "Limited Edition Product" if count == 1 else f"Limited Edition Product #{i}"
        for i in range(1, count + 1)
    ]
    rows = await conn.fetch(
        "INSERT INTO products (name, price, stock) "
        "SELECT wanted.name, $2, $3 FROM unnest($1::text[]) AS wanted (name) "
        "WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.name = wanted.name) RETURNING id",
        names,
        price,
        stock,
    )
    return [row["id"] for row in rows], count - len(rows)


async def transaction_count(conn: Connection) -> int:
    """How many transactions there are (a second seed must not silently double them)."""
    return int(await conn.fetchval("SELECT count(*) FROM transactions"))
