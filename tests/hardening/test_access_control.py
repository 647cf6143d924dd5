"""API_KEY: product writes need a bearer key when it is set; the storefront stays open."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from flashsale.bench.harness import LiveServer
from tests.factories import make_product
from tests.support import running_server

API_KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def secured_server(database_url: str, logs_dir: Path) -> Iterator[LiveServer]:
    with running_server(database_url, logs_dir, API_KEY=API_KEY) as server:
        yield server


@pytest.fixture
async def secured(secured_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=secured_server.url, timeout=30) as http:
        yield http


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", "Bearer", f"Basic {API_KEY}", API_KEY, f"Bearer {API_KEY}x"],
)
async def test_product_writes_without_the_key_are_401(
    secured: httpx.AsyncClient, pool: asyncpg.Pool, authorization: str | None
) -> None:
    product = await make_product(pool)
    headers = {"Authorization": authorization} if authorization else {}

    created = await secured.post(
        "/products", json={"name": "p", "price": 1, "stock": 1}, headers=headers
    )
    patched = await secured.patch(
        f"/products/{product['id']}", json={"stock": 0}, headers={**headers, "If-Match": "1"}
    )

    for response in (created, patched):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "UNAUTHORIZED"
        assert response.headers["www-authenticate"] == "Bearer"
    assert await pool.fetchval("SELECT stock FROM products WHERE id = $1", product["id"]) == 100


async def test_product_writes_with_the_key_succeed(secured: httpx.AsyncClient) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}

    created = await secured.post(
        "/products", json={"name": "p", "price": 1, "stock": 1}, headers=headers
    )

    assert created.status_code == 201


async def test_cancelling_an_order_needs_the_key(
    secured: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool)
    order = await secured.post(
        "/orders", json={"product_id": product["id"], "quantity": 1, "buyer_id": "b"}
    )
    cancel = f"/orders/{order.json()['id']}/cancel"

    refused = [
        await secured.post(cancel),
        await secured.post(cancel, headers={"Authorization": "Bearer wrong"}),
    ]
    accepted = await secured.post(cancel, headers={"Authorization": f"Bearer {API_KEY}"})

    assert [r.status_code for r in refused] == [401, 401]
    assert accepted.status_code == 200
    assert accepted.json()["status"] == "CANCELLED"
    assert await pool.fetchval("SELECT stock FROM products WHERE id = $1", product["id"]) == 100


async def test_jobs_events_settlements_and_downloads_need_the_key(
    secured: httpx.AsyncClient,
) -> None:
    job_id = "job_00000000-0000-4000-8000-000000000000"
    wrong = {"Authorization": "Bearer wrong"}
    calls = [
        secured.post("/jobs/settlement", json={"from": "2025-01-01", "to": "2025-01-02"}),
        secured.get("/jobs"),
        secured.get(f"/jobs/{job_id}", headers=wrong),
        secured.post(f"/jobs/{job_id}/cancel"),
        secured.get(f"/downloads/{job_id}.csv", headers=wrong),
        secured.get(f"/jobs/{job_id}/events"),
        secured.get("/settlements", headers=wrong),
    ]
    for response in [await call for call in calls]:
        assert response.status_code == 401, response.request.url
        assert response.json()["error"]["code"] == "UNAUTHORIZED"

    key = {"Authorization": f"Bearer {API_KEY}"}
    accepted = await secured.post(
        "/jobs/settlement", json={"from": "2025-01-01", "to": "2025-01-02"}, headers=key
    )
    assert accepted.status_code == 202
    assert (await secured.get(f"/jobs/{job_id}", headers=key)).status_code == 404
    assert (await secured.get(f"/downloads/{job_id}.csv", headers=key)).status_code == 404
    assert (await secured.get(f"/jobs/{job_id}/events", headers=key)).status_code == 404
    assert (await secured.get("/settlements", headers=key)).status_code == 200


async def test_the_storefront_stays_open(secured: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    product = await make_product(pool)

    order = await secured.post(
        "/orders", json={"product_id": product["id"], "quantity": 1, "buyer_id": "b"}
    )

    assert order.status_code == 201
    assert (await secured.get(f"/orders/{order.json()['id']}")).status_code == 200
    assert (await secured.get("/orders")).status_code == 200
    assert (await secured.get(f"/products/{product['id']}")).status_code == 200
    assert (await secured.get("/health")).status_code == 200


async def test_without_api_key_everything_is_open(client: httpx.AsyncClient) -> None:
    created = await client.post("/products", json={"name": "p", "price": 1, "stock": 1})

    assert created.status_code == 201


async def test_openapi_declares_the_bearer_scheme(secured: httpx.AsyncClient) -> None:
    spec = (await secured.get("/openapi.json")).json()

    assert spec["paths"]["/products"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/orders"]["post"]
