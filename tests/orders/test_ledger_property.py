"""Property: whatever the sequence and interleaving of orders, stock + confirmed quantity is constant."""

from __future__ import annotations

import asyncio

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashsale.errors import AppError
from flashsale.orders import service
from flashsale.orders.schemas import OrderCreate

orders_strategy = st.lists(
    st.tuples(st.integers(0, 2), st.integers(1, 12)),  # (product index, quantity)
    min_size=1,
    max_size=40,
)


async def _run(
    database_url: str, initial: list[int], orders: list[tuple[int, int]], lanes: int
) -> None:
    async with asyncpg.create_pool(database_url, min_size=lanes, max_size=lanes) as pool:
        product_ids = [
            await pool.fetchval(
                "INSERT INTO products (name, price, stock) VALUES ('p', 100, $1) RETURNING id",
                stock,
            )
            for stock in initial
        ]

        async def place(index: int, quantity: int) -> bool:
            body = OrderCreate(product_id=product_ids[index], quantity=quantity, buyer_id="prop")
            async with pool.acquire() as conn:
                try:
                    await service.place_order(conn, data=body)
                except AppError:
                    return False
                return True

        results = await asyncio.gather(*(place(i, q) for i, q in orders))

        for index, product_id in enumerate(product_ids):
            stock = await pool.fetchval("SELECT stock FROM products WHERE id = $1", product_id)
            confirmed = await pool.fetchval(
                "SELECT coalesce(sum(quantity), 0) FROM orders WHERE product_id = $1", product_id
            )
            granted = sum(
                q for (i, q), ok in zip(orders, results, strict=True) if ok and i == index
            )
            assert stock >= 0
            assert stock + confirmed == initial[index]
            assert confirmed == granted


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    initial=st.lists(st.integers(0, 30), min_size=3, max_size=3),
    orders=orders_strategy,
    lanes=st.integers(1, 8),
)
def test_stock_plus_confirmed_quantity_is_constant(
    database_url: str, initial: list[int], orders: list[tuple[int, int]], lanes: int
) -> None:
    asyncio.run(_run(database_url, initial, orders, lanes))
