"""Property: whatever the sequence and interleaving of orders, stock + confirmed quantity is
constant: one transaction per order, and through flash-sale batches (with repeated keys)."""

from __future__ import annotations

import asyncio
import uuid
from uuid import UUID

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashsale.config import Settings
from flashsale.db import Database
from flashsale.errors import AppError
from flashsale.orders import service
from flashsale.orders.coalescer import OrderCoalescer
from flashsale.orders.schemas import OrderCreate
from flashsale.orders.service import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    OrderRequest,
    OutOfStock,
    PlacedOrder,
)

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
                placement = await service.place_order(conn, request=OrderRequest.of(body, None))
            return not isinstance(placement.outcomes[0], AppError)

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


batched_orders_strategy = st.lists(
    # (product index, quantity, key index or None): keys repeat, sometimes with another body
    st.tuples(st.integers(0, 2), st.integers(1, 12), st.none() | st.integers(0, 5)),
    min_size=1,
    max_size=60,
)


async def _run_batched(
    database_url: str,
    initial: list[int],
    orders: list[tuple[int, int, int | None]],
    batch_max: int,
) -> None:
    database = await Database.connect(Settings(), database_url, size=4)
    try:
        product_ids = [
            await database.pool.fetchval(
                "INSERT INTO products (name, price, stock) VALUES ('p', 100, $1) RETURNING id",
                stock,
            )
            for stock in initial
        ]
        coalescer = OrderCoalescer(
            database,
            batch_max=batch_max,
            max_waiting_per_product=1000,
            max_total=1000,
            idempotency_ttl_s=3600,
        )
        run = uuid.uuid4().hex  # keys unique to this example

        async def place(index: int, quantity: int, key: int | None) -> PlacedOrder | AppError:
            body = OrderCreate(product_id=product_ids[index], quantity=quantity, buyer_id="prop")
            request = OrderRequest.of(body, None if key is None else f"{run}-{key}")
            try:
                return await coalescer.place(request)
            except AppError as error:
                return error

        outcomes = await asyncio.gather(*(place(*order) for order in orders))

        created = {o.order.id: o.order for o in outcomes if isinstance(o, PlacedOrder)}
        assert all(
            isinstance(o, PlacedOrder | OutOfStock | IdempotencyKeyInUse | IdempotencyKeyReused)
            for o in outcomes
        )
        ids_by_key: dict[int, set[UUID]] = {}
        for (_, _, key), outcome in zip(orders, outcomes, strict=True):
            if key is not None and isinstance(outcome, PlacedOrder):
                ids_by_key.setdefault(key, set()).add(outcome.order.id)
        assert all(len(ids) == 1 for ids in ids_by_key.values())  # one order per key
        for index, product_id in enumerate(product_ids):
            stock = await database.pool.fetchval(
                "SELECT stock FROM products WHERE id = $1", product_id
            )
            confirmed = await database.pool.fetchval(
                "SELECT coalesce(sum(quantity), 0) FROM orders WHERE product_id = $1", product_id
            )
            granted = sum(o.quantity for o in created.values() if o.product_id == product_id)
            assert stock >= 0
            assert stock + confirmed == initial[index]
            assert confirmed == granted
    finally:
        await database.close()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    initial=st.lists(st.integers(0, 30), min_size=3, max_size=3),
    orders=batched_orders_strategy,
    batch_max=st.integers(1, 8),
)
def test_stock_plus_confirmed_quantity_is_constant_through_batches(
    database_url: str,
    initial: list[int],
    orders: list[tuple[int, int, int | None]],
    batch_max: int,
) -> None:
    asyncio.run(_run_batched(database_url, initial, orders, batch_max))
