"""Shop rules through live servers: per-buyer limits under crowds, sale windows on the database's
clock, cancellations that return their units once, in both placement modes."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import Counter
from datetime import datetime, timedelta

import asyncpg
import httpx
import pytest

from flashsale.bench.harness import LiveServer
from tests.factories import confirmed_quantity, make_product, stock_of
from tests.observability.scraping import scrape
from tests.support import http_client, post_all_at_once

MODES = ["coalescing", "single-order", "two-processes"]


@pytest.fixture(params=MODES)
def servers(
    request: pytest.FixtureRequest,
    server: LiveServer,
    coalescing_server: LiveServer,
    single_order_server: LiveServer,
) -> list[LiveServer]:
    return {
        "coalescing": [server],
        "single-order": [single_order_server],
        "two-processes": [server, coalescing_server],
    }[request.param]


@pytest.fixture(params=["coalescing", "single-order"])
def one_server(
    request: pytest.FixtureRequest, server: LiveServer, single_order_server: LiveServer
) -> LiveServer:
    """Each placement mode in one process."""
    return server if request.param == "coalescing" else single_order_server


async def _db_now(pool: asyncpg.Pool) -> datetime:
    now = await pool.fetchval("SELECT now()")
    assert isinstance(now, datetime)
    return now


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_a_crowd_of_buyers_gets_exactly_the_limit(
    servers: list[LiveServer], pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10_000, max_per_buyer=2)
    clients = [http_client(live.url, 300) for live in servers]
    try:
        responses = await post_all_at_once(
            [
                (
                    clients[(buyer + attempt) % len(clients)],
                    {"product_id": product["id"], "quantity": 1, "buyer_id": f"buyer-{buyer}"},
                    {},
                )
                for buyer in range(30)
                for attempt in range(10)
            ]
        )
    finally:
        for client in clients:
            await client.aclose()

    assert Counter(r.status_code for r in responses) == {201: 60, 409: 240}
    refusals = {r.json()["error"]["code"] for r in responses if r.status_code == 409}
    assert refusals == {"PURCHASE_LIMIT_EXCEEDED"}
    held = await pool.fetch(
        "SELECT buyer_id, sum(quantity) AS units FROM orders "
        "WHERE product_id = $1 AND status = 'CONFIRMED' GROUP BY buyer_id",
        product["id"],
    )
    assert {row["buyer_id"]: row["units"] for row in held} == {f"buyer-{b}": 2 for b in range(30)}
    counters = await pool.fetch(
        "SELECT buyer_id, units FROM buyer_holdings WHERE product_id = $1", product["id"]
    )
    assert {row["buyer_id"]: row["units"] for row in counters} == {
        f"buyer-{b}": 2 for b in range(30)
    }
    assert await stock_of(pool, product["id"]) == 10_000 - 60


async def test_a_batch_counts_earlier_members_against_later_ones_in_arrival_order(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """One buyer's 3, 2, then 1 units against a limit of 4 (3 held after the first): the 2 is
    refused, the 1 still fits; first fit, per buyer, as with stock."""
    product = await make_product(pool, stock=100, max_per_buyer=4)
    body = {"product_id": product["id"], "buyer_id": "one"}

    statuses = [
        (await client.post("/orders", json={**body, "quantity": quantity})).status_code
        for quantity in (3, 2, 1, 1)
    ]
    over = await client.post("/orders", json={**body, "quantity": 5})

    assert statuses == [201, 409, 201, 409]
    assert over.json()["error"]["code"] == "PURCHASE_LIMIT_EXCEEDED"  # above the limit alone
    assert await confirmed_quantity(pool, product["id"]) == 4


async def test_a_sale_window_opens_and_closes_on_the_database_clock(
    one_server: LiveServer, pool: asyncpg.Pool
) -> None:
    live = one_server
    starts = await _db_now(pool) + timedelta(seconds=3)
    ends = starts + timedelta(seconds=3)
    async with http_client(live.url) as client:
        created = await client.post(
            "/products",
            json={"name": "drop", "price": 100, "stock": 1000,
                  "sale_starts_at": _rfc3339(starts), "sale_ends_at": _rfc3339(ends)},
        )  # fmt: skip
        assert created.status_code == 201
        product_id = created.json()["id"]
        body = {"product_id": product_id, "quantity": 1, "buyer_id": "early"}

        early = await client.post("/orders", json=body)
        assert early.status_code == 409
        assert early.json()["error"]["code"] == "SALE_NOT_STARTED"
        until_start = (starts - await _db_now(pool)).total_seconds()
        assert 1 <= int(early.headers["retry-after"]) <= math.ceil(until_start) + 1

        seen: list[str] = []
        while not seen or seen[-1] != "SALE_ENDED":
            response = await client.post("/orders", json=body)
            seen.append(
                "CREATED" if response.status_code == 201 else response.json()["error"]["code"]
            )
            await asyncio.sleep(0.05)
        late = [await client.post("/orders", json=body) for _ in range(3)]

    # Refused before, sold during, refused from the end on: never out of order.
    phases = [code for index, code in enumerate(seen) if index == 0 or seen[index - 1] != code]
    assert phases == ["SALE_NOT_STARTED", "CREATED", "SALE_ENDED"]
    assert [r.json()["error"]["code"] for r in late] == ["SALE_ENDED"] * 3
    assert all("retry-after" not in r.headers for r in late)
    created_at = await pool.fetch("SELECT created_at FROM orders WHERE product_id = $1", product_id)
    assert len(created_at) == seen.count("CREATED") > 0
    assert all(starts <= row["created_at"] < ends for row in created_at)


async def test_concurrent_cancels_return_the_units_once(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10, max_per_buyer=5)
    placed = await client.post(
        "/orders", json={"product_id": product["id"], "quantity": 3, "buyer_id": "b"}
    )
    order_id = placed.json()["id"]
    version = await pool.fetchval("SELECT version FROM products WHERE id = $1", product["id"])
    before = await scrape(client)

    start = asyncio.Event()

    async def cancel() -> httpx.Response:
        await start.wait()
        return await client.post(f"/orders/{order_id}/cancel")

    tasks = [asyncio.create_task(cancel()) for _ in range(40)]
    await asyncio.sleep(0)
    start.set()
    responses = await asyncio.gather(*tasks)
    after = await scrape(client)

    assert {r.status_code for r in responses} == {200}
    bodies = [r.json() for r in responses]
    assert all(body == bodies[0] for body in bodies)
    assert bodies[0]["status"] == "CANCELLED"
    assert bodies[0]["cancelled_at"] is not None
    assert bodies[0]["id"] == order_id
    assert await stock_of(pool, product["id"]) == 10
    assert (
        await pool.fetchval("SELECT version FROM products WHERE id = $1", product["id"])
        == version + 1
    )
    assert (
        await pool.fetchval(
            "SELECT units FROM buyer_holdings WHERE product_id = $1 AND buyer_id = 'b'",
            product["id"],
        )
        == 0
    )
    assert (
        after.value("flashsale_orders_cancelled_total")
        - before.value("flashsale_orders_cancelled_total")
        == 1
    )
    assert (
        after.value("flashsale_order_units_returned_total")
        - before.value("flashsale_order_units_returned_total")
        == 3
    )
    fetched = (await client.get(f"/orders/{order_id}")).json()
    assert (fetched["status"], fetched["cancelled_at"]) == ("CANCELLED", bodies[0]["cancelled_at"])


async def test_a_cancelled_order_stops_counting_toward_the_limit(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=100, max_per_buyer=2)
    body = {"product_id": product["id"], "quantity": 2, "buyer_id": "b"}
    first = await client.post("/orders", json=body)
    refused = await client.post("/orders", json=body)

    await client.post(f"/orders/{first.json()['id']}/cancel")
    again = await client.post("/orders", json=body)

    assert (first.status_code, refused.status_code, again.status_code) == (201, 409, 201)
    assert await confirmed_quantity(pool, product["id"]) == 2


async def test_cancel_of_an_unknown_or_malformed_order(client: httpx.AsyncClient) -> None:
    unknown = await client.post(f"/orders/{uuid.uuid4()}/cancel")
    malformed = await client.post("/orders/not-a-uuid/cancel")

    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "ORDER_NOT_FOUND"
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_orders_are_listed_by_status(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    product = await make_product(pool, stock=10)
    ids = [
        (await client.post(
            "/orders", json={"product_id": product["id"], "quantity": 1, "buyer_id": "b"}
        )).json()["id"]
        for _ in range(3)
    ]  # fmt: skip
    await client.post(f"/orders/{ids[1]}/cancel")

    cancelled = (await client.get("/orders", params={"status": "CANCELLED"})).json()["orders"]
    confirmed = (await client.get("/orders", params={"status": "CONFIRMED"})).json()["orders"]
    bogus = await client.get("/orders", params={"status": "SHIPPED"})

    assert [o["id"] for o in cancelled] == [ids[1]]
    assert {o["id"] for o in confirmed} == {ids[0], ids[2]}
    assert bogus.status_code == 400


async def test_a_replay_after_a_cancel_is_the_original_response(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10)
    body = {"product_id": product["id"], "quantity": 2, "buyer_id": "b"}
    headers = {"Idempotency-Key": "buy-then-cancel"}
    first = await client.post("/orders", json=body, headers=headers)
    await client.post(f"/orders/{first.json()['id']}/cancel")

    replay = await client.post("/orders", json=body, headers=headers)

    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert await stock_of(pool, product["id"]) == 10


async def test_refusals_under_a_key_replay_with_the_replay_header(
    one_server: LiveServer, pool: asyncpg.Pool
) -> None:
    live = one_server
    limited = await make_product(pool, stock=10, max_per_buyer=1)
    starts = await _db_now(pool) + timedelta(hours=1)
    async with http_client(live.url) as client:
        later = (await client.post(
            "/products",
            json={"name": "later", "price": 1, "stock": 5, "sale_starts_at": _rfc3339(starts)},
        )).json()  # fmt: skip
        cases = [
            (
                {"product_id": limited["id"], "quantity": 2, "buyer_id": "b"},
                "PURCHASE_LIMIT_EXCEEDED",
            ),
            ({"product_id": later["id"], "quantity": 1, "buyer_id": "b"}, "SALE_NOT_STARTED"),
        ]
        for index, (body, code) in enumerate(cases):
            headers = {"Idempotency-Key": f"{live.port}-refused-{index}"}
            first = await client.post("/orders", json=body, headers=headers)
            replay = await client.post("/orders", json=body, headers=headers)

            assert first.json()["error"]["code"] == replay.json()["error"]["code"] == code
            assert "idempotent-replayed" not in first.headers
            assert replay.headers["idempotent-replayed"] == "true"
        assert 3500 <= int(replay.headers["retry-after"]) <= 3601
