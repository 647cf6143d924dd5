"""Bad input at the edge: every case gets a clear 4xx in the envelope, never a 5xx."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from tests.factories import make_product


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    body = b'{"product_id": 1, "quantity": 1, "buyer_id": "' + b"x" * 70_000 + b'"}'

    response = await client.post(
        "/orders", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_oversized_chunked_body_without_length_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1024

    response = await client.post(
        "/orders", content=chunks(), headers={"content-type": "application/json"}
    )

    assert response.status_code == 413


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
async def test_a_body_that_is_not_declared_json_is_415(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await client.post(
        "/orders",
        content=b'{"product_id": 1, "quantity": 1, "buyer_id": "b"}',
        headers={"content-type": content_type},
    )

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"


async def test_json_with_charset_is_accepted(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    product = await make_product(pool)

    response = await client.post(
        "/orders",
        content=f'{{"product_id": {product["id"]}, "quantity": 1, "buyer_id": "b"}}'.encode(),
        headers={"content-type": "application/json; charset=utf-8"},
    )

    assert response.status_code == 201


async def test_unicode_names_round_trip(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    created = await client.post(
        "/products", json={"name": "Café ☕ 限定版 🚀", "price": 100, "stock": 1}
    )
    order = await client.post(
        "/orders", json={"product_id": created.json()["id"], "quantity": 1, "buyer_id": "Zoë-øå"}
    )

    assert created.status_code == 201
    assert created.json()["name"] == "Café ☕ 限定版 🚀"
    assert order.status_code == 201
    assert order.json()["buyer_id"] == "Zoë-øå"


@pytest.mark.parametrize(
    "name",
    ["tab\there", "new\nline", "bell\x07", "zero\u200bwidth", "rtl\u202eoverride", "nul\x00"],
)
async def test_control_and_invisible_characters_are_rejected(
    client: httpx.AsyncClient, name: str
) -> None:
    response = await client.post("/products", json={"name": name, "price": 1, "stock": 1})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize("path", ["/products", "/jobs/settlement"])
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "Invalid JSON: Expecting property name enclosed in double quotes (at character 1)"),
        (b'{"name": "a",, }', "Invalid JSON: Expecting property name enclosed in double quotes"),
        (b'{"price": ' + b"9" * 5000 + b"}", "the body is not valid JSON"),
        ('{"name": "\u00e9"}'.encode("latin-1"), "the body is not valid JSON"),
    ],
)
async def test_bodies_that_are_not_json_say_so_in_a_400(
    client: httpx.AsyncClient, path: str, raw: bytes, message: str
) -> None:
    response = await client.post(path, content=raw, headers={"content-type": "application/json"})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert message in error["message"]
    assert all(detail["field"] == "body" for detail in error.get("details", []))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"product_id": 1e400, "quantity": 1, "buyer_id": "b"}',
        b'{"product_id": 123456789012345678901234567890, "quantity": 1, "buyer_id": "b"}',
        b'{"product_id": 1, "quantity": NaN, "buyer_id": "b"}',
        b'{"product_id": 1, "quantity": Infinity, "buyer_id": "b"}',
        b'{"product_id": 1, "quantity": -0.0, "buyer_id": "b"}',
        b'{"product_id": 1, "quantity": 1, "buyer_id": "\\ud800"}',
        b'{"product_id": 1, "quantity": 1, "buyer_id": "b", "buyer_id": ["dup"]}',
        b"\xff\xfe garbage",
    ],
)
async def test_hostile_json_is_400(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post(
        "/orders", content=raw, headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize(
    "path",
    [
        "/orders?offset=99999999999999999999999",
        "/orders?limit=-5",
        "/orders?limit=1e3",
        "/orders?product_id=abc",
        "/orders/00000000-0000-0000-0000-00000000000g",
        "/orders/%00",
        "/products/-1",
        "/products/1.5",
    ],
)
async def test_malformed_query_and_path_values_are_400(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"
