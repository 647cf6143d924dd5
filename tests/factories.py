"""Small factory functions that write straight to the database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg


async def make_product(
    pool: asyncpg.Pool,
    *,
    stock: int = 100,
    price: int = 1000,
    name: str = "Limited Edition",
    max_per_buyer: int | None = None,
) -> dict[str, Any]:
    row = await pool.fetchrow(
        "INSERT INTO products (name, price, stock, max_per_buyer) VALUES ($1, $2, $3, $4) "
        "RETURNING *",
        name,
        price,
        stock,
        max_per_buyer,
    )
    assert row is not None
    return dict(row)


async def stock_of(pool: asyncpg.Pool, product_id: int) -> int:
    stock = await pool.fetchval("SELECT stock FROM products WHERE id = $1", product_id)
    assert isinstance(stock, int)
    return stock


async def confirmed_quantity(pool: asyncpg.Pool, product_id: int) -> int:
    total = await pool.fetchval(
        "SELECT coalesce(sum(quantity), 0) FROM orders "
        "WHERE product_id = $1 AND status = 'CONFIRMED'",
        product_id,
    )
    return int(total)


@asynccontextmanager
async def row_locked(pool: asyncpg.Pool, product_id: int) -> AsyncIterator[None]:
    """Hold the product's row lock: every statement that places an order for it waits."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM products WHERE id = $1 FOR UPDATE", product_id)
        yield
