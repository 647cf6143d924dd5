from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, model_validator

from flashsale.schemas import Printable, RequestBody

# Bounds keep price * quantity far inside BIGINT: 10^10 cents * 10^4 units = 10^14.
MAX_PRICE_CENTS = 10_000_000_000
MAX_STOCK = 1_000_000_000_000

ProductName = Annotated[str, Field(min_length=1, max_length=200), Printable]
PriceCents = Annotated[int, Field(ge=0, le=MAX_PRICE_CENTS, description="Unit price in cents")]
Stock = Annotated[int, Field(ge=0, le=MAX_STOCK)]


class ProductCreate(RequestBody):
    name: ProductName
    price: PriceCents
    stock: Stock


class ProductUpdate(RequestBody):
    """Partial update; requires `If-Match: <version>`."""

    name: ProductName | None = None
    price: PriceCents | None = None
    stock: Stock | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> ProductUpdate:
        if self.name is None and self.price is None and self.stock is None:
            raise ValueError("at least one of name, price, stock is required")
        return self


class Product(BaseModel):
    id: int
    name: str
    price: int = Field(description="Unit price in cents")
    stock: int
    version: int = Field(description="Optimistic-locking token; send it back in If-Match")
    created_at: datetime
    updated_at: datetime


class ProductList(BaseModel):
    products: list[Product]
    limit: int
    offset: int
