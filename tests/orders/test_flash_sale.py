"""Flash-sale mode end to end: crowds through live servers, several processes, the off switch."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import asyncpg
import httpx
import pytest

from flashsale.bench.harness import LiveServer
from tests.factories import confirmed_quantity, make_product, stock_of
from tests.support import http_client, post_all_at_once


async def test_mixed_crowd_with_repeated_keys_keeps_every_ledger(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    initial = {(await make_product(pool, stock=stock))["id"]: stock for stock in (30, 40, 80)}
    rng = random.Random(11)
    keyed_bodies = {
        f"key-{k}": {"product_id": rng.choice(list(initial)), "quantity": rng.randint(1, 5),
                     "buyer_id": f"kb{k}"}
        for k in range(40)
    }  # fmt: skip
    requests: list[tuple[httpx.AsyncClient, dict[str, object], dict[str, str]]] = []
    for i in range(500):
        if rng.random() < 0.3:
            key = rng.choice(list(keyed_bodies))
            requests.append((client, keyed_bodies[key], {"Idempotency-Key": key}))
        else:
            body = {"product_id": rng.choice(list(initial)), "quantity": rng.randint(1, 5)}
            requests.append((client, {**body, "buyer_id": f"b{i}"}, {}))

    responses = await post_all_at_once(requests)

    codes = Counter(
        r.json()["error"]["code"] if r.status_code != 201 else "CREATED" for r in responses
    )
    assert set(codes) <= {"CREATED", "OUT_OF_STOCK", "IDEMPOTENCY_KEY_IN_USE"}
    order_ids_by_key: dict[str, set[str]] = defaultdict(set)
    orders: dict[str, dict[str, object]] = {}
    for (_, _, headers), response in zip(requests, responses, strict=True):
        if response.status_code == 201:
            orders[response.json()["id"]] = response.json()
            if headers:
                order_ids_by_key[headers["Idempotency-Key"]].add(response.json()["id"])
    assert all(len(ids) == 1 for ids in order_ids_by_key.values())  # one order per key
    assert await pool.fetchval("SELECT count(*) FROM orders") == len(orders)
    granted = Counter[int]()
    for order in orders.values():
        granted[int(order["product_id"])] += int(order["quantity"])  # type: ignore[call-overload]
    for product_id, stock in initial.items():
        remaining = await stock_of(pool, product_id)
        assert remaining + granted[product_id] == stock
        assert await confirmed_quantity(pool, product_id) == granted[product_id]
        assert remaining < 5  # demand far exceeds supply


async def test_three_processes_on_one_product_never_oversell(
    server: LiveServer,
    coalescing_server: LiveServer,
    single_order_server: LiveServer,
    pool: asyncpg.Pool,
) -> None:
    """Two processes coalescing their own requests and one placing them one by one: the row
    lock arbitrates between their batches and single orders."""
    product = await make_product(pool, stock=100, price=700)
    async with (
        http_client(server.url, 300) as first,
        http_client(coalescing_server.url, 300) as second,
        http_client(single_order_server.url, 300) as third,
    ):
        clients = (first, second, third)
        body = {"product_id": product["id"], "quantity": 1}
        responses = await post_all_at_once(
            [(clients[i % 3], {**body, "buyer_id": f"b{i}"}, {}) for i in range(600)]
        )

    assert Counter(r.status_code for r in responses) == {201: 100, 409: 500}
    assert await stock_of(pool, product["id"]) == 0
    assert await pool.fetchval("SELECT sum(total_cents) FROM orders") == 100 * 700


async def test_with_coalescing_off_every_order_is_its_own_write(
    single_order_server: LiveServer, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=100)
    async with http_client(single_order_server.url, 300) as client:
        body = {"product_id": product["id"], "quantity": 1}
        responses = await post_all_at_once(
            [(client, {**body, "buyer_id": f"b{i}"}, {}) for i in range(300)]
        )

    assert Counter(r.status_code for r in responses) == {201: 100, 409: 200}
    # One transaction per order: the product row was written once per order.
    assert await pool.fetchval("SELECT version FROM products WHERE id = $1", product["id"]) == 101


@pytest.mark.usefixtures("orders_trap")
async def test_a_failed_batch_is_503_in_the_envelope_with_retry_after(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10)
    body = {"product_id": product["id"], "quantity": 1}

    failed = await client.post("/orders", json={**body, "buyer_id": "poison"})
    placed = await client.post("/orders", json={**body, "buyer_id": "fine"})

    assert failed.status_code == 503
    assert failed.headers["retry-after"] == "1"
    assert failed.json()["error"]["code"] == "ORDER_BATCH_FAILED"
    assert placed.status_code == 201
    assert await stock_of(pool, product["id"]) == 9
