"""Orders: reserve stock and record the order in one statement; never oversell.

`place_order` is one SQL statement in autocommit: the guarded UPDATE takes the product's row lock,
the INSERT uses what it returned, and the lock is released the moment the statement commits. One
round trip holds the hot row's lock for the shortest possible time.

With an `Idempotency-Key`, the same statement runs inside a transaction that first takes a
non-blocking advisory lock on the key (a concurrent duplicate gets 409 at once) and looks up an
earlier result (replayed when the body matches, 422 when it does not); the result is stored in
the same transaction as the order, so an order and its key record commit together or not at all.

`place_order_batch` is flash-sale mode's statement (see `coalescer.py`): many orders for one
product in one call of the `place_order_batch()` database function, one transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from flashsale.db import Connection
from flashsale.errors import AppError, NotFound, ValidationFailed
from flashsale.orders.schemas import Order, OrderCreate, OrderProduct, OrderWithProduct
from flashsale.products.service import ProductNotFound


class OrderNotFound(NotFound):
    code = "ORDER_NOT_FOUND"
    message = "Order not found"


class OutOfStock(AppError):
    status_code = 409
    code = "OUT_OF_STOCK"
    message = "Insufficient stock"


class IdempotencyKeyInUse(AppError):
    status_code = 409
    code = "IDEMPOTENCY_KEY_IN_USE"
    message = "A request with this Idempotency-Key is still in progress; retry shortly"


class IdempotencyKeyReused(AppError):
    status_code = 422
    code = "IDEMPOTENCY_KEY_REUSED"
    message = "This Idempotency-Key was used with a different request body"


class OrdersBusy(AppError):
    status_code = 503
    code = "ORDERS_BUSY"
    message = "Too many orders are waiting; retry shortly"


class OrderBatchFailed(AppError):
    status_code = 503
    code = "ORDER_BATCH_FAILED"
    message = "The order could not be placed and nothing was recorded; retry shortly"


# Outcomes other than 201 that are stored under an idempotency key and replayed as they were.
_REPLAYABLE_ERRORS: dict[str, type[AppError]] = {
    OutOfStock.code: OutOfStock,
    ProductNotFound.code: ProductNotFound,
}
# Every refusal `place_order_batch()` can return, by code.
_BATCH_REFUSALS: dict[str, type[AppError]] = {
    **_REPLAYABLE_ERRORS,
    IdempotencyKeyInUse.code: IdempotencyKeyInUse,
    IdempotencyKeyReused.code: IdempotencyKeyReused,
}

_ORDER_COLUMNS = "id, product_id, buyer_id, quantity, status, total_cents, created_at, updated_at"

PLACE_ORDER_SQL = f"""
WITH reserved AS (
    UPDATE products
    SET stock = stock - $2, version = version + 1, updated_at = now()
    WHERE id = $1 AND stock >= $2
    RETURNING id, price
), created AS (
    INSERT INTO orders (product_id, buyer_id, quantity, total_cents)
    SELECT id, $3, $2, price * $2 FROM reserved
    RETURNING {_ORDER_COLUMNS}
)
SELECT created.*,
       created.id IS NOT NULL OR EXISTS (SELECT 1 FROM products WHERE id = $1) AS product_exists
FROM (VALUES (1)) AS one LEFT JOIN created ON true
"""


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    order: Order
    replayed: bool = False


def request_fingerprint(data: OrderCreate) -> bytes:
    """What "the same request" means for an idempotency key: the same validated body."""
    canonical = json.dumps(data.model_dump(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """One POST /orders as flash-sale mode queues it."""

    data: OrderCreate
    idempotency_key: str | None = None
    fingerprint: bytes | None = None  # of `data`, when there is a key

    @classmethod
    def of(cls, data: OrderCreate, idempotency_key: str | None) -> OrderRequest:
        fingerprint = request_fingerprint(data) if idempotency_key is not None else None
        return cls(data, idempotency_key, fingerprint)


PLACE_ORDER_BATCH_SQL = "SELECT * FROM place_order_batch($1, $2, $3, $4, $5, $6)"


async def place_order_batch(
    conn: Connection,
    *,
    product_id: int,
    requests: Sequence[OrderRequest],
    idempotency_ttl_s: int = 86400,
) -> list[PlacedOrder | AppError]:
    """Place `requests` (all for `product_id`, in arrival order, each key at most once) in one
    statement and one transaction; return each one's outcome, in the same order. Raises (and
    commits nothing) when the statement fails."""
    rows = await conn.fetch(
        PLACE_ORDER_BATCH_SQL,
        product_id,
        [r.data.quantity for r in requests],
        [r.data.buyer_id for r in requests],
        [r.idempotency_key for r in requests],
        [r.fingerprint for r in requests],
        float(idempotency_ttl_s),
    )
    outcomes: list[PlacedOrder | AppError] = []
    for row in rows:
        outcome = row["outcome"]
        if outcome in ("CREATED", "REPLAYED"):
            order = Order(**{k: v for k, v in row.items() if k != "outcome"})
            outcomes.append(PlacedOrder(order, replayed=outcome == "REPLAYED"))
        else:
            outcomes.append(_BATCH_REFUSALS[outcome]())
    return outcomes


async def place_order(
    conn: Connection,
    *,
    data: OrderCreate,
    idempotency_key: str | None = None,
    idempotency_ttl_s: int = 86400,
) -> PlacedOrder:
    if idempotency_key is None:
        return PlacedOrder(await _reserve_and_insert(conn, data))
    async with conn.transaction():
        outcome = await _place_idempotently(conn, data, idempotency_key, idempotency_ttl_s)
    # Raised after the commit: a refused order's key record must be kept, not rolled back.
    if isinstance(outcome, AppError):
        raise outcome
    return outcome


async def _reserve_and_insert(conn: Connection, data: OrderCreate) -> Order:
    row = await conn.fetchrow(PLACE_ORDER_SQL, data.product_id, data.quantity, data.buyer_id)
    assert row is not None
    if row["id"] is not None:
        return Order(**{k: v for k, v in row.items() if k != "product_exists"})
    if row["product_exists"]:
        raise OutOfStock()
    raise ProductNotFound()


async def _place_idempotently(
    conn: Connection, data: OrderCreate, key: str, ttl_s: int
) -> PlacedOrder | AppError:
    locked = await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 7))", key)
    if not locked:
        raise IdempotencyKeyInUse()
    fingerprint = request_fingerprint(data)
    # A new statement after the lock: its snapshot sees a first request that just committed.
    previous = await conn.fetchrow(
        "SELECT request_hash, order_id, error_code FROM idempotency_keys "
        "WHERE key = $1 AND expires_at > now()",
        key,
    )
    if previous is not None:
        if previous["request_hash"] != fingerprint:
            raise IdempotencyKeyReused()
        if previous["error_code"] is not None:
            return _REPLAYABLE_ERRORS[previous["error_code"]]()
        return PlacedOrder(await _get_order_row(conn, previous["order_id"]), replayed=True)

    outcome: PlacedOrder | AppError
    try:
        outcome = PlacedOrder(await _reserve_and_insert(conn, data))
    except (OutOfStock, ProductNotFound) as refused:
        outcome = refused
    await conn.execute(
        """
        INSERT INTO idempotency_keys (key, request_hash, order_id, error_code, expires_at)
        VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
        ON CONFLICT (key) DO UPDATE  -- only an expired record can be here: we hold the key's lock
        SET request_hash = excluded.request_hash, order_id = excluded.order_id,
            error_code = excluded.error_code, created_at = now(), expires_at = excluded.expires_at
        """,
        key,
        fingerprint,
        outcome.order.id if isinstance(outcome, PlacedOrder) else None,
        outcome.code if isinstance(outcome, AppError) else None,
        float(ttl_s),
    )
    return outcome


async def _get_order_row(conn: Connection, order_id: UUID) -> Order:
    row = await conn.fetchrow(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE id = $1", order_id)
    if row is None:
        raise OrderNotFound()
    return Order(**row)


async def get_order(conn: Connection, *, order_id: UUID) -> OrderWithProduct:
    row = await conn.fetchrow(
        """
        SELECT o.id, o.product_id, o.buyer_id, o.quantity, o.status, o.total_cents,
               o.created_at, o.updated_at,
               p.name AS product_name, p.stock AS product_stock, p.price AS product_price
        FROM orders o JOIN products p ON p.id = o.product_id
        WHERE o.id = $1
        """,
        order_id,
    )
    if row is None:
        raise OrderNotFound()
    product = OrderProduct(
        id=row["product_id"],
        name=row["product_name"],
        stock=row["product_stock"],
        price=row["product_price"],
    )
    return OrderWithProduct(**{name: row[name] for name in Order.model_fields}, product=product)


async def list_orders(
    conn: Connection,
    *,
    limit: int,
    offset: int,
    buyer_id: str | None = None,
    product_id: int | None = None,
) -> list[Order]:
    """Newest first. Filters become fixed SQL fragments with parameters, so each combination
    gets its own plan that can use its index."""
    conditions: list[str] = []
    args: list[object] = []
    if buyer_id is not None:
        args.append(buyer_id)
        conditions.append(f"buyer_id = ${len(args)}")
    if product_id is not None:
        args.append(product_id)
        conditions.append(f"product_id = ${len(args)}")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = await conn.fetch(
        f"SELECT {_ORDER_COLUMNS} FROM orders {where} "
        f"ORDER BY created_at DESC, id DESC LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
        *args,
        limit,
        offset,
    )
    return [Order(**row) for row in rows]


def validate_idempotency_key(value: str) -> str:
    if not (1 <= len(value) <= 255) or not all("!" <= char <= "~" for char in value):
        raise ValidationFailed(
            "Idempotency-Key must be 1-255 visible ASCII characters",
            details=[{"field": "Idempotency-Key", "message": "invalid"}],
        )
    return value
