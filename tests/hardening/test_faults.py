"""Faults: a slow statement, the database vanishing under load, SIGTERM under load.

In each case the service degrades with clear 503s (never a hang, never a 500), recovers by itself,
and the ledger holds: initial stock = current stock + confirmed quantities, no order lost or
duplicated.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from pathlib import Path

import asyncpg
import httpx

from flashsale import migrations
from tests.factories import confirmed_quantity, make_product, stock_of
from tests.observability.scraping import SampleKey, Scrape
from tests.support import EmbeddedPostgres, http_client, running_server, start_server


async def test_a_slow_statement_times_out_with_503_and_does_not_pin_the_pool(
    database_url: str, pool: asyncpg.Pool, logs_dir: Path
) -> None:
    product = await make_product(pool, stock=10)
    body = {"product_id": product["id"], "quantity": 1, "buyer_id": "b"}
    env = {"DB_STATEMENT_TIMEOUT_MS": "300", "DB_POOL_SIZE": "2"}
    with running_server(database_url, logs_dir, **env) as server:
        async with http_client(server.url) as client:
            async with pool.acquire() as blocker, blocker.transaction():
                await blocker.execute(
                    "SELECT 1 FROM products WHERE id = $1 FOR UPDATE", product["id"]
                )
                stuck = await asyncio.gather(*(client.post("/orders", json=body) for _ in range(6)))
            after = await client.post("/orders", json=body)

    assert [r.status_code for r in stuck] == [503] * 6
    assert {r.json()["error"]["code"] for r in stuck} == {"DATABASE_TIMEOUT"}
    assert all(r.headers["retry-after"] == "1" for r in stuck)
    assert after.status_code == 201
    assert await stock_of(pool, product["id"]) == 9


async def test_database_outage_under_mixed_load_fails_fast_recovers_and_loses_nothing(
    tmp_path: Path, logs_dir: Path
) -> None:
    """Keyed buyers retry one key until its outcome is known; plain buyers do not retry. One
    product sells out during the run. The database goes away for ~1.5 s and comes back."""
    database = EmbeddedPostgres(tmp_path / "pgdata")
    migrations.upgrade(database.url)
    initial = {"big": 3000, "bigger": 5000, "scarce": 40}
    admin = await asyncpg.connect(database.url)
    product_ids = {
        name: await admin.fetchval(
            "INSERT INTO products (name, price, stock) VALUES ($1, 100, $2) RETURNING id",
            name,
            stock,
        )
        for name, stock in initial.items()
    }
    await admin.close()
    rng = random.Random(11)
    numbers = itertools.count()
    keyed: dict[str, str] = {}  # idempotency key -> the order id its 201 carried
    plain: set[str] = set()  # order ids of unkeyed 201s
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()

    def order_body(buyer_id: str) -> dict[str, object]:
        product = product_ids[rng.choice(list(initial))]
        return {"product_id": product, "quantity": rng.randint(1, 3), "buyer_id": buyer_id}

    with running_server(database.url, logs_dir) as server:
        async with http_client(server.url) as client:

            async def post(
                body: dict[str, object], headers: dict[str, str]
            ) -> httpx.Response | None:
                try:
                    # A hang during the outage fails the test (no request may wait > 10 s).
                    response = await client.post("/orders", json=body, headers=headers, timeout=10)
                except httpx.TransportError:
                    return None
                statuses[response.status_code] += 1
                assert response.status_code in (201, 409, 503), response.text
                return response

            async def keyed_buyer() -> None:
                while not stop.is_set():
                    key = f"key-{next(numbers)}"
                    body = order_body(key)
                    while True:  # the same key and body until the outcome is known
                        response = await post(body, {"Idempotency-Key": key})
                        if response is not None and response.status_code == 201:
                            assert (
                                keyed.setdefault(key, response.json()["id"])
                                == response.json()["id"]
                            )
                            break
                        if (
                            response is not None
                            and response.json()["error"]["code"] == "OUT_OF_STOCK"
                        ):
                            break
                        await asyncio.sleep(0.05)

            async def plain_buyer() -> None:
                while not stop.is_set():
                    response = await post(order_body(f"plain-{next(numbers)}"), {})
                    if response is not None and response.status_code == 201:
                        plain.add(response.json()["id"])
                    await asyncio.sleep(0.01)

            buyers = [asyncio.create_task(keyed_buyer()) for _ in range(8)]
            buyers += [asyncio.create_task(plain_buyer()) for _ in range(8)]
            await asyncio.sleep(1.0)
            database.stop()
            await asyncio.sleep(0.5)
            down = await client.get("/health", timeout=10)
            during = await client.post("/orders", json=order_body("x"), timeout=10)
            scraped_down = Scrape((await client.get("/metrics", timeout=10)).text)
            await asyncio.sleep(1.0)
            database.start()
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*buyers)
            up = await client.get("/health", timeout=10)
            scraped_up = Scrape((await client.get("/metrics", timeout=10)).text)

    assert (down.status_code, during.status_code, up.status_code) == (503, 503, 200)
    database_up: SampleKey = ("flashsale_database_up", frozenset())
    assert (scraped_down.samples[database_up], scraped_up.samples[database_up]) == (0, 1)
    assert during.json()["error"]["code"] == "DATABASE_UNAVAILABLE"
    assert min(statuses[503], statuses[201], statuses[409]) > 0, statuses
    conn = await asyncpg.connect(database.url)
    try:
        orders = await conn.fetch("SELECT id::text, buyer_id, product_id, quantity FROM orders")
        stocks = {
            r["name"]: r["stock"] for r in await conn.fetch("SELECT name, stock FROM products")
        }
    finally:
        await conn.close()
    stored_keyed = {o["buyer_id"]: o["id"] for o in orders if o["buyer_id"].startswith("key-")}
    assert len(stored_keyed) == sum(o["buyer_id"].startswith("key-") for o in orders)  # one each
    assert stored_keyed == keyed, "a keyed order was lost, duplicated or stored unconfirmed"
    assert plain <= {o["id"] for o in orders}, "a confirmed order was lost"
    for name, product_id in product_ids.items():  # the ledger, for every product
        sold = sum(o["quantity"] for o in orders if o["product_id"] == product_id)
        assert stocks[name] >= 0
        assert stocks[name] + sold == initial[name], name
    database.stop()


async def test_sigterm_under_load_completes_in_flight_requests_without_5xx(
    database_url: str, pool: asyncpg.Pool, logs_dir: Path
) -> None:
    product = await make_product(pool, stock=1_000_000)
    server = start_server(database_url, logs_dir)
    statuses: Counter[int] = Counter()
    refused = 0
    created = 0
    terminated = asyncio.Event()
    enough_orders = asyncio.Event()

    async with http_client(server.url, connections=64) as client:

        async def buyer(n: int) -> None:
            nonlocal refused, created
            for i in itertools.count():
                body = {"product_id": product["id"], "quantity": 1, "buyer_id": f"t{n}-{i}"}
                try:
                    response = await client.post("/orders", json=body)
                except httpx.TransportError:
                    assert terminated.is_set(), "a request failed before the shutdown began"
                    refused += 1
                    return
                statuses[response.status_code] += 1
                created += response.status_code == 201
                if created >= 500:
                    enough_orders.set()

        buyers = [asyncio.create_task(buyer(n)) for n in range(64)]
        await enough_orders.wait()
        terminated.set()
        server.process.terminate()  # SIGTERM
        await asyncio.gather(*buyers)

    assert await asyncio.to_thread(server.process.wait, 30) == 0
    assert set(statuses) == {201}, statuses
    assert await confirmed_quantity(pool, product["id"]) == statuses[201]
    assert await stock_of(pool, product["id"]) == 1_000_000 - statuses[201]
    assert refused == 64  # every buyer ended on a refused connection, none on an error response
