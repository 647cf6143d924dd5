"""Orders: every placement is decided in one statement by the database; never oversell.

`place_order_batch` places many orders for one product in one call of the `place_order_batch()`
database function (migration 0005), one transaction: it takes the product's row lock, applies
the shop's rules (sale window, first fit on stock, the per-buyer limit) in arrival order, takes
each key's advisory lock, looks up an earlier result (replayed when the body matches, 422 when it
does not) and stores the outcome with the order. Flash-sale mode sends it batches (see
`coalescer.py`); a single order (ORDER_COALESCING=off) is a batch of one, except that an order
without a key for a product without rules that fits is placed by one plain statement first
(`PLACE_PLAIN_ORDER_SQL`, cheaper inside the row lock). The rules and idempotency are
implemented once, in the database, on its clock.

`cancel_order` is one call of `cancel_order()`: the order CANCELLED and its units back in stock,
once, however many cancellations race.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from flashsale.db import Connection
from flashsale.errors import AppError, NotFound, ValidationFailed
from flashsale.orders.schemas import (
    Order,
    OrderCreate,
    OrderProduct,
    OrderStatus,
    OrderWithProduct,
)
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


class SaleNotStarted(AppError):
    status_code = 409
    code = "SALE_NOT_STARTED"
    message = "The sale of this product has not started; retry after Retry-After seconds"
    refusal = "sale_not_started"


class SaleEnded(AppError):
    status_code = 409
    code = "SALE_ENDED"
    message = "The sale of this product has ended"
    refusal = "sale_ended"


class PurchaseLimitExceeded(AppError):
    status_code = 409
    code = "PURCHASE_LIMIT_EXCEEDED"
    message = "This order would take the buyer past the product's max_per_buyer"
    refusal = "purchase_limit_exceeded"


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
    for error in (
        OutOfStock,
        ProductNotFound,
        SaleNotStarted,
        SaleEnded,
        PurchaseLimitExceeded,
        IdempotencyKeyInUse,
        IdempotencyKeyReused,
    )
}
# Sent with a refusal that was stored under the request's Idempotency-Key, as with a replayed order.
REPLAYED_HEADER = "Idempotent-Replayed"

_ORDER_FIELDS = tuple(Order.model_fields)
_ORDER_COLUMNS = ", ".join(_ORDER_FIELDS)


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    order: Order
    replayed: bool = False


def request_fingerprint(data: OrderCreate) -> bytes:
    """What "the same request" means for an idempotency key: the same validated body."""
    canonical = json.dumps(data.model_dump(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()


# Between the buyer and the key in a stored key: a control character, which no buyer id has.
_KEY_SCOPE_SEPARATOR = "\x1f"


def buyer_scoped_key(buyer_id: str, idempotency_key: str) -> str:
    """An Idempotency-Key as it is stored: the buyer's own, so that two buyers using one key
    get their own orders and nobody can replay or pre-claim another buyer's key."""
    return f"{buyer_id}{_KEY_SCOPE_SEPARATOR}{idempotency_key}"


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """One POST /orders as flash-sale mode queues it."""

    data: OrderCreate
    idempotency_key: str | None = None  # scoped to the buyer (`buyer_scoped_key`)
    fingerprint: bytes | None = None  # of `data`, when there is a key

    @classmethod
    def of(cls, data: OrderCreate, idempotency_key: str | None) -> OrderRequest:
        if idempotency_key is None:
            return cls(data)
        scoped = buyer_scoped_key(data.buyer_id, idempotency_key)
        return cls(data, scoped, request_fingerprint(data))


Outcome = PlacedOrder | AppError


@dataclass(frozen=True, slots=True)
class Placement:
    """What one placement statement answered."""

    outcomes: list[Outcome]  # one per request, in the order they were sent
    # The product is on sale with no stock left: every order without a key would be refused.
    sold_out: bool


# The function's body: migrations/versions/2026_12_02_0005_shop_rules.py.
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
    return Placement([_outcome(row) for row in rows], bool(rows) and rows[0]["sold_out"])


def _order(row: asyncpg.Record) -> Order:
    """The order in a row that carries other columns too."""
    return Order(**{k: row[k] for k in _ORDER_FIELDS})


def _outcome(row: asyncpg.Record) -> Outcome:
    outcome = row["outcome"]
    if outcome in ("CREATED", "REPLAYED"):
        return PlacedOrder(_order(row), replayed=outcome == "REPLAYED")
    headers = {REPLAYED_HEADER: "true"} if row["replayed"] else {}
    if outcome == SaleNotStarted.code and row["sale_opens_in_s"] is not None:
        headers["Retry-After"] = str(row["sale_opens_in_s"])  # NULL on a replay after the start
    return _BATCH_REFUSALS[outcome](headers=headers)


# ORDER_COALESCING=off's fast path, the seed's statement: an order without a key for a product
# without rules, when it fits, in one statement that holds the row lock the shortest time. The
# guarded UPDATE re-checks its WHERE on the latest row, so a rule set (or stock taken) meanwhile
# makes it place nothing. Anything it does not place, `place_order_batch()` decides.
PLACE_PLAIN_ORDER_SQL = f"""
WITH reserved AS (
    UPDATE products
    SET stock = stock - $2, version = version + 1, updated_at = now()
    WHERE id = $1 AND stock >= $2
      AND max_per_buyer IS NULL AND sale_starts_at IS NULL AND sale_ends_at IS NULL
    RETURNING id, price, stock
)
INSERT INTO orders (product_id, buyer_id, quantity, total_cents)
SELECT id, $3, $2, price * $2 FROM reserved
RETURNING {_ORDER_COLUMNS}, (SELECT stock FROM reserved) AS stock_left
"""


async def place_order(
    conn: Connection, *, request: OrderRequest, idempotency_ttl_s: int = 86400
) -> Placement:
    """One order: the fast path when it applies, otherwise a batch of one."""
    if request.idempotency_key is None:
        data = request.data
        row = await conn.fetchrow(
            PLACE_PLAIN_ORDER_SQL, data.product_id, data.quantity, data.buyer_id
        )
        if row is not None:
            return Placement([PlacedOrder(_order(row))], sold_out=row["stock_left"] == 0)
    return await place_order_batch(
        conn,
        product_id=request.data.product_id,
        requests=[request],
        idempotency_ttl_s=idempotency_ttl_s,
    )


@dataclass(frozen=True, slots=True)
class Cancellation:
    order: Order
    cancelled_now: bool  # False: it was cancelled before, and nothing changed


# The function's body: migrations/versions/2026_12_02_0005_shop_rules.py.
CANCEL_ORDER_SQL = "SELECT * FROM cancel_order($1)"


async def cancel_order(conn: Connection, *, order_id: UUID) -> Cancellation:
    """Cancel the order and put its units back in stock, once; a repeated (or concurrent)
    cancellation answers the same cancelled order."""
    row = await conn.fetchrow(CANCEL_ORDER_SQL, order_id)
    if row is None:
        raise OrderNotFound()
    return Cancellation(_order(row), row["cancelled_now"])


async def get_order(
    conn: Connection, *, order_id: UUID, owner: str | None = None
) -> OrderWithProduct:
    """The order; with `owner`, only if it is that buyer's (another's is not found)."""
    row = await conn.fetchrow(
        """
        SELECT o.id, o.product_id, o.buyer_id, o.quantity, o.status, o.total_cents,
               o.created_at, o.updated_at, o.cancelled_at,
               p.name AS product_name, p.stock AS product_stock, p.price AS product_price
        FROM orders o JOIN products p ON p.id = o.product_id
        WHERE o.id = $1 AND ($2::text IS NULL OR o.buyer_id = $2)
        """,
        order_id,
        owner,
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
    status: OrderStatus | None = None,
    owner: str | None = None,
) -> list[Order]:
    """Newest first; with `owner`, only that buyer's orders whatever the filters say. Filters
    become fixed SQL fragments with parameters, so each combination gets its own plan that can
    use its index."""
    if owner is not None:
        if buyer_id not in (None, owner):
            return []
        buyer_id = owner
    conditions: list[str] = []
    args: list[object] = []
    if buyer_id is not None:
        args.append(buyer_id)
        conditions.append(f"buyer_id = ${len(args)}")
    if product_id is not None:
        args.append(product_id)
        conditions.append(f"product_id = ${len(args)}")
    if status is not None:
        args.append(status)
        conditions.append(f"status = ${len(args)}")
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
