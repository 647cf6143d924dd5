"""`flashsale bench orders`: the hot product through HTTP against the database's own ceiling.

In one invocation:
1. pgbench runs the exact single-order statement the service uses (`PLACE_ORDER_SQL`) on one hot
   row at several client counts: the database's best single-order rate on this machine, now.
2. The coalescer alone, in this process without HTTP: what flash-sale mode allows when HTTP is
   not the bottleneck.
3. The HTTP ceiling: a `flashsale serve` process and the crowd on a trivial endpoint (an unknown
   route: the 404 envelope, no database), i.e. what the HTTP stack alone allows.
4. Real `flashsale serve` processes (flash-sale mode on and off, and any other settings to
   compare) take crowds of closed-loop HTTP clients that all buy the same product; orders/s, p50
   and p99 are measured, every 201 is checked against the rows, and the product's version tells
   how many writes (batches) placed them.
The figures that matter are the ratios of (3) to (1) and to (2): all ran on the same noisy box.
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

from flashsale.bench.loadgen import LoadResult, get, post_json, run_load
from flashsale.orders.service import PLACE_ORDER_SQL

HUGE_STOCK = 10**12


def pgbench_binary() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    from flashsale.db import import_pgserver

    return str(Path(import_pgserver().__file__).parent / "pginstall" / "bin" / "pgbench")


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


async def _product(url: str, product_id: int | None = None) -> tuple[int, int, int]:
    """(product id, its orders, its version); a new hot product when no id is given."""
    conn = await asyncpg.connect(url)
    try:
        if product_id is None:
            product_id = await conn.fetchval(
                "INSERT INTO products (name, price, stock) VALUES ('bench hot product', 1000, $1) "
                "RETURNING id",
                HUGE_STOCK,
            )
        row = await conn.fetchrow(
            "SELECT p.id, p.version, (SELECT count(*) FROM orders o WHERE o.product_id = p.id) "
            "AS orders FROM products p WHERE p.id = $1",
            product_id,
        )
        assert row is not None
        return int(row["id"]), int(row["orders"]), int(row["version"])
    finally:
        await conn.close()


@dataclass
class OrdersRun:
    result: LoadResult
    rows: int  # orders stored during the measured run
    writes: int  # writes of the product row during it: one per order, or one per batch

    @property
    def mean_batch(self) -> float:
        return self.rows / self.writes if self.writes else 0.0


def http_orders(url: str, server: Server, *, clients: int, total: int) -> OrdersRun:
    product_id, _, _ = asyncio.run(_product(url))

    def order(i: int) -> bytes:
        body = {"product_id": product_id, "quantity": 1, "buyer_id": f"bench-{i}"}
        return post_json("/orders", json.dumps(body).encode())

    # Warm-up: open pool connections, prepare statements, fill caches.
    warm_up = max(2000, clients * 4)
    asyncio.run(
        run_load("127.0.0.1", server.port, clients=clients, total=warm_up, make_request=order)
    )
    _, rows_before, version_before = asyncio.run(_product(url, product_id))
    result = asyncio.run(
        run_load("127.0.0.1", server.port, clients=clients, total=total, make_request=order)
    )
    _, rows_after, version_after = asyncio.run(_product(url, product_id))
    return OrdersRun(result, rows_after - rows_before, version_after - version_before)


def http_ceiling(server: Server, *, clients: int, total: int) -> LoadResult:
    """The same crowd on an unknown route: routing, middleware and the error envelope only."""
    request = get("/bench-http-ceiling")
    return asyncio.run(
        run_load(
            "127.0.0.1", server.port, clients=clients, total=total, make_request=lambda _: request
        )
    )


async def _coalescer_capacity(url: str, *, clients: int, total: int, batch_max: int) -> float:
    """Orders/s through an `OrderCoalescer` in this process, callers in a closed loop: the
    capacity of flash-sale mode itself (queues, batch statement, database), without HTTP."""
    from flashsale.config import Settings
    from flashsale.db import Database
    from flashsale.orders.coalescer import OrderCoalescer
    from flashsale.orders.schemas import OrderCreate
    from flashsale.orders.service import OrderRequest

    product_id, _, _ = await _product(url)
    database = await Database.connect(Settings(), url)
    try:
        coalescer = OrderCoalescer(
            database, batch_max=batch_max, max_waiting_per_product=total, max_total=total,
            idempotency_ttl_s=60,
        )  # fmt: skip
        requests = [
            OrderRequest.of(OrderCreate(product_id=product_id, quantity=1, buyer_id=f"c{i}"), None)
            for i in range(total)
        ]
        pending = iter(requests)

        async def caller() -> None:
            for request in pending:
                await coalescer.place(request)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(clients)))
        return total / (time.perf_counter() - started)
    finally:
        await database.close()


def run(
    url: str,
    *,
    clients: list[int],
    orders: int,
    configurations: list[dict[str, str]],
    batch_max: int,
    pgbench_clients: list[int],
    pgbench_seconds: int,
) -> None:
    print(f"flashsale bench orders: one hot product, {orders:,} orders per run")
    print(f"\ndatabase ceiling: pgbench, the service's order statement, {pgbench_seconds} s each")
    product_id, _, _ = asyncio.run(_product(url))
    baseline = {}
    for count in pgbench_clients:
        baseline[count] = run_pgbench(url, product_id, count, pgbench_seconds)
        print(f"  {count:4d} clients: {baseline[count]:8,.0f} orders/s")
    best_clients, best = max(baseline.items(), key=lambda item: item[1])
    print(f"  best: {best:,.0f} orders/s at {best_clients} clients")

    print(f"\nflash-sale mode without HTTP: the coalescer in this process, batch max {batch_max}")
    for count in clients:
        rate = asyncio.run(
            _coalescer_capacity(url, clients=count, total=orders, batch_max=batch_max)
        )
        print(f"  {count:4d} callers: {rate:8,.0f} orders/s   {rate / best:.2f}x database best")

    ceilings: dict[tuple[str, int], LoadResult] = {}
    summary: list[tuple[str, int, OrdersRun, LoadResult]] = []
    for env in configurations:
        label = " ".join(f"{k}={v}" for k, v in env.items())
        print(f"\n{label}")
        workers = env.get("WEB_CONCURRENCY", "1")
        with serve(url, env) as server:
            for count in clients:
                if (workers, count) not in ceilings:
                    ceiling = http_ceiling(server, clients=count, total=orders)
                    ceilings[(workers, count)] = ceiling
                    print(f"  {count:4d} clients, HTTP ceiling: {ceiling.summary()}")
                run_ = http_orders(url, server, clients=count, total=orders)
                ceiling = ceilings[(workers, count)]
                check = (
                    "ok"
                    if run_.rows == run_.result.statuses[201]
                    else f"MISMATCH: {run_.rows} rows"
                )
                print(f"  {count:4d} clients, POST /orders: {run_.result.summary()}")
                print(
                    f"        {run_.result.rate / best:.2f}x database best, "
                    f"{run_.result.rate / ceiling.rate:.2f}x HTTP ceiling, "
                    f"{run_.mean_batch:.1f} orders per write   (201s vs rows: {check})"
                )
                summary.append((label, count, run_, ceiling))

    print(f"\nsummary (database best: {best:,.0f} orders/s at {best_clients} pgbench clients)")
    print(
        f"  {'clients':>7}  {'orders/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}  {'x db':>5}  "
        f"{'x http':>6}  {'batch':>5}  configuration"
    )
    for label, count, run_, ceiling in summary:
        r = run_.result
        print(
            f"  {count:7d}  {r.rate:8,.0f}  {r.percentile_ms(50):7.1f}  {r.percentile_ms(99):7.1f}"
            f"  {r.rate / best:5.2f}  {r.rate / ceiling.rate:6.2f}  {run_.mean_batch:5.1f}  {label}"
        )
    print(
        "  targets with ORDER_COALESCING=on: x db >= 1.5; p99 <= 50 ms at 64 clients, "
        "<= 250 ms at 512"
    )
