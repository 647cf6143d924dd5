"""`flashsale bench orders`: the hot product through HTTP against the database's own ceiling.

In one invocation:
1. pgbench runs the exact single-order statement the service uses (`PLACE_ORDER_SQL`) on one hot
   row at several client counts: the database's best single-order rate on this machine, now.
2. A real `flashsale serve` process takes a crowd of closed-loop HTTP clients that all buy the
   same product; orders/s, p50 and p99 are measured, and every 201 is checked against the rows.
The figure that matters is the ratio of (2) to the best of (1): both ran on the same noisy box.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

from flashsale.bench.loadgen import LoadResult, post_json, run_load
from flashsale.orders.service import PLACE_ORDER_SQL

HUGE_STOCK = 10**12


def pgbench_binary() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    import pgserver

    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / "pgbench")


def pgbench_script() -> str:
    """The service's statement with pgbench variables in place of its parameters."""
    sql = PLACE_ORDER_SQL.replace("$1", ":pid").replace("$2", "1").replace("$3", "'pgbench'")
    return " ".join(sql.split()) + ";\n"


def run_pgbench(url: str, product_id: int, clients: int, seconds: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(pgbench_script())
    try:
        out = subprocess.run(  # noqa: S603 - our own binary and arguments
            [pgbench_binary(), "-n", "-M", "prepared", "-c", str(clients),
             "-j", str(min(clients, 2)), "-T", str(seconds), "-f", script.name,
             "-D", f"pid={product_id}", url],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script.name)
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    if match is None:
        raise RuntimeError(f"unexpected pgbench output:\n{out}")
    return float(match.group(1))


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen[bytes]


@contextmanager
def serve(database_url: str, env: dict[str, str]) -> Iterator[Server]:
    """A `flashsale serve` process on a free port, logs to a temp file, stopped with SIGTERM."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tempfile.NamedTemporaryFile(prefix="flashsale-bench-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "flashsale", "serve"],
        env={**os.environ, "DATABASE_URL": database_url, "SERVER_PORT": str(port),
             "AUTO_MIGRATE": "false", **env},
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", port, process)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {log.name}")
            time.sleep(0.1)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        os.unlink(log.name)


async def _new_product(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        product_id = await conn.fetchval(
            "INSERT INTO products (name, price, stock) VALUES ('bench hot product', 1000, $1) "
            "RETURNING id",
            HUGE_STOCK,
        )
        return int(product_id)
    finally:
        await conn.close()


async def _orders_for(url: str, product_id: int) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM orders WHERE product_id = $1", product_id)
        )
    finally:
        await conn.close()


async def http_orders(server: Server, product_id: int, *, clients: int, total: int) -> LoadResult:
    def order(i: int) -> bytes:
        body = {"product_id": product_id, "quantity": 1, "buyer_id": f"bench-{i}"}
        return post_json("/orders", json.dumps(body).encode())

    # Warm-up: open pool connections, prepare statements, fill caches.
    await run_load(
        "127.0.0.1", server.port, clients=clients, total=clients * 20, make_request=order
    )
    return await run_load(
        "127.0.0.1", server.port, clients=clients, total=total, make_request=order
    )


def run(
    url: str,
    *,
    clients: int,
    orders: int,
    configurations: list[dict[str, str]],
    pgbench_clients: list[int],
    pgbench_seconds: int,
) -> None:
    print(f"flashsale bench orders: one hot product, {clients} HTTP clients, {orders:,} orders")
    product_id = asyncio.run(_new_product(url))
    baseline = {}
    print(f"\ndatabase ceiling: pgbench, the service's order statement, {pgbench_seconds} s each")
    for count in pgbench_clients:
        baseline[count] = run_pgbench(url, product_id, count, pgbench_seconds)
        print(f"  {count:4d} clients: {baseline[count]:8,.0f} orders/s")
    best_clients, best = max(baseline.items(), key=lambda item: item[1])
    print(f"  best: {best:,.0f} orders/s at {best_clients} clients")

    print("\nHTTP POST /orders through `flashsale serve`:")
    for env in configurations:
        label = " ".join(f"{k}={v}" for k, v in env.items())
        product_id = asyncio.run(_new_product(url))
        with serve(url, env) as server:
            result = asyncio.run(http_orders(server, product_id, clients=clients, total=orders))
        stored = asyncio.run(_orders_for(url, product_id))
        created = stored - clients * 20  # minus the warm-up's orders
        check = "ok" if created == result.statuses[201] else f"MISMATCH: {created} rows"
        print(f"  {label}: {result.summary()}")
        print(f"      ratio to database best: {result.rate / best:.2f}   (201s vs rows: {check})")
