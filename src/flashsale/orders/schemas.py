from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from flashsale.schemas import Printable, RequestBody, RowId

# Bounds at the edge keep total_cents = price * quantity far from BIGINT overflow.
MAX_ORDER_QUANTITY = 10_000

BuyerId = Annotated[str, Field(min_length=1, max_length=128), Printable]
Quantity = Annotated[int, Field(ge=1, le=MAX_ORDER_QUANTITY)]
OrderStatus = Literal["CONFIRMED", "CANCELLED"]


class OrderCreate(RequestBody):
    product_id: RowId
    quantity: Quantity
    buyer_id: BuyerId


class VerifiedOrderCreate(RequestBody):
    """POST /orders's body with BUYER_AUTH=jwt: the buyer is the token's; `buyer_id`, if given,
    must name the same buyer."""

    product_id: RowId
    quantity: Quantity
    buyer_id: BuyerId | None = None


class Order(BaseModel):
    id: UUID
    product_id: int
    buyer_id: str
    quantity: int
    status: OrderStatus
    total_cents: int
    created_at: datetime
    updated_at: datetime
    cancelled_at: datetime | None = Field(description="When it was cancelled (null: it is not)")


class OrderProduct(BaseModel):
    id: int
    name: str
    stock: int
    price: int


class OrderWithProduct(Order):
    product: OrderProduct


class OrderList(BaseModel):
    orders: list[Order]
    limit: int
    offset: int
