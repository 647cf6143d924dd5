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
    assert set(product) == {
        "id", "name", "price", "stock", "version", "created_at", "updated_at",
        "max_per_buyer", "sale_starts_at", "sale_ends_at",
    }  # fmt: skip
    assert (product["max_per_buyer"], product["sale_starts_at"], product["sale_ends_at"]) == (
        None, None, None,
    )  # fmt: skip
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


@pytest.mark.parametrize("if_match", ["abc", '"1', "* , *", "99999999999999999999", '"1",'])
async def test_malformed_if_match_is_400(
    client: httpx.AsyncClient, pool: asyncpg.Pool, if_match: str
) -> None:
    product = await make_product(pool)

    response = await client.patch(
        f"/products/{product['id']}", json={"stock": 1}, headers={"If-Match": if_match}
    )

    assert response.status_code == 400


@pytest.mark.parametrize(
    ("if_match", "status"),
    [("*", 200), ('"7", "1"', 200), ('W/"1"', 412), ('"2", W/"1"', 412), ("1", 200)],
)
async def test_if_match_takes_a_star_or_a_list_with_strong_comparison(
    client: httpx.AsyncClient, pool: asyncpg.Pool, if_match: str, status: int
) -> None:
    product = await make_product(pool)

    response = await client.patch(
        f"/products/{product['id']}", json={"stock": 1}, headers={"If-Match": if_match}
    )

    assert response.status_code == status, response.text
    stock = await pool.fetchval("SELECT stock FROM products WHERE id = $1", product["id"])
    assert stock == (1 if status == 200 else 100)


@pytest.mark.parametrize(
    ("if_none_match", "status"),
    [('"1"', 304), ('W/"1"', 304), ('"3", "1"', 304), ("*", 304), ('"2"', 200), ("junk", 200)],
)
async def test_get_with_if_none_match_is_304_when_an_etag_is_current(
    client: httpx.AsyncClient, pool: asyncpg.Pool, if_none_match: str, status: int
) -> None:
    product = await make_product(pool)

    response = await client.get(
        f"/products/{product['id']}", headers={"If-None-Match": if_none_match}
    )

    assert response.status_code == status
    assert response.headers["etag"] == '"1"'
    if status == 304:
        assert response.content == b""
    else:
        assert response.json()["id"] == product["id"]


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


async def test_sale_rules_are_set_returned_in_utc_and_cleared(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/products",
        json={"name": "drop", "price": 100, "stock": 10, "max_per_buyer": 2,
              "sale_starts_at": "2030-01-01T10:00:00+02:00",
              "sale_ends_at": "2030-01-01T12:30:00.5Z"},
    )  # fmt: skip
    assert created.status_code == 201
    product = created.json()
    assert (product["max_per_buyer"], product["sale_starts_at"], product["sale_ends_at"]) == (
        2, "2030-01-01T08:00:00Z", "2030-01-01T12:30:00.500000Z",
    )  # fmt: skip
    assert (await client.get(f"/products/{product['id']}")).json() == product

    patched = await client.patch(
        f"/products/{product['id']}",
        json={"max_per_buyer": None, "sale_ends_at": None},
        headers={"If-Match": '"1"'},
    )
    assert patched.status_code == 200
    assert (patched.json()["max_per_buyer"], patched.json()["sale_ends_at"]) == (None, None)
    assert patched.json()["sale_starts_at"] == "2030-01-01T08:00:00Z"  # absent: unchanged
    assert patched.json()["stock"] == 10


@pytest.mark.parametrize(
    ("rules", "field"),
    [
        ({"max_per_buyer": 0}, "max_per_buyer"),
        ({"max_per_buyer": 1_000_001}, "max_per_buyer"),
        ({"max_per_buyer": "2"}, "max_per_buyer"),
        ({"sale_starts_at": "2030-01-01T10:00:00"}, "sale_starts_at"),  # no offset
        ({"sale_starts_at": "2030-01-01"}, "sale_starts_at"),
        ({"sale_starts_at": 1893456000}, "sale_starts_at"),  # epoch seconds
        ({"sale_starts_at": "2030-02-30T10:00:00Z"}, "sale_starts_at"),
        ({"sale_starts_at": "1969-12-31T23:59:59Z"}, "sale_starts_at"),
        ({"sale_starts_at": "2030-01-01T10:00:00Z", "sale_ends_at": "2030-01-01T10:00:00Z"},
         "body"),
        ({"sale_starts_at": "2030-01-01T10:00:00Z", "sale_ends_at": "2030-01-01T09:00:00Z"},
         "body"),
    ],
)  # fmt: skip
async def test_invalid_sale_rules_are_400(
    client: httpx.AsyncClient, rules: dict[str, object], field: str
) -> None:
    response = await client.post("/products", json={"name": "p", "price": 1, "stock": 1, **rules})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"][0]["field"] == field


async def test_a_window_end_patched_before_the_stored_start_is_400(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(
        "/products",
        json={"name": "p", "price": 1, "stock": 1, "sale_starts_at": "2030-01-01T10:00:00Z"},
    )
    product_id = created.json()["id"]

    crossing = await client.patch(
        f"/products/{product_id}",
        json={"sale_ends_at": "2030-01-01T09:00:00Z"},
        headers={"If-Match": '"1"'},
    )

    assert crossing.status_code == 400
    assert crossing.json()["error"]["details"] == [
        {"field": "sale_ends_at", "message": "must be after sale_starts_at"}
    ]
    assert (await client.get(f"/products/{product_id}")).json()["version"] == 1


async def test_a_limit_set_later_counts_what_buyers_already_hold(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=100)
    body = {"product_id": product["id"], "quantity": 2, "buyer_id": "early"}
    for _ in range(2):
        assert (await client.post("/orders", json=body)).status_code == 201

    limited = await client.patch(
        f"/products/{product['id']}", json={"max_per_buyer": 5}, headers={"If-Match": '"3"'}
    )
    refused = await client.post("/orders", json=body)  # 4 held + 2 > 5
    one_more = await client.post("/orders", json={**body, "quantity": 1})
    cleared = await client.patch(
        f"/products/{product['id']}", json={"max_per_buyer": None}, headers={"If-Match": '"5"'}
    )
    unlimited = await client.post("/orders", json=body)

    assert limited.status_code == 200
    assert refused.json()["error"]["code"] == "PURCHASE_LIMIT_EXCEEDED"
    assert one_more.status_code == 201
    assert cleared.status_code == 200
    assert unlimited.status_code == 201
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM buyer_holdings WHERE product_id = $1", product["id"]
        )
        == 0
    )
