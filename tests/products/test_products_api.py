"""Products: creation, reads with ETag, listing, and optimistic locking on PATCH."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from tests.factories import make_product


async def test_create_then_get_with_etag(client: httpx.AsyncClient) -> None:
    created = await client.post("/products", json={"name": "Sneaker", "price": 12_999, "stock": 50})

    assert created.status_code == 201
    product = created.json()
    assert set(product) == {"id", "name", "price", "stock", "version", "created_at", "updated_at"}
    assert (product["name"], product["price"], product["stock"], product["version"]) == (
        "Sneaker", 12_999, 50, 1,
    )  # fmt: skip
    assert created.headers["location"] == f"/products/{product['id']}"

    fetched = await client.get(f"/products/{product['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == product
    assert fetched.headers["etag"] == '"1"'


async def test_list_products_pages_by_id(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    ids = [(await make_product(pool, name=f"p{i}"))["id"] for i in range(3)]

    page = (await client.get("/products", params={"limit": 2, "offset": 1})).json()

    assert [p["id"] for p in page["products"]] == ids[1:]
    assert (page["limit"], page["offset"]) == (2, 1)


async def test_patch_with_current_version_updates_and_bumps_version(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=5, price=100)

    response = await client.patch(
        f"/products/{product['id']}", json={"stock": 500, "price": 90}, headers={"If-Match": '"1"'}
    )

    assert response.status_code == 200
    assert (response.json()["stock"], response.json()["price"]) == (500, 90)
    assert response.json()["version"] == 2
    assert response.headers["etag"] == '"2"'


async def test_patch_with_stale_version_is_412(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=5)
    await client.patch(f"/products/{product['id']}", json={"name": "A"}, headers={"If-Match": "1"})

    stale = await client.patch(
        f"/products/{product['id']}", json={"name": "B"}, headers={"If-Match": "1"}
    )

    assert stale.status_code == 412
    assert stale.json()["error"]["code"] == "VERSION_CONFLICT"
    assert await pool.fetchval("SELECT name FROM products WHERE id = $1", product["id"]) == "A"


async def test_an_order_changes_the_version_so_a_stale_patch_cannot_overwrite_stock(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=5)
    await client.post("/orders", json={"product_id": product["id"], "quantity": 2, "buyer_id": "b"})

    stale = await client.patch(
        f"/products/{product['id']}", json={"stock": 5}, headers={"If-Match": "1"}
    )

    assert stale.status_code == 412
    assert await pool.fetchval("SELECT stock FROM products WHERE id = $1", product["id"]) == 3


async def test_concurrent_patches_with_one_version_let_exactly_one_win(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=5)

    responses = await asyncio.gather(
        *(
            client.patch(f"/products/{product['id']}", json={"stock": i}, headers={"If-Match": "1"})
            for i in range(20)
        )
    )

    assert sorted(r.status_code for r in responses) == [200] + [412] * 19


async def test_patch_without_if_match_is_428(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    product = await make_product(pool)

    response = await client.patch(f"/products/{product['id']}", json={"stock": 1})

    assert response.status_code == 428
    assert response.json()["error"]["code"] == "PRECONDITION_REQUIRED"


async def test_patch_unknown_product_is_404(client: httpx.AsyncClient) -> None:
    response = await client.patch("/products/777", json={"stock": 1}, headers={"If-Match": "1"})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "PRODUCT_NOT_FOUND"


@pytest.mark.parametrize("if_match", ["abc", '"1', "*", "99999999999999999999"])
async def test_malformed_if_match_is_400(
    client: httpx.AsyncClient, pool: asyncpg.Pool, if_match: str
) -> None:
    product = await make_product(pool)

    response = await client.patch(
        f"/products/{product['id']}", json={"stock": 1}, headers={"If-Match": if_match}
    )

    assert response.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        {"name": "", "price": 1, "stock": 1},
        {"name": "x" * 201, "price": 1, "stock": 1},
        {"name": "ok", "price": -1, "stock": 1},
        {"name": "ok", "price": 10**11, "stock": 1},
        {"name": "ok", "price": 1, "stock": -1},
        {"name": "ok", "price": 1, "stock": 10**13},
        {"name": "ok", "price": "1", "stock": 1},
        {"name": "ok", "price": 1},
        {"name": "ok", "price": 1, "stock": 1, "version": 3},
    ],
)
async def test_invalid_product_body_is_400(
    client: httpx.AsyncClient, body: dict[str, object]
) -> None:
    response = await client.post("/products", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_empty_patch_is_400(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    product = await make_product(pool)

    response = await client.patch(f"/products/{product['id']}", json={}, headers={"If-Match": "1"})

    assert response.status_code == 400


@pytest.mark.parametrize("path", ["/products/abc", "/products/0", "/products/99999999999999999999"])
async def test_malformed_product_id_is_400(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"
