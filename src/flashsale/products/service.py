"""Products: create, read, list, and updates guarded by optimistic locking on `version`."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from flashsale.db import Connection
from flashsale.errors import AppError, NotFound, ValidationFailed
from flashsale.products.schemas import Product, ProductCreate, ProductUpdate


class ProductNotFound(NotFound):
    code = "PRODUCT_NOT_FOUND"
    message = "Product not found"
    refusal = "product_not_found"


class VersionConflict(AppError):
    status_code = 412
    code = "VERSION_CONFLICT"
    message = "The product was modified since you read it; fetch it again and retry"


class VersionRequired(AppError):
    status_code = 428
    code = "PRECONDITION_REQUIRED"
    message = "Updating a product requires an 'If-Match: <version>' header"


_COLUMNS = ", ".join(Product.model_fields)


async def create_product(conn: Connection, *, data: ProductCreate) -> Product:
    row = await conn.fetchrow(
        f"""
        INSERT INTO products (name, price, stock, max_per_buyer, sale_starts_at, sale_ends_at)
        VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}
        """,
        data.name,
        data.price,
        data.stock,
        data.max_per_buyer,
        data.sale_starts_at,
        data.sale_ends_at,
    )
    assert row is not None
    return Product(**row)


async def get_product(conn: Connection, *, product_id: int) -> Product:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM products WHERE id = $1", product_id)
    if row is None:
        raise ProductNotFound()
    return Product(**row)


async def list_products(conn: Connection, *, limit: int, offset: int) -> list[Product]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM products ORDER BY id LIMIT $1 OFFSET $2", limit, offset
    )
    return [Product(**row) for row in rows]


async def update_product(
    conn: Connection,
    *,
    product_id: int,
    expected_versions: Sequence[int] | None,
    changes: ProductUpdate,
) -> Product:
    """Apply `changes` only if the row's version is one of `expected_versions` (None: any, as
    `If-Match: *`); bump the version. Setting
    a limit where there was none counts the buyers' confirmed units (a trigger, migration 0005).
    """
    try:
        row = await conn.fetchrow(
            f"""
            UPDATE products
            SET name = coalesce($3, name),
                price = coalesce($4, price),
                stock = coalesce($5, stock),
                max_per_buyer = CASE WHEN $6 THEN $7::integer ELSE max_per_buyer END,
                sale_starts_at = CASE WHEN $8 THEN $9::timestamptz ELSE sale_starts_at END,
                sale_ends_at = CASE WHEN $10 THEN $11::timestamptz ELSE sale_ends_at END,
                version = version + 1,
                updated_at = now()
            WHERE id = $1 AND ($2::bigint[] IS NULL OR version = ANY($2::bigint[]))
            RETURNING {_COLUMNS}
            """,
            product_id,
            expected_versions,
            changes.name,
            changes.price,
            changes.stock,
            changes.sets("max_per_buyer"),
            changes.max_per_buyer,
            changes.sets("sale_starts_at"),
            changes.sale_starts_at,
            changes.sets("sale_ends_at"),
            changes.sale_ends_at,
        )
    except asyncpg.CheckViolationError as exc:
        # Only one end of the window was sent, and it crosses the stored other end.
        if exc.constraint_name == "ck_products_sale_window":
            raise ValidationFailed(
                "sale_ends_at must be after sale_starts_at",
                details=[{"field": "sale_ends_at", "message": "must be after sale_starts_at"}],
            ) from None
        raise
    if row is not None:
        return Product(**row)
    # Products are never deleted, so "exists now" means "existed then": no race here.
    if await conn.fetchval("SELECT 1 FROM products WHERE id = $1", product_id) is None:
        raise ProductNotFound()
    raise VersionConflict()
