"""Idempotency-Key on POST /orders: replay, conflicting reuse, in-flight duplicates, expiry."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import httpx
import pytest

from flashsale.bench.harness import LiveServer
from flashsale.orders.service import delete_expired_idempotency_keys
from tests.factories import make_product, stock_of
from tests.support import http_client, until_a_query_waits_on_a_lock


def _body(product_id: int, quantity: int = 1) -> dict[str, object]:
    return {"product_id": product_id, "quantity": quantity, "buyer_id": "buyer-1"}


async def test_same_key_and_body_replays_the_first_response(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10)
    headers = {"Idempotency-Key": "order-abc-1"}

    first = await client.post("/orders", json=_body(product["id"], 2), headers=headers)
    second = await client.post("/orders", json=_body(product["id"], 2), headers=headers)

    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await stock_of(pool, product["id"]) == 8
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1


async def test_same_key_with_a_different_body_is_422(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10)
    headers = {"Idempotency-Key": "order-abc-2"}
    await client.post("/orders", json=_body(product["id"], 1), headers=headers)

    reused = await client.post("/orders", json=_body(product["id"], 3), headers=headers)

    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert await stock_of(pool, product["id"]) == 9


@pytest.fixture(params=["coalescing", "single"])
def any_mode(
    request: pytest.FixtureRequest, server: LiveServer, single_order_server: LiveServer
) -> LiveServer:
    """The session's server (flash-sale mode), then a server with ORDER_COALESCING=off."""
    return server if request.param == "coalescing" else single_order_server


async def test_a_refusal_is_replayed_with_the_replay_header(
    any_mode: LiveServer, pool: asyncpg.Pool
) -> None:
    # The new user's repro: stock 0, refused; restocked; the same request is the stored 409.
    product = await make_product(pool, stock=0)
    headers = {"Idempotency-Key": f"k-oos-{any_mode.port}"}
    async with http_client(any_mode.url) as client:
        first = await client.post("/orders", json=_body(product["id"], 5), headers=headers)
        patched = await client.patch(
            f"/products/{product['id']}", json={"stock": 100}, headers={"If-Match": "1"}
        )
        again = await client.post("/orders", json=_body(product["id"], 5), headers=headers)

    assert patched.status_code == 200
    assert first.status_code == again.status_code == 409
    assert again.json() == first.json()
    assert first.json()["error"]["code"] == "OUT_OF_STOCK"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0
    assert await stock_of(pool, product["id"]) == 100


async def test_a_stored_404_is_replayed_with_the_replay_header(
    any_mode: LiveServer, pool: asyncpg.Pool
) -> None:
    headers = {"Idempotency-Key": f"k-404-{any_mode.port}"}
    async with http_client(any_mode.url) as client:
        first = await client.post("/orders", json=_body(1), headers=headers)
        await make_product(pool)  # product 1 exists now
        again = await client.post("/orders", json=_body(1), headers=headers)

    assert first.status_code == again.status_code == 404
    assert again.json() == first.json()
    assert first.json()["error"]["code"] == "PRODUCT_NOT_FOUND"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0


async def test_50_concurrent_identical_requests_make_one_order(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=100)
    headers = {"Idempotency-Key": "burst-key"}

    responses = await asyncio.gather(
        *(client.post("/orders", json=_body(product["id"]), headers=headers) for _ in range(50))
    )

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}
    assert statuses[201] >= 1
    order_ids = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(order_ids) == 1
    in_flight = [r.json()["error"]["code"] for r in responses if r.status_code == 409]
    assert set(in_flight) <= {"IDEMPOTENCY_KEY_IN_USE"}
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1
    assert await stock_of(pool, product["id"]) == 99


async def test_a_duplicate_while_the_first_is_in_flight_gets_409(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10)
    headers = {"Idempotency-Key": "slow-one"}
    async with pool.acquire() as blocker, blocker.transaction():
        # Hold the product's row lock so the first request stays in flight, deterministically.
        await blocker.execute("SELECT 1 FROM products WHERE id = $1 FOR UPDATE", product["id"])
        first = asyncio.create_task(
            client.post("/orders", json=_body(product["id"]), headers=headers)
        )
        await until_a_query_waits_on_a_lock(pool)
        duplicate = await client.post("/orders", json=_body(product["id"]), headers=headers)
    first_response = await first

    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "IDEMPOTENCY_KEY_IN_USE"
    assert first_response.status_code == 201


async def test_an_expired_key_can_be_used_again(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10)
    headers = {"Idempotency-Key": "old-key"}
    first = await client.post("/orders", json=_body(product["id"]), headers=headers)
    await pool.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")

    again = await client.post("/orders", json=_body(product["id"], 2), headers=headers)

    assert again.status_code == 201
    assert again.json()["id"] != first.json()["id"]
    assert await stock_of(pool, product["id"]) == 7


async def test_expired_keys_are_deleted_in_chunks_and_live_ones_kept(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "INSERT INTO idempotency_keys (key, request_hash, error_code, expires_at) "
        "SELECT 'old-' || n, 'x', 'OUT_OF_STOCK', now() - interval '1 second' "
        "FROM generate_series(1, 5) n"
    )
    await pool.execute(
        "INSERT INTO idempotency_keys (key, request_hash, error_code, expires_at) "
        "VALUES ('live', 'x', 'OUT_OF_STOCK', now() + interval '1 hour')"
    )
    async with pool.acquire() as conn:
        assert await delete_expired_idempotency_keys(conn, chunk=2) == 5
    assert await pool.fetchval("SELECT array_agg(key) FROM idempotency_keys") == ["live"]


async def test_malformed_idempotency_key_is_400(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool)
    for key in ("x" * 256, "has space", ""):  # an empty header is not "no key"
        response = await client.post(
            "/orders", json=_body(product["id"]), headers={"Idempotency-Key": key}
        )
        assert response.status_code == 400
        assert response.json()["error"]["details"] == [
            {"field": "Idempotency-Key", "message": "invalid"}
        ]
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0
