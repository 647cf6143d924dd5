"""Orders: reserve stock and record the order in one statement; never oversell.

`place_order` without an `Idempotency-Key` is one SQL statement in autocommit: the guarded UPDATE
takes the product's row lock, the INSERT uses what it returned, and the lock is released the
moment the statement commits. One round trip holds the hot row's lock for the shortest time.

`place_order_batch` places many orders for one product in one call of the `place_order_batch()`
database function (defined in migration 0004), one transaction: flash-sale mode's statement (see
`coalescer.py`). It also takes the key's advisory lock, looks up an earlier result (replayed when
the body matches, 422 when it does not) and stores the outcome with the order, so a keyed single
order goes through it too, as a batch of one: idempotency is implemented once, in the database.

Both answer with the product's stock after the statement, which feeds the sold-out cache.
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
    refusal = "out_of_stock"


class IdempotencyKeyInUse(AppError):
    status_code = 409
    code = "IDEMPOTENCY_KEY_IN_USE"
    message = "A request with this Idempotency-Key is still in progress; retry shortly"
    refusal = "idempotency_key_in_use"


class IdempotencyKeyReused(AppError):
    status_code = 422
    code = "IDEMPOTENCY_KEY_REUSED"
    message = "This Idempotency-Key was used with a different request body"
    refusal = "idempotency_key_reused"


class OrdersBusy(AppError):
    status_code = 503
    code = "ORDERS_BUSY"
    message = "Too many orders are waiting; retry shortly"
    refusal = "busy"


class OrderBatchFailed(AppError):
    status_code = 503
    code = "ORDER_BATCH_FAILED"
    message = "The order could not be placed and nothing was recorded; retry shortly"
    refusal = "batch_failed"


# Every refusal `place_order_batch()` can return, by code.
_BATCH_REFUSALS: dict[str, type[AppError]] = {
    error.code: error
    for error in (OutOfStock, ProductNotFound, IdempotencyKeyInUse, IdempotencyKeyReused)
}

_ORDER_FIELDS = tuple(Order.model_fields)
_ORDER_COLUMNS = ", ".join(_ORDER_FIELDS)

PLACE_ORDER_SQL = f"""
WITH reserved AS (
    UPDATE products
    SET stock = stock - $2, version = version + 1, updated_at = now()
    WHERE id = $1 AND stock >= $2
    RETURNING id, price, stock
), created AS (
    INSERT INTO orders (product_id, buyer_id, quantity, total_cents)
    SELECT id, $3, $2, price * $2 FROM reserved
    RETURNING {_ORDER_COLUMNS}
)
SELECT created.*,
       coalesce((SELECT stock FROM reserved), (SELECT stock FROM products WHERE id = $1))
           AS stock_left
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


Outcome = PlacedOrder | AppError


@dataclass(frozen=True, slots=True)
class Placement:
    """What one placement statement answered."""

    outcomes: list[Outcome]  # one per request, in the order they were sent
    stock_left: int | None  # the product's stock afterwards; None when there is no such product


# The function's body: migrations/versions/2026_12_01_0004_orders_at_scale.py.
PLACE_ORDER_BATCH_SQL = "SELECT * FROM place_order_batch($1, $2, $3, $4, $5, $6)"


async def place_order_batch(
    conn: Connection,
    *,
    product_id: int,
    requests: Sequence[OrderRequest],
    idempotency_ttl_s: int = 86400,
) -> Placement:
    """Place `requests` (all for `product_id`, in arrival order, each key at most once) in one
    statement and one transaction. Raises (and commits nothing) when the statement fails."""
    rows = await conn.fetch(
        PLACE_ORDER_BATCH_SQL,
        product_id,
        [r.data.quantity for r in requests],
        [r.data.buyer_id for r in requests],
        [r.idempotency_key for r in requests],
        [r.fingerprint for r in requests],
        float(idempotency_ttl_s),
    )
    outcomes: list[Outcome] = []
    for row in rows:
        outcome = row["outcome"]
        if outcome in ("CREATED", "REPLAYED"):
            order = Order(**{k: row[k] for k in _ORDER_FIELDS})
            outcomes.append(PlacedOrder(order, replayed=outcome == "REPLAYED"))
        else:
            outcomes.append(_BATCH_REFUSALS[outcome]())
    return Placement(outcomes, rows[0]["stock_left"] if rows else None)


async def place_order(
    conn: Connection, *, request: OrderRequest, idempotency_ttl_s: int = 86400
) -> Placement:
    """One order: the single statement, or with a key a batch of one."""
    if request.idempotency_key is not None:
        return await place_order_batch(
            conn,
            product_id=request.data.product_id,
            requests=[request],
            idempotency_ttl_s=idempotency_ttl_s,
        )
    data = request.data
    row = await conn.fetchrow(PLACE_ORDER_SQL, data.product_id, data.quantity, data.buyer_id)
    assert row is not None
    outcome: Outcome
    if row["id"] is not None:
        outcome = PlacedOrder(Order(**{k: row[k] for k in _ORDER_FIELDS}))
    elif row["stock_left"] is not None:
        outcome = OutOfStock()
    else:
        outcome = ProductNotFound()
    return Placement([outcome], row["stock_left"])


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


async def delete_expired_idempotency_keys(conn: Connection, *, chunk: int = 10_000) -> int:
    """Forget expired Idempotency-Key records, in chunks (short transactions). Run by the
    settlement sweep; an expired key is reusable before that (`place_order_batch()` overwrites
    it), so this only reclaims space."""
    deleted = 0
    while True:
        status = await conn.execute(
            """
            DELETE FROM idempotency_keys WHERE key IN (
                SELECT key FROM idempotency_keys WHERE expires_at < now() LIMIT $1)
            """,
            chunk,
        )
        count = int(status.split()[-1])
        deleted += count
        if count < chunk:
            return deleted
