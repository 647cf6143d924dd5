"""The sold-out fast path: late buyers refused from memory, restocks seen at once everywhere.

A refusal that comes from memory is told apart from one the database gave by holding the
product's row lock: every statement that places an order waits for it, so a 409 that arrives
while it is held did not touch the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from flashsale.bench.harness import LiveServer
from flashsale.orders.schemas import OrderCreate
from flashsale.orders.service import OrderRequest, OutOfStock, buyer_scoped_key
from flashsale.orders.sold_out import SoldOut, listener_name
from tests.factories import confirmed_quantity, make_product, row_locked, stock_of
from tests.support import eventually, http_client, running_server

# Far longer than any test waits: a buyer served after a restock proves the notification
# arrived, not that the mark expired.
MARK_TRUSTED_S = "60"


@pytest.fixture(scope="module")
def servers(database_url: str, logs_dir: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two server processes on one database: one in flash-sale mode, one placing each order in
    its own statement."""
    with (
        running_server(database_url, logs_dir, SOLD_OUT_CACHE_S=MARK_TRUSTED_S) as batching,
        running_server(
            database_url, logs_dir, SOLD_OUT_CACHE_S=MARK_TRUSTED_S, ORDER_COALESCING="off"
        ) as direct,
    ):
        yield batching, direct


@pytest.fixture
async def clients(
    servers: tuple[LiveServer, LiveServer],
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with http_client(servers[0].url) as first, http_client(servers[1].url) as second:
        yield first, second


async def _order(client: httpx.AsyncClient, product_id: int, **headers: str) -> int:
    response = await client.post(
        "/orders",
        json={"product_id": product_id, "quantity": 1, "buyer_id": "late"},
        headers=headers,
        timeout=10,
    )
    if response.status_code == 409:
        assert response.json() == {
            "error": {"code": "OUT_OF_STOCK", "message": "Insufficient stock"}
        }
    return response.status_code


async def _sells_again(client: httpx.AsyncClient, product_id: int, what: str) -> None:
    """Order until `client`'s process stops refusing from memory: the stock increase's
    notification takes a moment to cross; well within the mark's trust it must be there."""
    statuses: list[int] = []

    async def ordered() -> bool:
        statuses.append(await _order(client, product_id))
        return statuses[-1] != 409

    await eventually(ordered, what, limit_s=10)
    assert statuses[-1] == 201


async def _sell_out_everywhere(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], pool: asyncpg.Pool
) -> int:
    """A product of stock 2, one unit bought through each process, and each process told by
    the database that it is gone."""
    product = await make_product(pool, stock=2)
    for client in clients:
        # Ids restart with every test: a process may still remember the previous test's
        # sold-out product 1 until the new product's notification has reached it.
        await _sells_again(client, product["id"], "the new product sells")
    for client in clients:
        assert await _order(client, product["id"]) == 409
    return int(product["id"])


async def test_late_buyers_of_a_sold_out_product_are_refused_without_the_database(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], pool: asyncpg.Pool
) -> None:
    product_id = await _sell_out_everywhere(clients, pool)

    async with row_locked(pool, product_id):
        statuses = await asyncio.gather(
            *(_order(client, product_id) for client in clients for _ in range(50))
        )

    assert statuses == [409] * 100
    assert await stock_of(pool, product_id) == 0
    assert await confirmed_quantity(pool, product_id) == 2


async def test_keyed_orders_for_a_sold_out_product_still_go_to_the_database(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], pool: asyncpg.Pool
) -> None:
    product_id = await _sell_out_everywhere(clients, pool)

    for index, client in enumerate(clients):
        assert await _order(client, product_id, **{"Idempotency-Key": f"late-{index}"}) == 409

    stored = await pool.fetch("SELECT key, error_code FROM idempotency_keys ORDER BY key")
    assert [(row["key"], row["error_code"]) for row in stored] == [
        (buyer_scoped_key("late", "late-0"), "OUT_OF_STOCK"),
        (buyer_scoped_key("late", "late-1"), "OUT_OF_STOCK"),
    ]


async def test_a_restock_through_one_process_reaches_the_other_at_once(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], pool: asyncpg.Pool
) -> None:
    product_id = await _sell_out_everywhere(clients, pool)
    version = await pool.fetchval("SELECT version FROM products WHERE id = $1", product_id)

    restocked = await clients[0].patch(
        f"/products/{product_id}", json={"stock": 3}, headers={"If-Match": f'"{version}"'}
    )
    assert restocked.status_code == 200

    await _sells_again(clients[1], product_id, "the restock reached the other process")
    assert await _order(clients[0], product_id) == 201
    assert await _order(clients[0], product_id) == 201
    assert await _order(clients[1], product_id) == 409  # the database's answer: stock is 0 again
    assert await stock_of(pool, product_id) == 0
    assert await confirmed_quantity(pool, product_id) == 5


async def test_a_cancellation_through_one_process_reaches_the_other_at_once(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], pool: asyncpg.Pool
) -> None:
    product_id = await _sell_out_everywhere(clients, pool)
    order_id = await pool.fetchval(
        "SELECT id FROM orders WHERE product_id = $1 LIMIT 1", product_id
    )

    cancelled = await clients[0].post(f"/orders/{order_id}/cancel")
    assert cancelled.status_code == 200

    await _sells_again(clients[1], product_id, "the cancellation reached the other process")
    assert await _order(clients[0], product_id) == 409  # the database's answer: sold out again
    assert await stock_of(pool, product_id) == 0
    assert await confirmed_quantity(pool, product_id) == 2


def _request(product_id: int, key: str | None = None) -> OrderRequest:
    return OrderRequest.of(OrderCreate(product_id=product_id, quantity=1, buyer_id="b"), key)


async def _listening(sold_out: SoldOut) -> None:
    for _ in range(500):
        if sold_out.listening_now:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the listener never started")


async def test_a_mark_is_trusted_only_for_its_bound(database_url: str) -> None:
    sold_out = SoldOut(max_age_s=0.2)
    async with sold_out.listening(database_url):
        await _listening(sold_out)
        sold_out.record(7, True, epoch=sold_out.epoch)

        with pytest.raises(OutOfStock):
            sold_out.check(_request(7))
        sold_out.check(_request(7, key="k"))  # keyed requests always go to the database
        await asyncio.sleep(0.25)
        sold_out.check(_request(7))  # expired: the next buyer asks the database again


async def test_an_answer_sent_before_a_restock_does_not_mark_the_product(database_url: str) -> None:
    sold_out = SoldOut(max_age_s=60)
    async with sold_out.listening(database_url):
        await _listening(sold_out)
        sent_at = sold_out.epoch
        sold_out.forget(7)  # a restock's notification arrives while the answer is on its way
        sold_out.record(7, True, epoch=sent_at)
        sold_out.record(8, False, epoch=sold_out.epoch)  # stock left: not sold out

        sold_out.check(_request(7))
        sold_out.check(_request(8))


async def test_nothing_is_remembered_while_restocks_cannot_be_heard() -> None:
    sold_out = SoldOut(max_age_s=60)  # never listening

    sold_out.record(7, True, epoch=sold_out.epoch)

    sold_out.check(_request(7))


async def test_a_lost_listener_forgets_everything_until_it_listens_again(
    database_url: str, pool: asyncpg.Pool
) -> None:
    sold_out = SoldOut(max_age_s=60)
    async with sold_out.listening(database_url):
        await _listening(sold_out)
        sold_out.record(7, True, epoch=sold_out.epoch)

        await pool.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            listener_name(),
        )
        for _ in range(500):
            if not sold_out.listening_now:
                break
            await asyncio.sleep(0.01)
        sold_out.check(_request(7))  # forgotten: restocks could have been missed
        sold_out.record(7, True, epoch=sold_out.epoch)
        sold_out.check(_request(7))  # and nothing is remembered while deaf

        await _listening(sold_out)  # back, after its reconnect delay
        sold_out.record(7, True, epoch=sold_out.epoch)
        with pytest.raises(OutOfStock):
            sold_out.check(_request(7))
