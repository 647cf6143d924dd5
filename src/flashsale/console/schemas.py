from __future__ import annotations

from pydantic import BaseModel, Field

from flashsale.products.schemas import Product


class ProductSales(Product):
    units_sold: int = Field(description="Units in the product's CONFIRMED orders")


class ProductSalesList(BaseModel):
    products: list[ProductSales]
    limit: int
    offset: int
