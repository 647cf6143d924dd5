"""SIGTERM: the server stops accepting, finishes in-flight requests, closes its pool, exits 0."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx

from tests.factories import make_product, stock_of
from tests.support import start_server, until_a_query_waits_on_a_lock


async def test_sigterm_finishes_the_in_flight_order_then_exits_cleanly(
    database_url: str, pool: asyncpg.Pool, logs_dir: Path
) -> None:
    product = await make_product(pool, stock=5)
    server = start_server(database_url, logs_dir)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        async with pool.acquire() as blocker, blocker.transaction():
            # The product's row lock keeps the order in flight until we release it.
            await blocker.execute("SELECT 1 FROM products WHERE id = $1 FOR UPDATE", product["id"])
            order = asyncio.create_task(
                client.post(
                    "/orders", json={"product_id": product["id"], "quantity": 1, "buyer_id": "b"}
                )
            )
            await until_a_query_waits_on_a_lock(pool)
            server.process.terminate()  # SIGTERM
            await asyncio.sleep(0.5)
            assert server.process.poll() is None, "exited with a request in flight"
        response = await order

    assert response.status_code == 201
    assert await asyncio.to_thread(server.process.wait, 30) == 0
    assert await stock_of(pool, product["id"]) == 4
    leftover = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
        f"flashsale:{server.process.pid}",
    )
    assert leftover == 0
