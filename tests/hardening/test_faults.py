"""Faults: a slow statement, the database vanishing under load, SIGTERM under load.

In each case the service degrades with clear 503s (never a hang, never a 500), recovers by itself,
and the ledger holds: initial stock = current stock + confirmed quantities, no order lost or
duplicated.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from pathlib import Path

import asyncpg
import httpx

from flashsale import migrations
from tests.factories import confirmed_quantity, make_product, stock_of
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


async def test_database_outage_under_load_fails_fast_recovers_and_loses_nothing(
    tmp_path: Path, logs_dir: Path
) -> None:
    database = EmbeddedPostgres(tmp_path / "pgdata")
    migrations.upgrade(database.url)
    admin = await asyncpg.connect(database.url)
    product_id = await admin.fetchval(
        "INSERT INTO products (name, price, stock) VALUES ('outage', 100, 5000) RETURNING id"
    )
    await admin.close()
    keys = (f"outage-{i}" for i in itertools.count())
    confirmed: dict[str, str] = {}  # idempotency key -> order id
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()

    with running_server(database.url, logs_dir) as server:
        async with http_client(server.url) as client:

            async def buyer() -> None:
                while not stop.is_set():
                    key = next(keys)
                    while True:  # retry the same key until the outcome is known
                        try:
                            response = await client.post(
                                "/orders",
                                json={"product_id": product_id, "quantity": 1, "buyer_id": key},
                                headers={"Idempotency-Key": key},
                                timeout=10,  # a hang during the outage fails the test
                            )
                        except httpx.TransportError:
                            outcomes["transport_error"] += 1
                            await asyncio.sleep(0.05)
                            continue
                        outcomes[str(response.status_code)] += 1
                        if response.status_code == 201:
                            previous = confirmed.setdefault(key, response.json()["id"])
                            assert previous == response.json()["id"]
                            break
                        assert response.status_code in (503, 409), response.text
                        await asyncio.sleep(0.05)

            buyers = [asyncio.create_task(buyer()) for _ in range(16)]
            await asyncio.sleep(1.0)
            database.stop()
            await asyncio.sleep(0.5)
            down = await client.get("/health", timeout=10)
            during = await client.post(
                "/orders",
                json={"product_id": product_id, "quantity": 1, "buyer_id": "x"},
                timeout=10,
            )
            await asyncio.sleep(1.0)
            database.start()
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*buyers)
            up = await client.get("/health", timeout=10)

    assert down.status_code == 503
    assert during.status_code == 503
    assert during.json()["error"]["code"] == "DATABASE_UNAVAILABLE"
    assert up.status_code == 200
    assert outcomes["503"] > 0, outcomes
    assert not {k for k in outcomes if k.startswith("5") and k != "503"}, outcomes
    conn = await asyncpg.connect(database.url)
    try:
        rows = await conn.fetch(
            "SELECT buyer_id, id::text FROM orders WHERE product_id = $1", product_id
        )
        stock = await conn.fetchval("SELECT stock FROM products WHERE id = $1", product_id)
    finally:
        await conn.close()
    stored = {row["buyer_id"]: row["id"] for row in rows}
    assert len(stored) == len(rows), "an order was duplicated"
    assert stored == confirmed, "a confirmed order was lost, or an unconfirmed one stored"
    assert stock + len(rows) == 5000
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
