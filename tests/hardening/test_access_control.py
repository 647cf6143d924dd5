"""Operators: named keys with roles, checked before the body, on every admin route; fail closed.

The table-driven tests walk the OpenAPI document of a live server: every operation either
declares a security scheme or is on the short list of public ones, so a new route cannot be
left open by forgetting its rule.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import structlog

from flashsale.access.exposure import check_exposure
from flashsale.access.operators import PLACEHOLDER_KEY, digest, new_key
from flashsale.bench.harness import LiveServer
from flashsale.config import ConfigError, load_settings
from tests.factories import make_product
from tests.support import ROOT, running_server

ADMIN_SECRET, ADMIN = new_key("ops-admin", "admin")
VIEWER_SECRET, VIEWER = new_key("ops-viewer", "viewer")
LEGACY_KEY = "legacy-admin-key-0123456789abcdef"  # API_KEY still works as one admin key
AS_ADMIN = {"Authorization": f"Bearer {ADMIN_SECRET}"}
AS_VIEWER = {"Authorization": f"Bearer {VIEWER_SECRET}"}

# Operations anyone may call (the storefront, health, the schema). Anything else must declare a
# security scheme: a route missing from here and without one fails `test_every_route_...`.
PUBLIC = {
    ("get", "/health"),
    ("get", "/products"),
    ("get", "/products/{product_id}"),
}
ORDER_READS = {("get", "/orders"), ("get", "/orders/{order_id}")}
PATH_VALUES = {
    "product_id": "999999",
    "order_id": "00000000-0000-4000-8000-000000000000",
    "job_id": "job_00000000-0000-4000-8000-000000000000",
    "transaction_id": "999999",
    "name": "job_00000000-0000-4000-8000-000000000000.csv",
}


@pytest.fixture(scope="module")
def keyed_server(database_url: str, logs_dir: Path) -> Iterator[LiveServer]:
    with running_server(
        database_url,
        logs_dir,
        API_KEYS=f"{ADMIN.line},{VIEWER.line}",
        API_KEY=LEGACY_KEY,
        LOG_LEVEL="info",
    ) as server:
        yield server


@pytest.fixture
async def keyed(keyed_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=keyed_server.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def spec(keyed_server: LiveServer) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{keyed_server.url}/openapi.json").json()
    return document


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, Any]]:
    return [
        (method, path, operation.get("security"))
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    ]


def _operator_routes(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method, path)
        for method, path, security in _operations(spec)
        if security == [{"operatorKey": []}]
    ]


def _url(path: str) -> str:
    for name, value in PATH_VALUES.items():
        path = path.replace(f"{{{name}}}", value)
    assert "{" not in path, f"no test value for a parameter of {path}"
    return path


async def _call(
    http: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]
) -> httpx.Response:
    if method == "get":
        return await http.get(_url(path), headers=headers)
    # A malformed body: authentication must answer before anything reads it.
    media_type = "text/csv" if path == "/transactions/import" else "application/json"
    return await http.request(
        method.upper(),
        _url(path),
        content=b"{not json",
        headers={**headers, "Content-Type": media_type},
    )


def test_every_route_is_public_by_decision_or_declares_who_may_call_it(
    spec: dict[str, Any],
) -> None:
    open_routes = {(m, p) for m, p, security in _operations(spec) if not security}
    order_reads = {
        (m, p)
        for m, p, security in _operations(spec)
        if security == [{"buyerToken": []}, {"operatorKey": []}]
    }

    assert open_routes == PUBLIC
    assert order_reads == ORDER_READS
    assert ("post", "/orders") in {
        (m, p) for m, p, security in _operations(spec) if security == [{"buyerToken": []}]
    }
    assert len(_operator_routes(spec)) >= 15
    schemes = spec["components"]["securitySchemes"]
    assert schemes["operatorKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["operatorKey"]["description"],
    }
    assert schemes["buyerToken"]["bearerFormat"] == "JWT"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong",
        "Bearer",
        f"Basic {ADMIN_SECRET}",
        ADMIN_SECRET,
        f"Bearer {ADMIN_SECRET}x",
    ],
)
async def test_without_a_valid_key_every_operator_route_is_401_before_its_body_is_read(
    keyed: httpx.AsyncClient, spec: dict[str, Any], authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in _operator_routes(spec):
        response = await _call(keyed, method, path, headers)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"]["code"] == "UNAUTHORIZED"
        assert response.headers["www-authenticate"] == "Bearer"


async def test_a_viewer_reads_every_operator_route_and_writes_none(
    keyed: httpx.AsyncClient, spec: dict[str, Any], pool: asyncpg.Pool
) -> None:
    product = await make_product(pool)
    for method, path in _operator_routes(spec):
        response = await _call(keyed, method, path, AS_VIEWER)
        if method == "get":
            assert response.status_code not in (401, 403), (method, path, response.text)
        else:
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"]["code"] == "FORBIDDEN"
    assert await pool.fetchval("SELECT stock FROM products WHERE id = $1", product["id"]) == 100


async def test_an_admin_passes_every_operator_route(
    keyed: httpx.AsyncClient, spec: dict[str, Any]
) -> None:
    for headers in (AS_ADMIN, {"Authorization": f"Bearer {LEGACY_KEY}"}):
        for method, path in _operator_routes(spec):
            response = await _call(keyed, method, path, headers)
            assert response.status_code not in (401, 403), (method, path, response.text)


async def test_roles_do_what_they_say_on_real_requests(
    keyed: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool)
    url, if_match = f"/products/{product['id']}", {"If-Match": '"1"'}

    refused = await keyed.patch(url, json={"price": 0}, headers={**if_match, **AS_VIEWER})
    listed = await keyed.get("/transactions", headers=AS_VIEWER)
    changed = await keyed.patch(url, json={"price": 0}, headers={**if_match, **AS_ADMIN})

    assert refused.status_code == 403
    assert "viewer" in refused.json()["error"]["message"]
    assert listed.status_code == 200
    assert changed.status_code == 200
    assert changed.json()["price"] == 0


async def test_admin_writes_are_logged_with_the_keys_name_never_the_key(
    keyed: httpx.AsyncClient, keyed_server: LiveServer
) -> None:
    created = await keyed.post(
        "/products", json={"name": "logged", "price": 1, "stock": 1}, headers=AS_ADMIN
    )
    assert created.status_code == 201

    lines = [json.loads(line) for line in keyed_server.log_path.read_text().splitlines() if line]
    writes = [
        line
        for line in lines
        if line.get("event") == "http.request"
        and line.get("method") == "POST"
        and line.get("route") == "/products"
        and line.get("status") == 201
    ]
    assert writes
    assert writes[-1]["actor"] == "ops-admin"
    log = keyed_server.log_path.read_text()
    assert ADMIN_SECRET not in log
    assert VIEWER_SECRET not in log


async def test_order_reads_and_metrics_need_a_key_once_keys_are_set(
    keyed: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool)
    order = await keyed.post(
        "/orders", json={"product_id": product["id"], "quantity": 1, "buyer_id": "b"}
    )
    assert order.status_code == 201  # BUYER_AUTH=none: the seed's open storefront

    assert (await keyed.get(f"/orders/{order.json()['id']}")).status_code == 200  # by its id
    assert (await keyed.get("/orders")).status_code == 401
    assert (await keyed.get("/orders", headers=AS_VIEWER)).json()["orders"][0]["buyer_id"] == "b"
    assert (await keyed.get("/metrics")).status_code == 401
    assert (
        await keyed.get("/metrics", headers={"Authorization": "Bearer nope"})
    ).status_code == 401
    for headers in (AS_VIEWER, AS_ADMIN):
        scrape = await keyed.get("/metrics", headers=headers)
        assert scrape.status_code == 200
        assert "flashsale_orders_created_total" in scrape.text
    assert (await keyed.get(f"/products/{product['id']}")).status_code == 200
    assert (await keyed.get("/health")).status_code == 200


async def test_without_keys_on_loopback_everything_stays_open(client: httpx.AsyncClient) -> None:
    created = await client.post("/products", json={"name": "p", "price": 1, "stock": 1})

    assert created.status_code == 201
    assert (await client.get("/orders")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200
    assert (await client.get("/jobs")).status_code == 200


# --- fail closed: who may start -------------------------------------------------------------

OFF_LOOPBACK = {"server_host": "0.0.0.0"}


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({}, "API_KEYS (or API_KEY"),
        ({"api_key": "short-key"}, "shorter than 32 characters"),
        ({"api_key": PLACEHOLDER_KEY}, "placeholder"),
        ({"api_keys": f"ops:admin:sha256:{digest(PLACEHOLDER_KEY).hex()}"}, "placeholder"),
        ({"api_key": PLACEHOLDER_KEY, "allow_open_admin": "true"}, "placeholder"),
    ],
)
def test_off_loopback_a_server_without_good_keys_refuses_to_start(
    settings: dict[str, str], says: str
) -> None:
    with pytest.raises(ConfigError, match=r"SERVER_HOST=0\.0\.0\.0") as refused:
        check_exposure(load_settings(**OFF_LOOPBACK, **settings))

    assert says in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "settings",
    [
        {"api_keys": ADMIN.line},
        {"api_key": LEGACY_KEY},
        {"server_host": "127.0.0.1"},
        {"server_host": "::1"},
        {"server_host": "localhost"},
        {"server_host": "127.0.0.5", "api_key": "short"},
    ],
)
def test_good_keys_or_loopback_start(settings: dict[str, str]) -> None:
    check_exposure(load_settings(**{**OFF_LOOPBACK, **settings}))


def test_allow_open_admin_starts_open_with_a_warning() -> None:
    with structlog.testing.capture_logs() as logs:
        check_exposure(load_settings(**OFF_LOOPBACK, allow_open_admin="true"))

    assert [log["event"] for log in logs] == ["server.admin_open", "server.buyers_unverified"]
    assert all(log["log_level"] == "warning" for log in logs)


def test_flashsale_serve_refuses_in_one_line_before_starting_anything(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("API_KEY", "ALLOW_OPEN", "DATABASE_URL"))
    }
    env |= {"SERVER_HOST": "0.0.0.0", "DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run(
        [sys.executable, "-m", "flashsale", "serve"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "API_KEYS" in result.stderr
    assert "API_KEY" in result.stderr
    assert not (tmp_path / "data").exists()  # no embedded database was started
