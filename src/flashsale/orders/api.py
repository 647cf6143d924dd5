from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Path, Query, status

from flashsale.deps import Db
from flashsale.errors import DatabaseTimeout, DatabaseUnavailable, InternalError, ValidationFailed
from flashsale.orders import service
from flashsale.orders.schemas import BuyerId, Order, OrderCreate, OrderList, OrderWithProduct
from flashsale.products.service import ProductNotFound
from flashsale.schemas import Limit, Offset, RowId
from flashsale.web.errors import documented

router = APIRouter(prefix="/orders", tags=["orders"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=documented(
        ValidationFailed,
        ProductNotFound,
        service.OutOfStock,
        service.IdempotencyKeyInUse,
        service.IdempotencyKeyReused,
        DatabaseUnavailable,
        DatabaseTimeout,
        service.OrdersBusy,
        service.OrderBatchFailed,
    ),
    response_model=Order,
    summary="Buy: reserve stock and create a CONFIRMED order, atomically",
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
    database: Db,
    limit: Annotated[Limit, Query()] = 20,
    offset: Annotated[Offset, Query()] = 0,
    buyer_id: Annotated[BuyerId | None, Query()] = None,
    product_id: Annotated[RowId | None, Query()] = None,
) -> OrderList:
    async with database.connection() as conn:
        orders = await service.list_orders(
            conn, limit=limit, offset=offset, buyer_id=buyer_id, product_id=product_id
        )
    return OrderList(orders=orders, limit=limit, offset=offset)


@router.get(
    "/{order_id}",
    responses=documented(ValidationFailed, service.OrderNotFound),
    summary="Get an order with its product",
)
async def get_order(
    order_id: Annotated[UUID, Path(description="Order id (UUID)")], database: Db
) -> OrderWithProduct:
    async with database.connection() as conn:
        return await service.get_order(conn, order_id=order_id)
