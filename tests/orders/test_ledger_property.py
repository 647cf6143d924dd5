"""Property: whatever the sequence and interleaving of orders, stock + confirmed quantity is
constant: one transaction per order, and through flash-sale batches (with repeated keys); and
with cancellations, restocks and per-buyer limits racing them, no buyer passes the limit."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from uuid import UUID

import asyncpg
from hypothesis import HealthCheck, event, given, settings
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
    PurchaseLimitExceeded,
)
from tests.factories import make_product

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


# Operations racing on three products, each with or without a per-buyer limit:
#   ("order", product index, quantity, buyer index)
#   ("cancel", n): cancel the order of an earlier order operation (n modulo their number) once it
#                  is known, if it was granted; n repeats, so one order is cancelled concurrently
#   ("restock", product index, units)
#   ("limit", max_per_buyer or None): set or clear the last product's limit, as a PATCH does
#                  (the first two keep theirs: no buyer may ever pass it)
_order_operation = st.tuples(
    st.just("order"), st.integers(0, 2), st.integers(1, 4), st.integers(0, 2)
)
shop_operations = st.lists(
    st.one_of(
        _order_operation,
        _order_operation,
        st.tuples(st.just("cancel"), st.integers(0, 5)),
        st.tuples(st.just("restock"), st.integers(0, 2), st.integers(1, 5)),
        st.tuples(st.just("limit"), st.none() | st.integers(1, 6)),
    ),
    min_size=15,
    max_size=60,
)


async def _run_shop(
    database_url: str,
    initial: list[int],
    limits: list[int | None],
    operations: list[tuple[object, ...]],
    batch_max: int | None,
) -> None:
    """batch_max None: each order in its own statement; otherwise through a coalescer."""
    database = await Database.connect(Settings(), database_url, size=4)
    try:
        product_ids = [
            (await make_product(database.pool, stock=stock, max_per_buyer=limit))["id"]
            for stock, limit in zip(initial, limits, strict=True)
        ]
        coalescer = OrderCoalescer(
            database,
            batch_max=batch_max or 1,
            max_waiting_per_product=1000,
            max_total=1000,
            idempotency_ttl_s=3600,
        )
        orders: list[asyncio.Task[PlacedOrder | AppError]] = []
        restocked = [0, 0, 0]

        async def place(index: int, quantity: int, buyer: int) -> PlacedOrder | AppError:
            body = OrderCreate(
                product_id=product_ids[index], quantity=quantity, buyer_id=f"buyer-{buyer}"
            )
            request = OrderRequest.of(body, None)
            try:
                if batch_max is not None:
                    return await coalescer.place(request)
                async with database.connection() as conn:
                    (outcome,) = (await service.place_order(conn, request=request)).outcomes
                if isinstance(outcome, AppError):
                    raise outcome
                return outcome
            except AppError as error:
                return error

        async def cancel(target: int) -> UUID | None:
            outcome = await orders[target]
            if not isinstance(outcome, PlacedOrder):
                return None
            async with database.connection() as conn:
                cancellation = await service.cancel_order(conn, order_id=outcome.order.id)
            assert cancellation.order.status == "CANCELLED"
            return outcome.order.id if cancellation.cancelled_now else None

        async def restock(index: int, units: int) -> None:
            restocked[index] += units
            await database.pool.execute(
                "UPDATE products SET stock = stock + $2, version = version + 1 WHERE id = $1",
                product_ids[index],
                units,
            )

        async def set_limit(limit: int | None) -> None:
            await database.pool.execute(
                "UPDATE products SET max_per_buyer = $2, version = version + 1 WHERE id = $1",
                product_ids[-1],
                limit,
            )

        others: list[asyncio.Task[Any]] = []
        for operation in operations:
            match operation:
                case ("order", int(index), int(quantity), int(buyer)):
                    orders.append(asyncio.create_task(place(index, quantity, buyer)))
                case ("cancel", int(n)) if orders:
                    others.append(asyncio.create_task(cancel(n % len(orders))))
                case ("restock", int(index), int(units)):
                    others.append(asyncio.create_task(restock(index, units)))
                case ("limit", limit):
                    assert limit is None or isinstance(limit, int)
                    others.append(asyncio.create_task(set_limit(limit)))
        outcomes = await asyncio.gather(*orders)
        cancelled_now = [c for c in await asyncio.gather(*others) if isinstance(c, UUID)]

        assert all(
            isinstance(o, PlacedOrder | OutOfStock | PurchaseLimitExceeded) for o in outcomes
        ), outcomes
        granted = [o.order for o in outcomes if isinstance(o, PlacedOrder)]
        assert len(cancelled_now) == len(set(cancelled_now))  # each order's units returned once
        cancelled = set(cancelled_now)
        # What the examples exercised: pytest --hypothesis-show-statistics.
        refused = sum(isinstance(o, PurchaseLimitExceeded) for o in outcomes)
        event("limit refusals", str(min(3, refused)))
        event("cancelled", str(min(3, len(cancelled))))
        for index, product_id in enumerate(product_ids):
            product = await database.pool.fetchrow(
                "SELECT stock, max_per_buyer FROM products WHERE id = $1", product_id
            )
            held = await database.pool.fetch(
                "SELECT buyer_id, sum(quantity) AS units FROM orders "
                "WHERE product_id = $1 AND status = 'CONFIRMED' GROUP BY buyer_id",
                product_id,
            )
            confirmed = sum(row["units"] for row in held)
            mine = [o for o in granted if o.product_id == product_id]
            assert product is not None
            assert product["stock"] >= 0
            assert product["stock"] + confirmed == initial[index] + restocked[index]
            assert confirmed == sum(o.quantity for o in mine if o.id not in cancelled)
            # The limit's counters are exact where there is a limit, and absent elsewhere.
            counters = await database.pool.fetch(
                "SELECT buyer_id, units FROM buyer_holdings WHERE product_id = $1 AND units > 0",
                product_id,
            )
            expected = {row["buyer_id"]: row["units"] for row in held}
            assert {r["buyer_id"]: r["units"] for r in counters} == (
                expected if product["max_per_buyer"] is not None else {}
            )
            # Never more than the limit at any moment: what a buyer was granted over the run is
            # at most the limit plus what they gave back.
            limit = limits[index]
            if limit is not None and index < 2:
                for buyer_id in {o.buyer_id for o in mine}:
                    theirs = [o for o in mine if o.buyer_id == buyer_id]
                    returned = sum(o.quantity for o in theirs if o.id in cancelled)
                    assert sum(o.quantity for o in theirs) <= limit + returned
    finally:
        await database.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    initial=st.lists(st.integers(0, 40), min_size=3, max_size=3),
    limits=st.lists(st.none() | st.integers(1, 6), min_size=3, max_size=3),
    operations=shop_operations,
    batch_max=st.none() | st.integers(1, 8),
)
def test_the_ledger_holds_with_cancels_restocks_and_limits(
    database_url: str,
    initial: list[int],
    limits: list[int | None],
    operations: list[tuple[object, ...]],
    batch_max: int | None,
) -> None:
    asyncio.run(_run_shop(database_url, initial, limits, operations, batch_max))
