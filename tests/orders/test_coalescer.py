"""Flash-sale mode, in process against the real database, made deterministic.

The test holds the product's row lock, so the first order (a batch of one) stays in flight; the
next orders queue behind it in a known order (checked on the coalescer's waiting count); releasing
the lock lets them go as one batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from flashsale.config import Settings
from flashsale.db import Database
from flashsale.errors import AppError
from flashsale.orders.coalescer import OrderCoalescer
from flashsale.orders.schemas import OrderCreate
from flashsale.orders.service import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    OrderBatchFailed,
    OrderRequest,
    OrdersBusy,
    OutOfStock,
    PlacedOrder,
)
from tests.factories import make_product, row_locked, stock_of

Outcome = PlacedOrder | AppError


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = await Database.connect(Settings(), database_url, size=4)
    yield database
    await database.close()


def new_coalescer(database: Database, **bounds: int) -> tuple[OrderCoalescer, list[int]]:
    """A coalescer and the list of its batch sizes, in order."""
    sizes: list[int] = []
    settings = {"batch_max": 100, "max_waiting_per_product": 100, "max_total": 1000, **bounds}
    coalescer = OrderCoalescer(
        database,
        batch_max=settings["batch_max"],
        max_waiting_per_product=settings["max_waiting_per_product"],
        max_total=settings["max_total"],
        idempotency_ttl_s=3600,
        on_batch=sizes.append,
    )
    return coalescer, sizes


def place(
    coalescer: OrderCoalescer,
    product_id: int,
    quantity: int,
    *,
    buyer: str = "buyer",
    key: str | None = None,
) -> asyncio.Task[Outcome]:
    """Submit an order now (it joins its queue on the next turn of the loop); the task returns
    the order or the error it raised."""
    data = OrderCreate(product_id=product_id, quantity=quantity, buyer_id=buyer)
    return asyncio.create_task(_outcome(coalescer.place(OrderRequest.of(data, key))))


async def _outcome(placing: Awaitable[PlacedOrder]) -> Outcome:
    try:
        return await placing
    except AppError as error:
        return error


async def until_blocked(pool: asyncpg.Pool, wait_event: str = "transactionid") -> None:
    """Until a statement waits on a lock: a row lock ('transactionid') or 'advisory'."""
    for _ in range(400):
        if await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND wait_event = $1 AND datname = current_database()",
            wait_event,
        ):
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"no statement ever waited on a {wait_event} lock")


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the coalescer never got there")


async def until_waiting(coalescer: OrderCoalescer, product_id: int, count: int) -> None:
    await until(lambda: coalescer.waiting_for(product_id) == count)


def order_of(outcome: Outcome) -> PlacedOrder:
    assert isinstance(outcome, PlacedOrder), outcome
    return outcome


async def test_first_fit_in_arrival_order_inside_one_batch(
    database: Database, pool: asyncpg.Pool
) -> None:
    coalescer, sizes = new_coalescer(database)
    product = await make_product(pool, stock=5, price=100)
    async with row_locked(pool, product["id"]):
        too_big = place(coalescer, product["id"], 6)  # refused later; in flight meanwhile
        await until_blocked(pool)
        batch = [place(coalescer, product["id"], q, buyer=f"b{i}") for i, q in enumerate((3, 3, 2))]
        await until_waiting(coalescer, product["id"], 3)

    assert isinstance(await too_big, OutOfStock)
    first, second, third = [await task for task in batch]
    assert (order_of(first).order.quantity, order_of(first).order.total_cents) == (3, 300)
    assert isinstance(second, OutOfStock)
    assert (order_of(third).order.quantity, order_of(third).order.buyer_id) == (2, "b2")
    assert order_of(first).order.id != order_of(third).order.id
    assert sizes == [1, 3]
    assert await stock_of(pool, product["id"]) == 0
    rows = await pool.fetch("SELECT buyer_id, quantity FROM orders ORDER BY buyer_id")
    assert [tuple(row) for row in rows] == [("b0", 3), ("b2", 2)]
    # One write for the whole batch.
    assert await pool.fetchval("SELECT version FROM products WHERE id = $1", product["id"]) == 2


async def test_same_key_in_one_batch_makes_one_order(
    database: Database, pool: asyncpg.Pool
) -> None:
    coalescer, sizes = new_coalescer(database)
    product = await make_product(pool, stock=10)
    async with row_locked(pool, product["id"]):
        plug = place(coalescer, product["id"], 1)
        await until_blocked(pool)
        same = [place(coalescer, product["id"], 2, key="k-1") for _ in range(3)]
        different_body = place(coalescer, product["id"], 3, key="k-1")
        other = place(coalescer, product["id"], 1, buyer="other")
        await until_waiting(coalescer, product["id"], 5)

    order_of(await plug)
    first, *repeats = [order_of(await task) for task in same]
    assert not first.replayed
    assert all(r.replayed and r.order == first.order for r in repeats)
    # It went in the next batch, which found the first one's record.
    assert isinstance(await different_body, IdempotencyKeyReused)
    assert order_of(await other).order.buyer_id == "other"
    assert sizes == [1, 4, 1]
    assert await pool.fetchval("SELECT count(*) FROM orders") == 3
    assert await stock_of(pool, product["id"]) == 10 - 1 - 2 - 1
    stored = await pool.fetchrow("SELECT order_id, error_code FROM idempotency_keys")
    assert stored is not None
    assert tuple(stored) == (first.order.id, None)


async def test_a_key_whose_batch_is_in_flight_is_409_at_once(
    database: Database, pool: asyncpg.Pool
) -> None:
    coalescer, _ = new_coalescer(database)
    product = await make_product(pool, stock=10)
    elsewhere = await make_product(pool, stock=10)
    async with row_locked(pool, product["id"]):
        first = place(coalescer, product["id"], 1, key="k-2")
        await until_blocked(pool)

        # Answered while the row is still locked: neither waits for the first one's batch.
        duplicate = await place(coalescer, product["id"], 1, key="k-2")
        same_key_other_product = await place(coalescer, elsewhere["id"], 1, key="k-2")
        assert isinstance(duplicate, IdempotencyKeyInUse)
        assert isinstance(same_key_other_product, IdempotencyKeyInUse)

    assert not order_of(await first).replayed
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1


async def test_a_replay_and_a_stored_refusal_inside_a_batch(
    database: Database, pool: asyncpg.Pool
) -> None:
    coalescer, _ = new_coalescer(database)
    product = await make_product(pool, stock=3)
    earlier = order_of(await place(coalescer, product["id"], 1, key="k-ok"))
    assert isinstance(await place(coalescer, product["id"], 5, key="k-big"), OutOfStock)
    await pool.execute("UPDATE products SET stock = 100 WHERE id = $1", product["id"])
    async with row_locked(pool, product["id"]):
        plug = place(coalescer, product["id"], 1)
        await until_blocked(pool)
        replay = place(coalescer, product["id"], 1, key="k-ok")
        refusal = place(coalescer, product["id"], 5, key="k-big")
        reused = place(coalescer, product["id"], 2, key="k-ok")
        await until_waiting(coalescer, product["id"], 3)

    order_of(await plug)
    replayed = order_of(await replay)
    assert replayed.replayed
    assert replayed.order == earlier.order
    assert isinstance(await refusal, OutOfStock)
    assert isinstance(await reused, IdempotencyKeyReused)
    assert await stock_of(pool, product["id"]) == 99


@pytest.mark.usefixtures("orders_trap")
async def test_a_failing_batch_gives_every_member_503_and_writes_nothing(
    database: Database, pool: asyncpg.Pool
) -> None:
    coalescer, _ = new_coalescer(database)
    product = await make_product(pool, stock=10)
    async with row_locked(pool, product["id"]):
        plug = place(coalescer, product["id"], 1)
        await until_blocked(pool)
        batch = [
            place(coalescer, product["id"], 1, buyer="a", key="k-3"),
            place(coalescer, product["id"], 1, buyer="poison"),
            place(coalescer, product["id"], 1, buyer="c"),
        ]
        await until_waiting(coalescer, product["id"], 3)

    order_of(await plug)
    outcomes = [await task for task in batch]
    assert all(isinstance(o, OrderBatchFailed) and o.status_code == 503 for o in outcomes)
    assert len({id(o) for o in outcomes}) == 3  # each caller raises its own error
    assert await stock_of(pool, product["id"]) == 9
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1
    assert await pool.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    # Nothing was recorded under the key: the retry is a fresh order.
    retried = order_of(await place(coalescer, product["id"], 1, buyer="a", key="k-3"))
    assert not retried.replayed


async def test_over_the_bounds_orders_are_refused_with_orders_busy(
    database: Database, pool: asyncpg.Pool
) -> None:
    coalescer, _ = new_coalescer(database, max_waiting_per_product=2, max_total=4)
    hot = await make_product(pool, stock=100)
    other = await make_product(pool, stock=100)
    async with row_locked(pool, hot["id"]), row_locked(pool, other["id"]):
        held = [place(coalescer, hot["id"], 1)]
        await until_blocked(pool)
        held += [place(coalescer, hot["id"], 1) for _ in range(2)]
        await until_waiting(coalescer, hot["id"], 2)
        per_product = await place(coalescer, hot["id"], 1)
        held.append(place(coalescer, other["id"], 1))
        await until(lambda: coalescer.in_flight == 2)
        assert coalescer.waiting == 2
        in_total = await place(coalescer, other["id"], 1)

    assert isinstance(per_product, OrdersBusy)
    assert isinstance(in_total, OrdersBusy)
    assert (in_total.status_code, in_total.code) == (503, "ORDERS_BUSY")
    assert all(isinstance(o, PlacedOrder) for o in await asyncio.gather(*held))
    assert (coalescer.waiting, coalescer.in_flight) == (0, 0)
    assert order_of(await place(coalescer, hot["id"], 1))


async def test_a_waiting_order_whose_caller_is_cancelled_leaves_the_queue(
    database: Database, pool: asyncpg.Pool
) -> None:
    coalescer, sizes = new_coalescer(database)
    product = await make_product(pool, stock=10)
    async with row_locked(pool, product["id"]):
        plug = place(coalescer, product["id"], 1)
        await until_blocked(pool)
        a, gone, c = (place(coalescer, product["id"], 1, buyer=b) for b in ("a", "gone", "c"))
        await until_waiting(coalescer, product["id"], 3)
        gone.cancel()
        await until_waiting(coalescer, product["id"], 2)

    order_of(await plug)
    assert [order_of(await a).order.buyer_id, order_of(await c).order.buyer_id] == ["a", "c"]
    assert gone.cancelled()
    assert sizes == [1, 2]
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE buyer_id = 'gone'") == 0
    assert await stock_of(pool, product["id"]) == 7


@pytest.mark.usefixtures("orders_trap")
async def test_a_caller_cancelled_while_its_batch_is_in_flight_does_not_break_it(
    database: Database, pool: asyncpg.Pool
) -> None:
    coalescer, sizes = new_coalescer(database)
    product = await make_product(pool, stock=10)
    async with pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock(4242)")
        async with row_locked(pool, product["id"]):
            plug = place(coalescer, product["id"], 1)
            await until_blocked(pool)
            slow = place(coalescer, product["id"], 1, buyer="slow")
            gone = place(coalescer, product["id"], 1, buyer="gone")
            await until_waiting(coalescer, product["id"], 2)
        order_of(await plug)
        await until_blocked(pool, "advisory")  # the batch [slow, gone] is in flight
        gone.cancel()
        await holder.execute("SELECT pg_advisory_unlock(4242)")

    assert order_of(await slow).order.buyer_id == "slow"
    assert gone.cancelled()
    # The batch committed for everyone, the cancelled caller's order included.
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE buyer_id = 'gone'") == 1
    assert await stock_of(pool, product["id"]) == 7
    assert order_of(await place(coalescer, product["id"], 1))
    assert sizes == [1, 2, 1]


async def test_close_waits_for_the_batch_in_flight(database: Database, pool: asyncpg.Pool) -> None:
    coalescer, _ = new_coalescer(database)
    product = await make_product(pool, stock=10)
    async with row_locked(pool, product["id"]):
        in_flight = place(coalescer, product["id"], 1)
        await until_blocked(pool)
        closing = asyncio.create_task(coalescer.close())
        await asyncio.sleep(0.05)
        assert not closing.done()

    await closing
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1
    order_of(await in_flight)
