"""The console's own read: a page of products with the units their confirmed orders hold."""

from __future__ import annotations

from flashsale.console.schemas import ProductSales
from flashsale.db import Connection
from flashsale.products.schemas import Product

_COLUMNS = ", ".join(f"p.{name}" for name in Product.model_fields)


async def list_product_sales(conn: Connection, *, limit: int, offset: int) -> list[ProductSales]:
    """One statement for the whole page: the lateral sum runs once per product of the page, on
    the (product_id, created_at) index, instead of one query per row."""
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS}, coalesce(sold.units, 0) AS units_sold
        FROM (SELECT * FROM products ORDER BY id LIMIT $1 OFFSET $2) AS p
        LEFT JOIN LATERAL (
            SELECT sum(o.quantity) AS units
            FROM orders AS o
            WHERE o.product_id = p.id AND o.status = 'CONFIRMED'
        ) AS sold ON true
        ORDER BY p.id
        """,
        limit,
        offset,
    )
    return [ProductSales(**row) for row in rows]
