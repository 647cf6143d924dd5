"""The bench's load generators: wrk's Lua script and result line, and both generators against a
live server (every 2xx is a stored order; the 404 ceiling answers nothing but 404s)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import asyncpg
import pytest

from flashsale.bench import wrk
from flashsale.bench.harness import LiveServer
from flashsale.bench.loadgen import PERCENTILES, LoadResult, request_bytes, run_load
from tests.support import require_tool

STOCK = 10**9


def test_lua_string_escapes_everything_but_printable_ascii() -> None:
    assert wrk.lua_string('{"a": 1}') == '"{\\034a\\034: 1}"'
    assert wrk.lua_string("é\\\n") == '"\\195\\169\\092\\010"'


def test_script_is_a_static_request_with_a_done_callback() -> None:
    script = wrk.script("POST", json.dumps({"buyer_id": "x"}))
    assert 'wrk.method = "POST"' in script
    assert 'wrk.headers["Content-Type"] = "application/json"' in script
    assert "wrk.body = " in script
    assert "function done(summary, latency, requests)" in script
    # No per-request Lua: wrk formats the request once.
    assert "function request" not in script
    assert "function response" not in script
    assert "Content-Type" not in wrk.script("GET")


def test_parse_reads_the_result_line() -> None:
    output = (
        "Running 1s test @ http://127.0.0.1:1/orders\n  1 threads and 8 connections\n"
        "Requests/sec:   1234.00\n\n"
        'FLASHSALE_WRK {"requests": 1500, "duration_us": 1002000, "bytes": 99, '
        '"errors": {"connect": 1, "read": 2, "write": 3, "status": 40, "timeout": 4}, '
        '"latency_us": {"p50": 1500, "p90": 2500, "p99": 9000, "p99.9": 12000, '
        '"max": 15000, "mean": 1700.5}}\n'
    )
    result = wrk.parse(output, connections=8)
    assert result.generator == "wrk"
    assert result.requests == 1500
    assert result.non_2xx == 40
    assert result.ok == 1460
    assert result.rate == pytest.approx(1500 / 1.002)
    assert result.percentile_ms(50) == 1.5
    assert result.percentile_ms(99.9) == 12.0
    assert result.max_latency_us == 15000
    assert result.socket_errors.total == 10
    assert (result.socket_errors.connect, result.socket_errors.timeout) == (1, 4)
    assert "1,497 req/s" in result.summary()
    with pytest.raises(ValueError, match="not measured"):
        result.percentile_ms(75)


def test_parse_without_the_line_says_what_wrk_printed() -> None:
    with pytest.raises(RuntimeError, match="unable to connect"):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused\n", connections=1)


async def _product(pool: asyncpg.Pool) -> int:
    return int(
        await pool.fetchval(
            "INSERT INTO products (name, price, stock) VALUES ('bench', 1000, $1) RETURNING id",
            STOCK,
        )
    )


async def _settled_orders(pool: asyncpg.Pool, product_id: int) -> int:
    """Orders rows for the product once the server has finished what was left in flight."""
    last, steady = -1, 0
    while steady < 3:
        await asyncio.sleep(0.1)
        now = int(
            await pool.fetchval("SELECT count(*) FROM orders WHERE product_id = $1", product_id)
        )
        steady = steady + 1 if now == last else 0
        last = now
    return last


async def _check_orders_run(
    pool: asyncpg.Pool, product_id: int, result: LoadResult, in_flight_allowed: int
) -> None:
    assert result.requests > 0
    assert result.non_2xx == 0
    assert result.socket_errors.total == 0
    assert result.rate > 0
    assert set(result.latency_us) == set(PERCENTILES)
    assert 0 < result.percentile_ms(50) <= result.percentile_ms(99) <= result.max_latency_us / 1000
    rows = await _settled_orders(pool, product_id)
    # Every 2xx is a stored order; wrk also drops the requests in flight when it stops (at most
    # one per connection), which the server still completes.
    assert result.ok <= rows <= result.ok + in_flight_allowed
    stock = await pool.fetchval("SELECT stock FROM products WHERE id = $1", product_id)
    assert stock + rows == STOCK


async def test_wrk_orders_and_http_ceiling(server: LiveServer, pool: asyncpg.Pool) -> None:
    executable = require_tool("wrk", "wrk")
    product_id = await _product(pool)
    body = json.dumps({"product_id": product_id, "quantity": 1, "buyer_id": "bench-test"})
    result = await asyncio.to_thread(
        wrk.run, f"{server.url}/orders", connections=8, seconds=1, method="POST", body=body,
        executable=executable,
    )  # fmt: skip
    assert result.generator == "wrk"
    assert result.connections == 8
    assert 0.9 < result.duration_s < 3
    await _check_orders_run(pool, product_id, result, in_flight_allowed=8)

    ceiling = await asyncio.to_thread(
        wrk.run, f"{server.url}/bench-no-such-route", connections=8, seconds=1,
        executable=executable,
    )  # fmt: skip
    assert ceiling.requests > 0
    assert ceiling.non_2xx == ceiling.requests
    assert ceiling.socket_errors.total == 0


async def test_wrk_numbered_requests_give_each_order_its_own_buyer(
    server: LiveServer, pool: asyncpg.Pool
) -> None:
    executable = require_tool("wrk", "wrk")
    product_id = await _product(pool)
    body = json.dumps({"product_id": product_id, "quantity": 1, "buyer_id": f"b{wrk.COUNTER}"})
    assert "function request()" in wrk.script("POST", body)

    runs = [
        await asyncio.to_thread(
            wrk.run,
            f"{server.url}/orders",
            connections=4,
            seconds=1,
            method="POST",
            body=body,
            executable=executable,
        )
        for _ in range(2)
    ]

    for result in runs:
        assert result.non_2xx == 0
    rows = await _settled_orders(pool, product_id)
    assert rows >= sum(result.ok for result in runs) > 0
    # Unique across both runs: each run of the script has its own prefix.
    assert (
        await pool.fetchval(
            "SELECT count(DISTINCT buyer_id) FROM orders WHERE product_id = $1", product_id
        )
        == rows
    )


async def test_python_generator_orders_and_http_ceiling(
    server: LiveServer, pool: asyncpg.Pool
) -> None:
    """The fallback: same result type; it never abandons a request, so the count is exact."""
    port = int(server.url.rsplit(":", 1)[1])
    product_id = await _product(pool)
    body = json.dumps({"product_id": product_id, "quantity": 1, "buyer_id": "bench-test"})
    request = request_bytes("POST", "/orders", body.encode())
    result = await run_load("127.0.0.1", port, connections=8, seconds=1, request=request)
    assert result.generator == "python"
    assert set(result.statuses) == {201}
    await _check_orders_run(pool, product_id, result, in_flight_allowed=0)

    ceiling = await run_load(
        "127.0.0.1", port, connections=8, seconds=1, request=request_bytes("GET", "/nope")
    )
    assert set(ceiling.statuses) == {404}
    assert ceiling.non_2xx == ceiling.requests > 0


def test_wrk_is_found_where_the_bench_looks() -> None:
    if shutil.which("wrk") is None:
        assert wrk.binary() is None
    else:
        assert Path(str(wrk.binary())).name == "wrk"
