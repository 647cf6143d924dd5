from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Path, Query, status

from flashsale.deps import AdminOnly, Db
from flashsale.errors import (
    DatabaseTimeout,
    DatabaseUnavailable,
    InternalError,
    Unauthorized,
    ValidationFailed,
)
from flashsale.observability import metrics
from flashsale.orders import service
from flashsale.orders.schemas import (
    BuyerId,
    Order,
    OrderCreate,
    OrderList,
    OrderStatus,
    OrderWithProduct,
)
from flashsale.products.service import ProductNotFound
from flashsale.schemas import Limit, Offset, RowId
from flashsale.web.errors import documented

router = APIRouter(prefix="/orders", tags=["orders"])

OrderId = Annotated[UUID, Path(description="Order id (UUID)")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=documented(
        ValidationFailed,
        ProductNotFound,
        service.OutOfStock,
        service.SaleNotStarted,
        service.SaleEnded,
        service.PurchaseLimitExceeded,
        service.IdempotencyKeyInUse,
        service.IdempotencyKeyReused,
        DatabaseUnavailable,
        DatabaseTimeout,
        service.OrdersBusy,
        service.OrderBatchFailed,
    ),
    response_model=Order,
    summary="Buy: reserve stock and create a CONFIRMED order, atomically",
    description="Refused (409) outside the product's sale window (`SALE_NOT_STARTED` with "
    "`Retry-After`: whole seconds until the start; `SALE_ENDED`), when the stock left cannot "
    "cover the whole quantity (`OUT_OF_STOCK`), or when the buyer's CONFIRMED units plus this "
    "quantity would exceed `max_per_buyer` (`PURCHASE_LIMIT_EXCEEDED`), decided by the database "
    "in that order. With an `Idempotency-Key`, the same key and body replay the first answer, "
    "refusals included, with `Idempotent-Replayed: true`; an order's replay is its original "
    "201 response even after the order was cancelled (GET /orders/{order_id} shows it now).",
)
async def create_order(
    body: OrderCreate,
    idempotency_key: Annotated[
        str | None,
        Header(description="Retry-safe key: the same key and body replay the first response"),
    ] = None,
) -> Order:
    """Served by `PlaceOrderEndpoint` (orders/hot_path.py) before routing; this declaration
    is its OpenAPI description and is never called."""
    raise InternalError()


@router.get(
    "",
    responses=documented(ValidationFailed),
    summary="List orders, newest first",
)
async def list_orders(
    *,
    database: Db,
    limit: Annotated[Limit, Query()] = 20,
    offset: Annotated[Offset, Query()] = 0,
    buyer_id: Annotated[BuyerId | None, Query()] = None,
    product_id: Annotated[RowId | None, Query()] = None,
    status: Annotated[OrderStatus | None, Query()] = None,
) -> OrderList:
    async with database.connection() as conn:
        orders = await service.list_orders(
            conn,
            limit=limit,
            offset=offset,
            buyer_id=buyer_id,
            product_id=product_id,
            status=status,
        )
    return OrderList(orders=orders, limit=limit, offset=offset)


@router.get(
    "/{order_id}",
    responses=documented(ValidationFailed, service.OrderNotFound),
    summary="Get an order with its product",
)
async def get_order(order_id: OrderId, database: Db) -> OrderWithProduct:
    async with database.connection() as conn:
        return await service.get_order(conn, order_id=order_id)


@router.post(
    "/{order_id}/cancel",
    responses=documented(
        ValidationFailed, Unauthorized, service.OrderNotFound, DatabaseUnavailable, DatabaseTimeout
    ),
    dependencies=[AdminOnly],
    summary="Cancel an order: CANCELLED, and its units back in the product's stock",
    description="Idempotent: a repeated or concurrent cancellation answers 200 with the same "
    "cancelled order, and the units go back once. The units stop counting toward the buyer's "
    "`max_per_buyer`, and a sold-out product sells again at once.",
)
async def cancel_order(order_id: OrderId, database: Db) -> Order:
    async with database.connection() as conn:
        cancellation = await service.cancel_order(conn, order_id=order_id)
    if cancellation.cancelled_now:
        metrics.record_order_cancelled(cancellation.order.quantity)
    return cancellation.order
