"""Migrations: upgrade from empty, downgrade to base, upgrade again."""

from __future__ import annotations

import asyncpg
import pytest
from alembic.script import ScriptDirectory

from flashsale import migrations
from flashsale.bench.harness import create_database, drop_database
from flashsale.orders.service import buyer_scoped_key

EXPECTED_TABLES = {
    "products", "orders", "idempotency_keys", "buyer_holdings", "transactions", "settlements",
    "settlement_jobs",
    "procrastinate_jobs", "procrastinate_events", "procrastinate_periodic_defers",
    "procrastinate_workers",
}  # fmt: skip


def _head(url: str) -> str | None:
    return ScriptDirectory.from_config(migrations.alembic_config(url)).get_current_head()


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
    finally:
        await conn.close()
    return {row["tablename"] for row in rows}


async def test_upgrade_downgrade_upgrade(admin_url: str) -> None:
    url = await create_database(admin_url, prefix="flashsale_migrations")
    try:
        migrations.upgrade(url)
        assert await _tables(url) >= EXPECTED_TABLES

        migrations.downgrade(url, "base")
        assert await _tables(url) == set()

        migrations.upgrade(url)
        assert await _tables(url) >= EXPECTED_TABLES
    finally:
        await drop_database(admin_url, url)


async def test_schema_constraints_hold_even_without_the_api(admin_url: str) -> None:
    url = await create_database(admin_url, prefix="flashsale_constraints")
    try:
        migrations.upgrade(url)
        conn = await asyncpg.connect(url)
        try:
            product_id = await conn.fetchval(
                "INSERT INTO products (name, price, stock) VALUES ('p', 1, 1) RETURNING id"
            )
            for statement in (
                f"UPDATE products SET stock = -1 WHERE id = {product_id}",
                f"INSERT INTO orders (product_id, buyer_id, quantity, total_cents) VALUES ({product_id}, 'b', 0, 0)",
                "INSERT INTO orders (product_id, buyer_id, quantity, total_cents) VALUES (999, 'b', 1, 1)",
            ):
                try:
                    await conn.execute(statement)
                except asyncpg.IntegrityConstraintViolationError:
                    continue
                raise AssertionError(f"accepted: {statement}")
        finally:
            await conn.close()
    finally:
        await drop_database(admin_url, url)


async def test_a_database_stamped_with_a_renamed_revision_id_upgrades(admin_url: str) -> None:
    """Revision 0002 was once called `0002_place_order_batch`: a database left there upgrades."""
    url = await create_database(admin_url, prefix="flashsale_renamed")
    try:
        migrations.upgrade(url, "0002")
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("UPDATE alembic_version SET version_num = '0002_place_order_batch'")
            migrations.upgrade(url)
            assert await conn.fetchval("SELECT version_num FROM alembic_version") == _head(url)
        finally:
            await conn.close()
        assert await _tables(url) >= EXPECTED_TABLES
    finally:
        await drop_database(admin_url, url)


async def test_transactions_stored_before_external_ids_get_one_and_stay_valid(
    admin_url: str,
) -> None:
    url = await create_database(admin_url, prefix="flashsale_external_ids")
    try:
        migrations.upgrade(url, "0006")
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "INSERT INTO transactions (merchant_id, amount_cents, fee_cents, status, paid_at) "
                "SELECT 'merchant_' || i, 1000, 59, 'COMPLETED', now() "
                "FROM generate_series(1, 3) AS i"
            )
            migrations.upgrade(url)
            stored = await conn.fetch("SELECT id, external_id FROM transactions ORDER BY id")
            assert [row["external_id"] for row in stored] == [
                f"legacy-{row['id']}" for row in stored
            ]
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(
                    "INSERT INTO transactions (external_id, merchant_id, amount_cents, "
                    "fee_cents, status, paid_at) VALUES ('legacy-1', 'm', 1, 0, 'PENDING', now())"
                )
            for bad in ("'has space', 'm', 1, 0", "'x', 'm', 1, 2", "'y', E'm\\u200b', 1, 0"):
                with pytest.raises(asyncpg.CheckViolationError):
                    await conn.execute(
                        "INSERT INTO transactions (external_id, merchant_id, amount_cents, "
                        f"fee_cents, status, paid_at) VALUES ({bad}, 'PENDING', now())"
                    )
        finally:
            await conn.close()
    finally:
        await drop_database(admin_url, url)


async def test_stored_idempotency_keys_become_their_buyers_and_back(admin_url: str) -> None:
    url = await create_database(admin_url, prefix="flashsale_scoped_keys")
    try:
        migrations.upgrade(url, "0007")
        conn = await asyncpg.connect(url)
        try:
            product_id = await conn.fetchval(
                "INSERT INTO products (name, price, stock) VALUES ('p', 1, 9) RETURNING id"
            )
            order_id = await conn.fetchval(
                "INSERT INTO orders (product_id, buyer_id, quantity, total_cents) "
                "VALUES ($1, 'alice', 1, 1) RETURNING id",
                product_id,
            )
            await conn.execute(
                "INSERT INTO idempotency_keys (key, request_hash, order_id, error_code, expires_at)"
                " VALUES ('cart-1', 'h', $1, NULL, now() + interval '1 day'),"
                " ('cart-2', 'h', NULL, 'OUT_OF_STOCK', now() + interval '1 day')",
                order_id,
            )

            migrations.upgrade(url, "0008")
            upgraded = await conn.fetch("SELECT key, order_id FROM idempotency_keys")
            assert [(row["key"], row["order_id"]) for row in upgraded] == [
                (buyer_scoped_key("alice", "cart-1"), order_id)
            ]

            # Two buyers' keys that are one unscoped key: the newer survives a downgrade.
            await conn.execute(
                "INSERT INTO idempotency_keys (key, request_hash, error_code, expires_at, "
                "created_at) VALUES ($1, 'h', 'OUT_OF_STOCK', now(), now() + interval '1 s')",
                buyer_scoped_key("bob", "cart-1"),
            )
            migrations.downgrade(url, "0007")
            downgraded = await conn.fetch("SELECT key, error_code FROM idempotency_keys")
            assert [(row["key"], row["error_code"]) for row in downgraded] == [
                ("cart-1", "OUT_OF_STOCK")
            ]
        finally:
            await conn.close()
    finally:
        await drop_database(admin_url, url)
