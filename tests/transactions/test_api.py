"""`POST /transactions`, `GET /transactions/{id}`, `GET /transactions`: through a live server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from flashsale.bench.harness import LiveServer
from tests.support import running_server
from tests.transactions.test_import import INVALID_VALUES, VALID_EDGES

BODY = {
    "external_id": "pi_3Nq8",
    "merchant_id": "merchant_01",
    "amount_cents": 12_345,
    "fee_cents": 388,
    "status": "COMPLETED",
    "paid_at": "2025-03-01T10:00:00+01:00",
}


def _body(**changes: object) -> dict[str, object]:
    return {**BODY, **changes}


def _as_json(field: str, value: str) -> dict[str, object]:
    """An import file's text value as a JSON body's value (amounts are numbers there)."""
    if field in ("amount_cents", "fee_cents") and value.lstrip("-").isdigit():
        return _body(**{field: int(value)})
    return _body(**{field: value})


async def test_a_transaction_is_recorded_once_and_a_retry_is_safe(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    created = await client.post("/transactions", json=BODY)
    retried = await client.post("/transactions", json=_body(paid_at="2025-03-01T09:00:00Z"))

    assert created.status_code == 201, created.text
    stored = created.json()
    assert stored["paid_at"] == "2025-03-01T09:00:00Z"
    assert set(stored) == {*BODY, "id", "created_at"}
    assert created.headers["location"] == f"/transactions/{stored['id']}"
    assert retried.status_code == 200  # the same moment, written in UTC: the same values
    assert retried.json() == stored
    assert (await client.get(f"/transactions/{stored['id']}")).json() == stored
    assert await pool.fetchval("SELECT count(*) FROM transactions") == 1


async def test_the_same_external_id_with_other_values_is_a_conflict_naming_them(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/transactions", json=BODY)

    response = await client.post(
        "/transactions", json=_body(amount_cents=12_346, status="REFUNDED")
    )

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "TRANSACTION_CONFLICT"
    assert [d["field"] for d in error["details"]] == ["amount_cents", "status"]


async def test_64_racing_posts_of_one_payment_store_it_once(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    start = asyncio.Event()

    async def post() -> httpx.Response:
        await start.wait()
        return await client.post("/transactions", json=BODY)

    tasks = [asyncio.create_task(post()) for _ in range(64)]
    await asyncio.sleep(0.05)
    start.set()
    responses = await asyncio.gather(*tasks)

    assert sorted(r.status_code for r in responses) == [200] * 63 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await pool.fetchval("SELECT count(*) FROM transactions") == 1


@pytest.mark.parametrize(("field", "value"), INVALID_VALUES)
async def test_the_api_refuses_what_the_import_refuses(
    client: httpx.AsyncClient, field: str, value: str
) -> None:
    response = await client.post("/transactions", json=_as_json(field, value))

    assert response.status_code == 400, response.text
    fields = {d["field"] for d in response.json()["error"]["details"]}
    assert fields == ({"body"} if field == "fee_cents" else {field})


# (Leading zeros are a CSV spelling only: JSON has no 000123.)
@pytest.mark.parametrize(
    ("field", "value"), [edge for edge in VALID_EDGES if edge != ("amount_cents", "000123")]
)
async def test_the_api_accepts_what_the_import_accepts(
    client: httpx.AsyncClient, field: str, value: str
) -> None:
    response = await client.post("/transactions", json=_as_json(field, value))

    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "body",
    [
        _body(amount_cents="100"),
        _body(amount_cents=100.0),
        _body(amount_cents=True),
        _body(paid_at=1740823200),
        _body(extra=1),
        {k: v for k, v in BODY.items() if k != "status"},
    ],
)
async def test_json_types_are_strict(client: httpx.AsyncClient, body: dict[str, object]) -> None:
    response = await client.post("/transactions", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_an_unknown_id_is_404_and_a_malformed_one_400(client: httpx.AsyncClient) -> None:
    assert (await client.get("/transactions/999")).status_code == 404
    assert (await client.get("/transactions/1.0")).status_code == 400
    assert (await client.get("/transactions/0")).status_code == 400


async def _import_rows(client: httpx.AsyncClient, count: int) -> None:
    from tests.transactions.files import csv_body, rows

    response = await client.post(
        "/transactions/import", content=csv_body(rows(count)), headers={"Content-Type": "text/csv"}
    )
    assert response.status_code == 201, response.text


async def test_pages_cover_the_filtered_rows_once_in_paid_at_order(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await _import_rows(client, 2_000)
    params = {"merchant_id": "merchant_03", "from": "2025-03-05", "to": "2025-03-20",
              "status": "COMPLETED", "limit": "37"}  # fmt: skip
    seen: list[dict[str, object]] = []
    cursor: str | None = None
    while True:
        page = await client.get(
            "/transactions", params={**params, **({"cursor": cursor} if cursor else {})}
        )
        assert page.status_code == 200, page.text
        seen += page.json()["transactions"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break

    expected = await pool.fetch(
        "SELECT id FROM transactions WHERE merchant_id = 'merchant_03' AND status = 'COMPLETED' "
        "AND paid_at >= '2025-03-05Z' AND paid_at < '2025-03-21Z' ORDER BY paid_at, id"
    )
    assert [t["id"] for t in seen] == [row["id"] for row in expected]
    assert len(expected) > 37


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "bogus!"},
        {"from": "2025-03-02", "to": "2025-03-01"},
        {"limit": "0"},
        {"limit": "1001"},
        {"status": "DONE"},
        {"merchant": "m"},
    ],
)
async def test_bad_list_parameters_are_400(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await client.get("/transactions", params=params)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


API_KEY = "transactions-key"


@pytest.fixture(scope="module")
def secured_server(database_url: str, logs_dir: Path) -> Iterator[LiveServer]:
    with running_server(database_url, logs_dir, API_KEY=API_KEY) as live:
        yield live


@pytest.fixture
async def secured(secured_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=secured_server.url, timeout=30) as http:
        yield http


async def test_every_transactions_route_needs_the_key(
    secured: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    key = {"Authorization": f"Bearer {API_KEY}"}
    csv = {"Content-Type": "text/csv"}
    requests = [
        ("POST", "/transactions", {"json": BODY}),
        ("GET", "/transactions", {}),
        ("GET", "/transactions/1", {}),
        ("POST", "/transactions/import", {"content": b"x", "headers": csv}),
    ]
    for method, path, extra in requests:
        refused = await secured.request(method, path, **extra)  # type: ignore[arg-type]
        assert refused.status_code == 401, (method, path)
    allowed = await secured.post("/transactions", json=BODY, headers=key)
    assert allowed.status_code == 201
    assert await pool.fetchval("SELECT count(*) FROM transactions") == 1
