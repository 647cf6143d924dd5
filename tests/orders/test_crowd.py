"""Crowds of simultaneous buyers through a live server: never oversell, never lose an order."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import asyncpg
import httpx

from tests.factories import confirmed_quantity, make_product, stock_of


async def _post_orders(client: httpx.AsyncClient, bodies: list[dict[str, object]]) -> list[int]:
    start = asyncio.Event()

    async def one(body: dict[str, object]) -> int:
        await start.wait()  # release all requests at once
        return (await client.post("/orders", json=body)).status_code

    tasks = [asyncio.create_task(one(body)) for body in bodies]
    await asyncio.sleep(0)
    start.set()
    return await asyncio.gather(*tasks)


async def test_500_buyers_never_oversell_stock_of_100(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=100, price=2500)
    bodies = [
        {"product_id": product["id"], "quantity": 1, "buyer_id": f"buyer-{i}"} for i in range(500)
    ]

    statuses = Counter(await _post_orders(client, bodies))

    assert statuses == {201: 100, 409: 400}
    assert await stock_of(pool, product["id"]) == 0
    assert await pool.fetchval("SELECT count(*) FROM orders") == 100
    assert await pool.fetchval("SELECT sum(total_cents) FROM orders") == 100 * 2500


async def test_crowd_with_mixed_quantities_over_several_products_keeps_every_ledger(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    initial = {(await make_product(pool, stock=stock))["id"]: stock for stock in (37, 50, 101)}
    rng = random.Random(7)
    bodies: list[dict[str, object]] = [
        {
            "product_id": rng.choice(list(initial)),
            "quantity": rng.randint(1, 5),
            "buyer_id": f"b{i}",
        }
        for i in range(600)
    ]

    statuses = await _post_orders(client, bodies)

    assert set(statuses) <= {201, 409}
    granted = Counter[int]()
    for body, status in zip(bodies, statuses, strict=True):
        if status == 201:
            granted[int(body["product_id"])] += int(body["quantity"])  # type: ignore[call-overload]
    for product_id, stock in initial.items():
        remaining = await stock_of(pool, product_id)
        assert remaining >= 0
        assert remaining + granted[product_id] == stock
        assert await confirmed_quantity(pool, product_id) == granted[product_id]
        # Demand far exceeds supply: what is left is smaller than any refused order.
        assert remaining < 5
