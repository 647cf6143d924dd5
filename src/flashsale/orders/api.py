from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Path, Query, status

from flashsale.access.buyers import AuthUnavailable, Unauthenticated
from flashsale.access.control import (
    AccessRoute,
    BuyerMismatch,
    Forbidden,
    OperatorOnly,
    OrderLister,
    OrderReader,
    buyer_scheme,
    own_orders_only,
)
from flashsale.deps import Db
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

router = APIRouter(prefix="/orders", tags=["orders"], route_class=AccessRoute)

OrderId = Annotated[UUID, Path(description="Order id (UUID)")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=documented(
        ValidationFailed,
        Unauthenticated,
        BuyerMismatch,
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
        AuthUnavailable,
    ),
    dependencies=[Depends(buyer_scheme)],
    response_model=Order,
    summary="Buy: reserve stock and create a CONFIRMED order, atomically",
    description="Refused (409) outside the product's sale window (`SALE_NOT_STARTED` with "
    "`Retry-After`: whole seconds until the start; `SALE_ENDED`), when the stock left cannot "
    "cover the whole quantity (`OUT_OF_STOCK`), or when the buyer's CONFIRMED units plus this "
    "quantity would exceed `max_per_buyer` (`PURCHASE_LIMIT_EXCEEDED`), decided by the database "
    "in that order. With an `Idempotency-Key`, the same key and body replay the first answer, "
    "refusals included, with `Idempotent-Replayed: true`; an order's replay is its original "
    "201 response even after the order was cancelled (GET /orders/{order_id} shows it now). "
    "With BUYER_AUTH=jwt the buyer is the bearer token's `sub` (`buyer_id` may be left out; if "
    "given it must be the same, else 403 `BUYER_MISMATCH`), and an `Idempotency-Key` is the "
    "buyer's own: two buyers using one key get an order each.",
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
    responses=documented(ValidationFailed, Unauthorized, Unauthenticated, AuthUnavailable),
    summary="List orders, newest first",
    description="With a buyer token, only the buyer's own orders, whatever the filters say; "
    "an operator key (either role) lists everybody's. Without either: only on a server "
    "without operator keys, in BUYER_AUTH=none.",
)
async def list_orders(
    *,
    principal: OrderLister,
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
            owner=own_orders_only(principal),
        )
    return OrderList(orders=orders, limit=limit, offset=offset)


@router.get(
    "/{order_id}",
    responses=documented(
        ValidationFailed, Unauthorized, Unauthenticated, service.OrderNotFound, AuthUnavailable
    ),
    summary="Get an order with its product",
    description="A buyer token reads only the buyer's own orders (another's is 404, as if it "
    "did not exist); an operator key reads any. In BUYER_AUTH=none anyone may read an order "
    "by its id (unguessable); with BUYER_AUTH=jwt a token or a key is needed.",
)
async def get_order(order_id: OrderId, principal: OrderReader, database: Db) -> OrderWithProduct:
    async with database.connection() as conn:
        return await service.get_order(conn, order_id=order_id, owner=own_orders_only(principal))


@router.post(
    "/{order_id}/cancel",
    responses=documented(
        ValidationFailed,
        Unauthorized,
        Forbidden,
        service.OrderNotFound,
        DatabaseUnavailable,
        DatabaseTimeout,
    ),
    dependencies=[OperatorOnly],
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
