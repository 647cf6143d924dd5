from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Path, Query, status

from flashsale.deps import Db
from flashsale.errors import InternalError, documented
from flashsale.orders import service
from flashsale.orders.schemas import BuyerId, Order, OrderCreate, OrderList, OrderWithProduct
from flashsale.schemas import Limit, Offset, RowId

router = APIRouter(prefix="/orders", tags=["orders"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        400: documented("Invalid body or Idempotency-Key (VALIDATION_ERROR)"),
        404: documented("Product not found (PRODUCT_NOT_FOUND)"),
        409: documented("OUT_OF_STOCK, or IDEMPOTENCY_KEY_IN_USE while the first request runs"),
        422: documented("Idempotency-Key reused with a different body (IDEMPOTENCY_KEY_REUSED)"),
        503: documented(
            "DATABASE_UNAVAILABLE, DATABASE_TIMEOUT, ORDERS_BUSY (too many orders waiting) or "
            "ORDER_BATCH_FAILED (nothing recorded); retry after Retry-After"
        ),
    },
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
    responses={400: documented("Invalid paging or filter parameters")},
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
    responses={400: documented("Malformed order id"), 404: documented("Order not found")},
    summary="Get an order with its product",
)
async def get_order(
    order_id: Annotated[UUID, Path(description="Order id (UUID)")], database: Db
) -> OrderWithProduct:
    async with database.connection() as conn:
        return await service.get_order(conn, order_id=order_id)
