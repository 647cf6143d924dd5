from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, model_validator

from flashsale.schemas import Printable, RequestBody, Timestamp

# Bounds keep price * quantity far inside BIGINT: 10^10 cents * 10^4 units = 10^14.
MAX_PRICE_CENTS = 10_000_000_000
MAX_STOCK = 1_000_000_000_000

ProductName = Annotated[str, Field(min_length=1, max_length=200), Printable]
PriceCents = Annotated[int, Field(ge=0, le=MAX_PRICE_CENTS, description="Unit price in cents")]
Stock = Annotated[int, Field(ge=0, le=MAX_STOCK)]
MaxPerBuyer = Annotated[
    int,
    Field(
        ge=1,
        le=1_000_000,
        description="Units one buyer_id may hold across their CONFIRMED orders (null: no limit)",
    ),
]
SaleStartsAt = Annotated[
    Timestamp, Field(description="Orders are refused SALE_NOT_STARTED before this (null: open)")
]
SaleEndsAt = Annotated[
    Timestamp,
    Field(description="Orders are refused SALE_ENDED from this on; after sale_starts_at"),
]
# The rules a PATCH clears with null (the other fields ignore null).
CLEARABLE = ("max_per_buyer", "sale_starts_at", "sale_ends_at")


def _check_window(starts: datetime | None, ends: datetime | None) -> None:
    if starts is not None and ends is not None and ends <= starts:
        raise ValueError("sale_ends_at must be after sale_starts_at")


class ProductCreate(RequestBody):
    name: ProductName
    price: PriceCents
    stock: Stock
    max_per_buyer: MaxPerBuyer | None = None
    sale_starts_at: SaleStartsAt | None = None
    sale_ends_at: SaleEndsAt | None = None

    @model_validator(mode="after")
    def _window(self) -> ProductCreate:
        _check_window(self.sale_starts_at, self.sale_ends_at)
        return self


class ProductUpdate(RequestBody):
    """Partial update; requires `If-Match: <version>`. `null` clears a sale rule."""

    name: ProductName | None = None
    price: PriceCents | None = None
    stock: Stock | None = None
    max_per_buyer: MaxPerBuyer | None = None
    sale_starts_at: SaleStartsAt | None = None
    sale_ends_at: SaleEndsAt | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> ProductUpdate:
        if not any(
            name in CLEARABLE or getattr(self, name) is not None for name in self.model_fields_set
        ):
            raise ValueError(
                f"at least one of name, price, stock, {', '.join(CLEARABLE)} is required"
            )
        _check_window(self.sale_starts_at, self.sale_ends_at)
        return self

    def sets(self, name: str) -> bool:
        """Whether this update changes the field (for a sale rule, null clears it)."""
        return name in self.model_fields_set


class Product(BaseModel):
    id: int
    name: str
    price: int = Field(description="Unit price in cents")
    stock: int
    version: int = Field(description="Optimistic-locking token; send it back in If-Match")
    max_per_buyer: int | None
    sale_starts_at: datetime | None
    sale_ends_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ProductList(BaseModel):
    products: list[Product]
    limit: int
    offset: int
