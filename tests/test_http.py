"""HTTP semantics through the live server: 405 with every allowed method, HEAD wherever GET."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from tests.factories import make_product


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/products/1", "GET, HEAD, PATCH"),
        ("PUT", "/products", "GET, HEAD, POST"),
        ("DELETE", "/orders", "GET, HEAD, POST"),
        ("PUT", "/health", "GET, HEAD"),
        ("GET", "/jobs/settlement", None),  # answered: a job id that does not exist
        ("DELETE", "/jobs/job_x/cancel", "POST"),
    ],
)
async def test_405_lists_every_method_of_the_path(
    client: httpx.AsyncClient, method: str, path: str, allowed: str | None
) -> None:
    response = await client.request(method, path)

    if allowed is None:
        assert response.status_code == 404
        return
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_head_answers_as_get_without_a_body(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool)
    for path in ("/health", f"/products/{product['id']}", "/products", "/metrics", "/jobs"):
        get = await client.get(path)
        head = await client.head(path)

        assert head.status_code == get.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        if path != "/health" and path != "/metrics":  # their bodies carry the time
            assert head.headers["content-length"] == get.headers["content-length"]
    assert (await client.head("/products/999999")).status_code == 404
    assert (await client.head(f"/products/{product['id']}")).headers["etag"] == '"1"'


async def test_head_of_a_job_s_event_stream_ends_at_once(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    job = await pool.fetchval(
        "INSERT INTO settlement_jobs (from_date, to_date, status) "
        "VALUES ('2025-01-01', '2025-01-01', 'QUEUED') RETURNING id"
    )

    head = await asyncio.wait_for(client.head(f"/jobs/job_{job}/events"), 10)

    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    assert head.content == b""


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/products?name=tiny", "query.name"),
        ("/orders?prodct_id=1", "query.prodct_id"),
        ("/settlements?merchant=m", "query.merchant"),
        ("/jobs?sort=asc", "query.sort"),
        ("/products/1?verbose=1", "query.verbose"),
    ],
)
async def test_unknown_query_parameters_are_400_naming_them(
    client: httpx.AsyncClient, pool: asyncpg.Pool, path: str, field: str
) -> None:
    await make_product(pool)

    response = await client.get(path)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"] == [{"field": field, "message": "Unknown parameter"}]


@pytest.mark.parametrize(
    "path",
    ["/products/1.0", "/products/+1", "/products/1e0", "/products/%EF%BC%91", "/products?limit=2.0",
     "/orders?product_id=1.0", "/orders?offset=0x10", "/settlements?limit=10.0"],
)  # fmt: skip
async def test_numbers_in_paths_and_queries_are_digits_only(
    client: httpx.AsyncClient, pool: asyncpg.Pool, path: str
) -> None:
    await make_product(pool)

    response = await client.get(path)

    assert response.status_code == 400
    assert "must be a whole number, written with digits only" in response.text
    assert (await client.get("/products/1")).status_code == 200
