"""Structured logs and request tracing: X-Request-ID in, out, and on every line of the request."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from flashsale.bench.harness import LiveServer
from tests.factories import make_product
from tests.support import http_client, running_server

STATEMENT_TIMEOUT_MS = 300


@pytest.fixture(scope="module")
def info_server(database_url: str, logs_dir: Path) -> Iterator[LiveServer]:
    env = {
        "LOG_LEVEL": "info",
        "DB_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS),
        # One order, one statement: a failure inside it is the request's own (in flash-sale
        # mode a failed batch is a 503 for every member, never an unexpected 500).
        "ORDER_COALESCING": "off",
    }
    with running_server(database_url, logs_dir, **env) as live:
        yield live


@pytest.fixture
async def info_client(info_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(info_server.url) as client:
        yield client


def _lines(server: LiveServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


async def _request_lines(
    server: LiveServer, request_id: str, last_event: str
) -> list[dict[str, Any]]:
    """The request's log lines, once its last line is written (just after the response)."""
    for _ in range(200):
        lines = [line for line in _lines(server) if line.get("request_id") == request_id]
        if any(line["event"] == last_event for line in lines):
            return lines
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {last_event} line for {request_id}:\n{server.log()}")


async def test_request_id_from_the_request_is_returned_and_logged(
    info_server: LiveServer, info_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool)

    response = await info_client.get(
        f"/products/{product['id']}", headers={"X-Request-ID": "trace-1.a:b_c"}
    )

    assert response.headers["x-request-id"] == "trace-1.a:b_c"
    [line] = await _request_lines(info_server, "trace-1.a:b_c", "http.request")
    assert line["event"] == "http.request"
    assert line["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"])
    assert (line["method"], line["route"], line["status"]) == ("GET", "/products/{product_id}", 200)
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] > 0


@pytest.mark.parametrize(
    "header", [None, "", "has space", "x" * 129, "semi;colon", "ünïcode"], ids=repr
)
async def test_a_missing_or_insane_request_id_is_replaced_by_a_generated_one(
    info_server: LiveServer, info_client: httpx.AsyncClient, header: str | None
) -> None:
    headers = [] if header is None else [(b"X-Request-ID", header.encode())]

    response = await info_client.get("/health", headers=headers)

    generated = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    [line] = await _request_lines(info_server, generated, "http.request")
    assert (line["route"], line["status"]) == ("/health", 200)


async def test_every_line_of_a_request_carries_its_id(
    info_server: LiveServer, info_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool)
    async with pool.acquire() as blocker, blocker.transaction():
        # The row lock makes the update wait past the statement timeout: a line from deep
        # inside the request (the database layer) and the request line.
        await blocker.execute("SELECT 1 FROM products WHERE id = $1 FOR UPDATE", product["id"])
        response = await info_client.patch(
            f"/products/{product['id']}",
            json={"stock": 1},
            headers={"If-Match": '"1"', "X-Request-ID": "slow-update"},
        )

    assert response.status_code == 503
    assert response.headers["x-request-id"] == "slow-update"
    lines = await _request_lines(info_server, "slow-update", "http.request")
    assert [line["event"] for line in lines] == ["db.statement_timeout", "http.request"]
    assert lines[0]["level"] == "warning"


async def test_an_unexpected_500_still_carries_the_request_id(
    info_server: LiveServer, info_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    # A price no API call can set: price * quantity overflows BIGINT inside the order statement.
    product = await make_product(pool, price=2**62)

    response = await info_client.post(
        "/orders",
        json={"product_id": product["id"], "quantity": 3, "buyer_id": "b"},
        headers={"X-Request-ID": "overflow"},
    )

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "INTERNAL_ERROR"
    assert response.headers["x-request-id"] == "overflow"
    lines = await _request_lines(info_server, "overflow", "http.request")
    assert [line["event"] for line in lines] == ["http.unhandled_error", "http.request"]
    assert lines[1]["status"] == 500


def test_every_line_of_the_server_log_is_one_json_object(info_server: LiveServer) -> None:
    lines = _lines(info_server)  # raises on any line that is not JSON

    assert lines
    assert all({"timestamp", "level", "event"} <= set(line) for line in lines)
    assert any(line.get("logger") == "uvicorn.error" for line in lines)  # library lines too


_LOG_SOME = """
import logging, structlog
from flashsale.observability.logging import configure_logging
configure_logging({level!r}, {fmt!r})
log = structlog.get_logger()
log.info("demo.info", answer=41)
log.warning("demo.warning", answer=42)
logging.getLogger("some.library").warning("library says %s", "hi")
"""


def _log_some(level: str, fmt: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _LOG_SOME.format(level=level, fmt=fmt)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stderr.splitlines()


def test_json_lines_by_default_with_the_level_filtering() -> None:
    lines = [json.loads(line) for line in _log_some("warn", "json")]

    assert [line["event"] for line in lines] == ["demo.warning", "library says hi"]
    assert lines[0]["answer"] == 42
    assert lines[1]["logger"] == "some.library"
    assert all(line["level"] == "warning" and line["timestamp"].endswith("Z") for line in lines)


def test_text_format_for_humans() -> None:
    lines = _log_some("info", "text")

    assert len(lines) == 3
    assert "demo.info" in lines[0]
    assert "answer=41" in lines[0]
    assert "library says hi" in lines[2]
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)


_TRACEBACK_PROBE = """
import structlog
from flashsale.observability.logging import configure_logging
configure_logging("info", "json")
authorization = "Bearer key-that-must-not-be-logged"
try:
    raise RuntimeError("boom")
except RuntimeError:
    structlog.get_logger().exception("test.failed", header_count=len(authorization))
"""


def test_a_logged_traceback_carries_no_local_variables() -> None:
    # In a process of its own: configuring logging here would bind this process's stderr.
    done = subprocess.run(
        [sys.executable, "-c", _TRACEBACK_PROBE], capture_output=True, text=True, check=True
    )

    assert "RuntimeError" in done.stderr
    assert "key-that-must-not-be-logged" not in done.stderr
