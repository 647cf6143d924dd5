"""The order path at production scale: no statement's cost grows with the orders table, whatever
its statistics say, and order ids are time-ordered."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from flashsale.orders import service
from flashsale.orders.schemas import OrderCreate
from flashsale.orders.service import OrderRequest
from tests.factories import confirmed_quantity, make_product, stock_of

GROWN_BY = 300_000
_TABLES = ("orders", "idempotency_keys")


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """One connection for the whole test: PL/pgSQL and prepared statements keep their plans per
    connection, so plans made while the tables were small stay in use after they grew."""
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


@pytest.fixture
async def never_analyzed(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """No autovacuum (hence no autoanalyze) on the growing tables during the test: the embedded
    PostgreSQL runs autovacuum, and a fresh ANALYZE would hide what stale statistics do."""
    for table in _TABLES:
        await pool.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    yield
    for table in _TABLES:
        await pool.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")


async def _analyzes(pool: asyncpg.Pool) -> int:
    return int(
        await pool.fetchval(
            "SELECT sum(analyze_count + autoanalyze_count) FROM pg_stat_user_tables "
            "WHERE relname = ANY($1)",
            _TABLES,
        )
    )


async def _seq_scans(conn: asyncpg.Connection, pool: asyncpg.Pool) -> dict[str, int]:
    """Sequential scans so far per table, including those of `conn` (its counters are flushed
    when it goes idle after this request)."""
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT 1")
    rows = await pool.fetch(
        "SELECT relname, seq_scan FROM pg_stat_user_tables WHERE relname = ANY($1)", _TABLES
    )
    return {row["relname"]: row["seq_scan"] for row in rows}


async def _place_every_way(conn: asyncpg.Connection, product_id: int, tag: str) -> int:
    """Every statement the service places orders with: a batch of new orders with and without
    keys, a batch of replays, a single order, a keyed single order and its replay. Returns the
    units sold."""

    def request(buyer: str, key: str | None = None) -> OrderRequest:
        return OrderRequest.of(OrderCreate(product_id=product_id, quantity=1, buyer_id=buyer), key)

    fresh = [request(f"{tag}-{i}") for i in range(4)]
    keyed = [request(f"{tag}-k{i}", f"{tag}-k{i}") for i in range(4)]
    batch = await service.place_order_batch(conn, product_id=product_id, requests=fresh + keyed)
    replays = await service.place_order_batch(conn, product_id=product_id, requests=keyed)
    single = await service.place_order(conn, request=request(f"{tag}-single"))
    keyed_single = request(f"{tag}-ks", f"{tag}-ks")
    first = await service.place_order(conn, request=keyed_single)
    replay = await service.place_order(conn, request=keyed_single)

    assert all(isinstance(o, service.PlacedOrder) for o in batch.outcomes + replays.outcomes)
    assert all(o.replayed for o in replays.outcomes if isinstance(o, service.PlacedOrder))
    assert isinstance(single.outcomes[0], service.PlacedOrder)
    (placed,), (replayed,) = first.outcomes, replay.outcomes
    assert isinstance(placed, service.PlacedOrder)
    assert isinstance(replayed, service.PlacedOrder)
    assert replayed.replayed
    assert replayed.order == placed.order
    return len(fresh) + len(keyed) + 2


@pytest.mark.usefixtures("never_analyzed")
async def test_placing_orders_never_scans_a_grown_table_that_was_never_analyzed(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    analyzes = await _analyzes(pool)
    product = await make_product(pool, stock=10**9)
    cold = await make_product(pool, stock=GROWN_BY)
    sold = 0
    for round_ in range(8):  # past the 5 custom plans: generic plans are made and kept now
        sold += await _place_every_way(conn, product["id"], f"small-{round_}")

    # The tables grow behind the connection's back, and nothing analyzes them.
    await pool.execute(
        "INSERT INTO orders (product_id, buyer_id, quantity, total_cents) "
        "SELECT $1, 'bulk-' || g, 1, 1000 FROM generate_series(1, $2) g",
        cold["id"],
        GROWN_BY,
    )
    await pool.execute("UPDATE products SET stock = 0 WHERE id = $1", cold["id"])
    await pool.execute(
        "INSERT INTO idempotency_keys (key, request_hash, order_id, expires_at) "
        "SELECT 'bulk-' || id, '\\x00', id, now() + interval '1 day' FROM orders "
        "WHERE product_id = $1",
        cold["id"],
    )

    before = await _seq_scans(conn, pool)
    for round_ in range(8):
        sold += await _place_every_way(conn, product["id"], f"grown-{round_}")
    after = await _seq_scans(conn, pool)

    assert after == before
    assert await _analyzes(pool) == analyzes  # the planner never learned that the tables grew
    assert await stock_of(pool, product["id"]) + await confirmed_quantity(pool, product["id"]) == (
        10**9
    )
    assert await confirmed_quantity(pool, product["id"]) == sold


async def test_order_ids_are_time_ordered_uuid7(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    product = await make_product(pool, stock=1000)
    ids: list[uuid.UUID] = []
    for round_ in range(3):
        requests = [
            OrderRequest.of(OrderCreate(product_id=product["id"], quantity=1, buyer_id="b"), None)
            for _ in range(3)
        ]
        batch = await service.place_order_batch(conn, product_id=product["id"], requests=requests)
        single = await service.place_order(conn, request=requests[0])
        for outcome in [*batch.outcomes, *single.outcomes]:
            assert isinstance(outcome, service.PlacedOrder), round_
            ids.append(outcome.order.id)
        await conn.execute("SELECT pg_sleep(0.002)")  # the next round is in a later millisecond

    assert all(order_id.version == 7 for order_id in ids)
    assert all(order_id.variant == uuid.RFC_4122 for order_id in ids)
    # The first 48 bits are the creation time in milliseconds: ids of later rounds sort later.
    millis = [order_id.int >> 80 for order_id in ids]
    assert millis == sorted(millis)
    assert millis[-1] > millis[0]
