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
