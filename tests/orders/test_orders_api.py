"""The order endpoints' contract: shapes, codes and every error path."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg
import httpx
import pytest

from tests.factories import make_product, stock_of


async def test_order_lifecycle_create_get_list(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10, price=1000, name="Limited Edition Product")

    created = await client.post(
        "/orders", json={"product_id": product["id"], "quantity": 2, "buyer_id": "user-123"}
    )

    assert created.status_code == 201
    order = created.json()
    assert set(order) == {
        "id", "product_id", "buyer_id", "quantity", "status", "total_cents", "created_at",
        "updated_at", "cancelled_at",
    }  # fmt: skip
    assert order["status"] == "CONFIRMED"
    assert order["total_cents"] == 2000
    assert order["created_at"].endswith("Z")
    assert created.headers["location"] == f"/orders/{order['id']}"
    assert await pool.fetchval(
        "SELECT status FROM orders WHERE id = $1", uuid.UUID(order["id"])
    ) == ("CONFIRMED")

    fetched = await client.get(f"/orders/{order['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == {
        **order,
        "product": {
            "id": product["id"],
            "name": "Limited Edition Product",
            "stock": 8,
            "price": 1000,
        },
    }

    listed = (await client.get("/orders")).json()
    assert listed == {"orders": [order], "limit": 20, "offset": 0}


async def test_list_is_newest_first_with_paging_and_filters(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    first = await make_product(pool, stock=100)
    second = await make_product(pool, stock=100)
    ids = []
    for i in range(5):
        product = first if i % 2 == 0 else second
        body = {"product_id": product["id"], "quantity": 1, "buyer_id": f"buyer-{i % 2}"}
        ids.append((await client.post("/orders", json=body)).json()["id"])

    page = (await client.get("/orders", params={"limit": 2, "offset": 1})).json()
    assert [o["id"] for o in page["orders"]] == [ids[3], ids[2]]
    assert (page["limit"], page["offset"]) == (2, 1)

    by_buyer = (await client.get("/orders", params={"buyer_id": "buyer-1"})).json()
    assert [o["id"] for o in by_buyer["orders"]] == [ids[3], ids[1]]
    by_product = (await client.get("/orders", params={"product_id": first["id"]})).json()
    assert [o["id"] for o in by_product["orders"]] == [ids[4], ids[2], ids[0]]
    both = await client.get("/orders", params={"product_id": first["id"], "buyer_id": "buyer-1"})
    assert both.json()["orders"] == []


async def test_out_of_stock_is_409_and_changes_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=3)

    response = await client.post(
        "/orders", json={"product_id": product["id"], "quantity": 4, "buyer_id": "b"}
    )

    assert response.status_code == 409
    assert response.json() == {"error": {"code": "OUT_OF_STOCK", "message": "Insufficient stock"}}
    assert await stock_of(pool, product["id"]) == 3
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0


async def test_unknown_product_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/orders", json={"product_id": 999, "quantity": 1, "buyer_id": "b"}
    )

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "PRODUCT_NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"product_id": "1", "quantity": 1, "buyer_id": "b"}, "product_id"),
        ({"product_id": 1.5, "quantity": 1, "buyer_id": "b"}, "product_id"),
        ({"product_id": True, "quantity": 1, "buyer_id": "b"}, "product_id"),
        ({"product_id": 0, "quantity": 1, "buyer_id": "b"}, "product_id"),
        ({"product_id": 2**63, "quantity": 1, "buyer_id": "b"}, "product_id"),
        ({"product_id": 1, "quantity": 0, "buyer_id": "b"}, "quantity"),
        ({"product_id": 1, "quantity": -3, "buyer_id": "b"}, "quantity"),
        ({"product_id": 1, "quantity": 10_001, "buyer_id": "b"}, "quantity"),
        ({"product_id": 1, "quantity": 10**30, "buyer_id": "b"}, "quantity"),
        ({"product_id": 1, "quantity": 1, "buyer_id": ""}, "buyer_id"),
        ({"product_id": 1, "quantity": 1, "buyer_id": "x" * 129}, "buyer_id"),
        ({"product_id": 1, "quantity": 1, "buyer_id": "bad\x00id"}, "buyer_id"),
        ({"product_id": 1, "quantity": 1, "buyer_id": " padded "}, "buyer_id"),
        ({"product_id": 1, "quantity": 1, "buyer_id": 12}, "buyer_id"),
        ({"product_id": 1, "quantity": 1}, "buyer_id"),
        ({"product_id": 1, "quantity": 1, "buyer_id": "b", "price": 1}, "price"),
    ],
)
async def test_malformed_order_body_is_400_with_details(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    response = await client.post("/orders", json=body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert field in error["message"]
    assert [d["field"] for d in error["details"]] == [field]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b"[]",
        b"null",
        b'{"product_id": 1,}',
        "\ud800".encode("utf-8", "surrogatepass"),
    ],
)
async def test_unparseable_order_body_is_400(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post(
        "/orders", content=content, headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_get_order_with_malformed_id_is_400_and_unknown_is_404(
    client: httpx.AsyncClient,
) -> None:
    malformed = await client.get("/orders/not-a-uuid")
    unknown = await client.get(f"/orders/{uuid.uuid4()}")

    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "VALIDATION_ERROR"
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "ORDER_NOT_FOUND"


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"offset": -1},
        {"offset": 100_001},
        {"offset": 10**30},
        {"product_id": 0},
        {"buyer_id": ""},
    ],
)
async def test_out_of_range_paging_is_400_not_clamped(
    client: httpx.AsyncClient, params: dict[str, str | int]
) -> None:
    response = await client.get("/orders", params=params)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_order_totals_use_bigint_cents(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    product = await make_product(pool, stock=10_000, price=10_000_000_000)

    response = await client.post(
        "/orders", json={"product_id": product["id"], "quantity": 10_000, "buyer_id": "whale"}
    )

    assert response.status_code == 201
    assert response.json()["total_cents"] == 10**14


async def test_unknown_routes_and_methods_use_the_envelope(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nowhere")
    wrong_method = await client.delete("/orders")

    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_timestamps_are_utc(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    product = await make_product(pool)
    order = (
        await client.post(
            "/orders", json={"product_id": product["id"], "quantity": 1, "buyer_id": "b"}
        )
    ).json()

    created = datetime.fromisoformat(order["created_at"])
    assert created.utcoffset() is not None
    assert created.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
