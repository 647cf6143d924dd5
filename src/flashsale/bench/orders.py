"""`flashsale bench orders`: one hot product through HTTP, against the HTTP stack's own ceiling
and the database's best single-order rate, all measured in the same invocation on the same box.

1. pgbench runs the service's single-order statement for a product without rules
   (`PLACE_PLAIN_ORDER_SQL`) on one hot row at several client counts: the database's best
   single-order rate here, now.
2. Optionally (`--coalescer`), the coalescer alone in this process, without HTTP.
3. Per configuration, `flashsale serve` processes (started as a user would, default logging)
   and, at each connection count, with the same load generator (wrk, one thread; the Python
   generator only when wrk is missing):
   - the HTTP ceiling: an unknown route (the 404 envelope, no database);
   - POST /orders on a fresh hot product (huge stock), after a warm-up: orders/s, p50, p99,
     orders per write (the product's version), WAL bytes per order, the orders table's scans,
     and every 2xx checked against the rows stored;
   - after the first count's run, `--existing-orders` rows are inserted behind the servers' back
     (their cached plans stay, statistics go stale: no ANALYZE) and the run is measured again;
   - POST /orders on a sold-out product: every answer must be 409, nothing may be stored.
4. The ledger of every product the bench created, and a summary with the targets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from tqdm import tqdm

from flashsale.bench import wrk
from flashsale.bench.harness import LiveServer, running_server
from flashsale.bench.loadgen import LoadResult, request_bytes, run_load
from flashsale.orders.service import PLACE_PLAIN_ORDER_SQL

HUGE_STOCK = 10**12
SOLD_OUT_STOCK = 100
WARMUP_S = 2.0
CEILING_PATH = "/bench-no-such-route"
EXISTING_CHUNK = 500_000
COALESCER_ORDERS = 20_000

# Targets (printed beside the figures; a miss is reported, never an exit status).
TARGET_X_CEILING = 0.6  # orders/s vs the 404 ceiling, at 64 connections
TARGET_X_PGBENCH = 1.5  # orders/s vs pgbench's best, at 64 connections
TARGET_GROWN = 0.9  # grown table vs fresh table
TARGET_P99_MS = {64: 50.0, 512: 250.0}
TARGET_SOLD_OUT_X_CEILING = 0.8
TARGET_RULES = 0.8  # max_per_buyer on the hot product vs none, buyers spread
RULE_ROUNDS = 3  # the target is judged on the median of the rounds' ratios


# --- pgbench: the database's best single-order rate -------------------------------------------


def pgbench_binary() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    from flashsale.db import import_pgserver

    return str(Path(import_pgserver().__file__).parent / "pginstall" / "bin" / "pgbench")


def pgbench_script() -> str:
    """The service's plain-order statement with pgbench variables in place of its parameters."""
    sql = PLACE_PLAIN_ORDER_SQL.replace("$1", ":pid").replace("$2", "1").replace("$3", "'pgbench'")
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


# --- the load generator -------------------------------------------------------------------------


@dataclass
class Load:
    """wrk when it is installed, the Python generator otherwise; same `LoadResult` either way."""

    runner: asyncio.Runner
    wrk_path: str | None

    @property
    def name(self) -> str:
        if self.wrk_path is None:
            return "the Python asyncio generator (in this process)"
        version = subprocess.run(  # noqa: S603 - our own binary
            [self.wrk_path, "-v"], capture_output=True, text=True, check=False
        ).stdout.split(" [")[0]
        return f"{version or 'wrk'} (1 thread)"

    def run(
        self, server: LiveServer, *, connections: int, seconds: float, method: str, path: str,
        body: dict[str, Any] | None = None,
    ) -> LoadResult:  # fmt: skip
        text = None if body is None else json.dumps(body)
        if text is not None and wrk.COUNTER in text and self.wrk_path is None:
            raise RuntimeError("numbered requests need wrk (Debian package: wrk)")
        if self.wrk_path is not None:
            result = wrk.run(
                server.url + path, connections=connections, seconds=seconds, method=method,
                body=text, executable=self.wrk_path,
            )  # fmt: skip
        else:
            request = request_bytes(method, path, None if text is None else text.encode())
            generator = run_load(
                "127.0.0.1", server.port, connections=connections, seconds=seconds, request=request
            )
            result = self.runner.run(generator)
        server.check_alive()
        return result


# --- the database side --------------------------------------------------------------------------


@dataclass(frozen=True)
class TableStats:
    seq_scan: int
    seq_tup_read: int
    idx_scan: int
    n_tup_ins: int

    def minus(self, other: TableStats) -> TableStats:
        return TableStats(
            self.seq_scan - other.seq_scan,
            self.seq_tup_read - other.seq_tup_read,
            self.idx_scan - other.idx_scan,
            self.n_tup_ins - other.n_tup_ins,
        )

    def describe(self) -> str:
        return (
            f"seq_scan +{self.seq_scan:,}, seq_tup_read +{self.seq_tup_read:,}, "
            f"idx_scan +{self.idx_scan:,}"
        )


class BenchDatabase:
    """The bench's view of the database. Its own connection never reads `orders` (so it adds
    nothing to the table's scan counters); counting orders uses short connections with
    sequential scans off, outside the windows where the counters are measured."""

    def __init__(self, runner: asyncio.Runner, url: str) -> None:
        self.runner = runner
        self.url = url
        self.conn: asyncpg.Connection = runner.run(asyncpg.connect(url))
        self.products: dict[int, tuple[str, int]] = {}  # id -> (what for, initial stock)
        self._ins_base = 0
        self.orders_at_start = self.count_all_orders()
        self._ins_base = self.stats().n_tup_ins

    def close(self) -> None:
        self.runner.run(self.conn.close())

    def fetchval(self, sql: str, *args: Any) -> Any:
        return self.runner.run(self.conn.fetchval(sql, *args))

    def create_product(self, what: str, stock: int, *, max_per_buyer: int | None = None) -> int:
        product_id = int(
            self.fetchval(
                "INSERT INTO products (name, price, stock, max_per_buyer) "
                "VALUES ($1, 1000, $2, $3) RETURNING id",
                f"bench {what}",
                stock,
                max_per_buyer,
            )
        )
        self.products[product_id] = (what, stock)
        return product_id

    def stock(self, product_id: int) -> int:
        return int(self.fetchval("SELECT stock FROM products WHERE id = $1", product_id))

    def version(self, product_id: int) -> int:
        return int(self.fetchval("SELECT version FROM products WHERE id = $1", product_id))

    def sold(self) -> int:
        """Orders (units: every bench order is for 1) placed on the bench's products so far."""
        ids, stocks = list(self.products), [stock for _, stock in self.products.values()]
        return int(
            self.fetchval(
                "SELECT coalesce(sum(i.stock - p.stock), 0) FROM products p "
                "JOIN unnest($1::bigint[], $2::bigint[]) AS i(id, stock) ON p.id = i.id",
                ids,
                stocks,
            )
        )

    def orders_rows(self) -> int:
        """Rows in `orders` now (those at the start plus the bench's)."""
        return self.orders_at_start + self.sold()

    async def _count(self, sql: str, *args: Any) -> int:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute("SET enable_seqscan = off")
            return int(await conn.fetchval(sql, *args))
        finally:
            await conn.close()

    def count_orders(self, product_id: int) -> int:
        return self.runner.run(
            self._count("SELECT count(*) FROM orders WHERE product_id = $1", product_id)
        )

    def counters(self, product_id: int) -> int:
        """Buyers holding units of the product (rows of its per-buyer limit's counters)."""
        return self.runner.run(
            self._count("SELECT count(*) FROM buyer_holdings WHERE product_id = $1", product_id)
        )

    def count_all_orders(self) -> int:
        return self.runner.run(self._count("SELECT count(*) FROM orders"))

    def quiesce(self, product_id: int, timeout_s: float = 60) -> None:
        """Wait until the product's stock stops changing: the requests a load generator left in
        flight when it stopped have been completed by the server."""
        deadline = time.monotonic() + timeout_s
        last, steady = self.stock(product_id), 0
        while steady < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.stock(product_id)
            steady = steady + 1 if now == last else 0
            last = now

    def stats(self) -> TableStats:
        row = self.runner.run(
            self.conn.fetchrow(
                "SELECT coalesce(seq_scan, 0) AS seq_scan, coalesce(seq_tup_read, 0) AS "
                "seq_tup_read, coalesce(idx_scan, 0) AS idx_scan, n_tup_ins "
                "FROM pg_stat_user_tables WHERE relid = 'orders'::regclass"
            )
        )
        assert row is not None
        return TableStats(
            int(row["seq_scan"]), int(row["seq_tup_read"]), int(row["idx_scan"]),
            int(row["n_tup_ins"]),
        )  # fmt: skip

    def settled_stats(self, timeout_s: float = 12) -> TableStats:
        """The orders table's counters once every backend has reported the rows it inserted.

        Backends publish their counters at most once a second, and an idle one that published
        less than a second ago waits 10 s: wait until the counted inserts reach the rows the
        bench's products lost in stock (one order per unit), so the window is complete."""
        deadline = time.monotonic() + timeout_s
        expected = self.sold()
        while True:
            stats = self.stats()
            if stats.n_tup_ins - self._ins_base >= expected or time.monotonic() > deadline:
                return stats
            time.sleep(0.25)

    def wal_lsn(self) -> str:
        return str(self.fetchval("SELECT pg_current_wal_lsn()::text"))

    def wal_since(self, lsn: str) -> int:
        return int(
            self.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)", lsn)
        )

    def checkpoints(self) -> int | None:
        """Checkpoints so far (after one, the first change to each page logs the whole page)."""
        for sql in (
            "SELECT num_timed + num_requested FROM pg_stat_checkpointer",  # PostgreSQL 17+
            "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter",
        ):
            try:
                return int(self.fetchval(sql))
            except asyncpg.PostgresError:
                continue
        return None

    def other_transactions(self) -> int:
        """Transactions other databases on this server have reported (they write WAL too)."""
        return int(
            self.fetchval(
                "SELECT coalesce(sum(xact_commit + xact_rollback), 0) FROM pg_stat_database "
                "WHERE datname IS DISTINCT FROM current_database()"
            )
        )

    def busy_elsewhere(self) -> int:
        """Sessions in other databases inside a statement now (a long one has written WAL that
        no finished-transaction counter shows yet)."""
        return int(
            self.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND state NOT IN ('idle') AND datname IS DISTINCT FROM current_database()"
            )
        )

    def insert_existing(self, product_id: int, rows: int) -> float:
        """`rows` orders for `product_id` (created with that stock), inserted in chunks, each in
        one transaction with the matching stock decrement; no ANALYZE. Returns the seconds."""

        async def insert() -> None:
            conn = await asyncpg.connect(self.url)
            try:
                with tqdm(total=rows, unit="rows", unit_scale=True, desc="    inserting") as bar:
                    for start in range(1, rows + 1, EXISTING_CHUNK):
                        stop = min(rows, start + EXISTING_CHUNK - 1)
                        async with conn.transaction():
                            await conn.execute(
                                "INSERT INTO orders (product_id, buyer_id, quantity, total_cents) "
                                "SELECT $1, 'bench-existing-' || g, 1, 1000 "
                                "FROM generate_series($2::bigint, $3::bigint) g",
                                product_id, start, stop,
                            )  # fmt: skip
                            await conn.execute(
                                "UPDATE products SET stock = stock - $2, version = version + 1, "
                                "updated_at = now() WHERE id = $1",
                                product_id, stop - start + 1,
                            )  # fmt: skip
                        bar.update(stop - start + 1)
            finally:
                await conn.close()

        started = time.perf_counter()
        self.runner.run(insert())
        return time.perf_counter() - started

    def ledger(self) -> list[tuple[int, str, int, int, int]]:
        """(id, what for, initial stock, stock, units ordered) for every product the bench made."""

        async def read() -> list[asyncpg.Record]:
            return await self.conn.fetch(
                "SELECT p.id, p.stock, (SELECT coalesce(sum(o.quantity), 0) FROM orders o "
                "WHERE o.product_id = p.id) AS ordered FROM products p WHERE p.id = ANY($1) "
                "ORDER BY p.id",
                list(self.products),
            )

        ledger = []
        for row in self.runner.run(read()):
            what, initial = self.products[row["id"]]
            ledger.append((int(row["id"]), what, initial, int(row["stock"]), int(row["ordered"])))
        return ledger


# --- the runs -----------------------------------------------------------------------------------


@dataclass
class OrdersRun:
    label: str
    connections: int
    table: str  # "fresh" or "grown"
    table_rows: int  # orders rows when the run started
    result: LoadResult
    ceiling: LoadResult
    rows: int  # orders stored during the run (counted once the server was done)
    writes: int  # writes of the product row during it: one per order, or one per batch
    wal_bytes: int
    other_transactions: int
    checkpoints: int | None
    scans: TableStats

    @property
    def mean_batch(self) -> float:
        return self.rows / self.writes if self.writes else 0.0

    @property
    def wal_per_order(self) -> float:
        return self.wal_bytes / self.rows if self.rows else math.nan

    @property
    def in_flight(self) -> int:
        """Orders stored that the generator never saw answered (wrk drops the requests in
        flight when its duration is over; the server still completes them)."""
        return self.rows - self.result.ok

    @property
    def count_ok(self) -> bool:
        allowed = self.connections if self.result.generator == "wrk" else 0
        return 0 <= self.in_flight <= allowed

    def count_check(self) -> str:
        text = f"orders stored {self.rows:,} vs 2xx {self.result.ok:,}"
        if not self.count_ok:
            return f"{text}: MISMATCH"
        if self.in_flight:
            return f"{text}: ok (+{self.in_flight} in flight when wrk stopped)"
        return f"{text}: ok"


@dataclass
class SoldOutRun:
    label: str
    connections: int
    product_id: int
    result: LoadResult
    ceiling: LoadResult
    problems: list[str] = field(default_factory=list)


@dataclass
class Bench:
    db: BenchDatabase
    load: Load
    seconds: float
    pgbench_best: float = math.nan
    runs: list[OrdersRun] = field(default_factory=list)
    grown: list[tuple[OrdersRun, OrdersRun]] = field(default_factory=list)
    rules: list[tuple[OrdersRun, OrdersRun]] = field(default_factory=list)  # (plain, limited)
    sold_out: list[SoldOutRun] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def ceiling(
        self, server: LiveServer, connections: int, body: dict[str, Any] | None = None
    ) -> LoadResult:
        """The same crowd on an unknown route: routing, middleware and the error envelope (with
        a body: POSTed, as numbered requests cost wrk more)."""
        options: dict[str, Any] = {
            "connections": connections, "method": "GET" if body is None else "POST", "body": body,
        }  # fmt: skip
        self.load.run(server, seconds=WARMUP_S, path=CEILING_PATH, **options)
        result = self.load.run(server, seconds=self.seconds, path=CEILING_PATH, **options)
        check = "all 404: ok" if result.non_2xx == result.requests else "MISMATCH: some 2xx"
        if result.non_2xx != result.requests:
            self.problems.append(f"HTTP ceiling at {connections}: {result.ok} 2xx answers")
        print(
            f"    HTTP ceiling, {options['method']} {CEILING_PATH}: {result.summary()}  ({check})"
        )
        return result

    def orders(
        self, server: LiveServer, label: str, *, product_id: int, connections: int, table: str,
        ceiling: LoadResult, buyers: str = "bench-buyer", record: bool = True,
    ) -> OrdersRun:  # fmt: skip
        """`buyers`: every order's buyer_id (containing `wrk.COUNTER`: a new buyer per order)."""
        db = self.db
        body = {"product_id": product_id, "quantity": 1, "buyer_id": buyers}
        options: dict[str, Any] = {
            "connections": connections, "method": "POST", "path": "/orders", "body": body,
        }  # fmt: skip
        self.load.run(server, seconds=WARMUP_S, **options)  # pool, prepared statements, caches
        db.quiesce(product_id)
        rows_before, version_before = db.count_orders(product_id), db.version(product_id)
        table_rows = db.orders_rows()
        stats_before = db.settled_stats()
        others_before, checkpoints_before = db.other_transactions(), db.checkpoints()
        busy = db.busy_elsewhere()
        lsn = db.wal_lsn()
        result = self.load.run(server, seconds=self.seconds, **options)
        db.quiesce(product_id)
        wal_bytes = db.wal_since(lsn)
        busy = max(busy, db.busy_elsewhere())
        others = db.other_transactions() - others_before
        checkpoints_after = db.checkpoints()
        checkpoints = (
            None
            if checkpoints_before is None or checkpoints_after is None
            else checkpoints_after - checkpoints_before
        )
        scans = db.settled_stats().minus(stats_before)
        rows = db.count_orders(product_id) - rows_before
        writes = db.version(product_id) - version_before
        run = OrdersRun(
            label, connections, table, table_rows, result, ceiling, rows, writes, wal_bytes,
            others, checkpoints, scans,
        )  # fmt: skip
        print(f"    POST /orders, {table} table ({table_rows:,} orders): {result.summary()}")
        print(
            f"        {result.rate / ceiling.rate:.2f}x HTTP ceiling, "
            f"{result.rate / self.pgbench_best:.2f}x pgbench best, "
            f"{run.mean_batch:.1f} orders per write, {run.wal_per_order:,.0f} WAL bytes per order"
        )
        if others or busy or checkpoints:
            print(
                f"        (WAL is server-wide: other databases reported {others:,} transactions "
                f"meanwhile, {busy} of their sessions were busy at the start or end, "
                f"{checkpoints} checkpoint(s) started; all add to it)"
            )
        print(f"        {run.count_check()}")
        coverage = (
            "the counters cover the run's rows"
            if scans.n_tup_ins >= rows
            else "some backends had not reported yet: incomplete"
        )
        print(
            f"        orders table during the run: {scans.describe()} "
            f"(n_tup_ins +{scans.n_tup_ins:,}: {coverage})"
        )
        if not run.count_ok:
            self.problems.append(f"{label}, {connections} connections, {table}: "
                                 f"{run.count_check()}")  # fmt: skip
        if record:
            self.runs.append(run)
        return run

    def shop_rules(self, server: LiveServer, label: str, connections: int) -> None:
        """Orders from a new buyer each (so a new counter row each) on a hot product with
        `max_per_buyer`, beside the same orders on one without, alternating, `RULE_ROUNDS`
        times; the ceiling with the same numbered requests."""
        ceiling = self.ceiling(server, connections, body={"buyer_id": f"b{wrk.COUNTER}"})
        for _ in range(RULE_ROUNDS):
            runs = {}
            for limit in (None, 2):
                what = f"max_per_buyer={limit}" if limit else "no limit"
                print(f"    a new buyer per order, {what}:")
                product_id = self.db.create_product(
                    f"hot product, {what}", HUGE_STOCK, max_per_buyer=limit
                )
                runs[limit] = self.orders(
                    server, label, product_id=product_id, connections=connections,
                    table="grown", ceiling=ceiling, buyers=f"b{wrk.COUNTER}", record=False,
                )  # fmt: skip
            counters = self.db.counters(product_id)
            if counters != self.db.count_orders(product_id):
                self.problems.append(f"{label}: {counters:,} buyer counters for the limited "
                                     "product's orders (one each expected)")  # fmt: skip
            ratio = runs[2].result.rate / runs[None].result.rate
            print(f"        limited / plain: {ratio:.2f}x   (target >= {TARGET_RULES})")
            self.rules.append((runs[None], runs[2]))

    def existing_orders(self, rows: int) -> None:
        product_id = self.db.create_product("existing orders (cold)", rows)
        print(
            f"    inserting {rows:,} orders for product {product_id} behind the servers' back "
            "(same processes, cached plans kept, no ANALYZE)"
        )
        elapsed = self.db.insert_existing(product_id, rows)
        stock = self.db.stock(product_id)
        print(f"    inserted in {elapsed:.1f} s ({rows / elapsed:,.0f} rows/s); its stock: {stock}")
        # The insert leaves ~1 GB of WAL and dirty pages behind: without this, the checkpoint it
        # triggers runs during the next measurement (fsync stalls: p99 ~0.5 s seen here), which
        # is the insert's cost, not the grown table's. A checkpoint changes no plan or statistic.
        started = time.perf_counter()
        try:
            self.db.fetchval("CHECKPOINT")
        except asyncpg.InsufficientPrivilegeError:
            print(
                "    no CHECKPOINT (needs superuser or pg_checkpoint): the insert's checkpoint may "
                "land in the run"
            )
        else:
            print(f"    CHECKPOINT (so the insert's writes do not land in the run): "
                  f"{time.perf_counter() - started:.1f} s")  # fmt: skip

    def sell_out(self, server: LiveServer) -> int:
        product_id = self.db.create_product("sold-out product", SOLD_OUT_STOCK)
        body = {"product_id": product_id, "quantity": 1, "buyer_id": "bench-sell-out"}
        with httpx.Client(base_url=server.url, timeout=30) as client:
            statuses = [
                client.post("/orders", json=body).status_code for _ in range(SOLD_OUT_STOCK)
            ]
            extra = client.post("/orders", json=body)
        code = extra.json().get("error", {}).get("code") if extra.status_code == 409 else None
        if statuses != [201] * SOLD_OUT_STOCK or code != "OUT_OF_STOCK":
            self.problems.append(
                f"selling out product {product_id}: statuses {sorted(set(statuses))}, then "
                f"{extra.status_code} {code}"
            )
        print(
            f"    sold-out product {product_id}: {statuses.count(201)} of {SOLD_OUT_STOCK} sold "
            f"one by one, the next order: {extra.status_code} {code}"
        )
        return product_id

    def sold_out_tail(
        self, server: LiveServer, label: str, product_id: int, connections: int, ceiling: LoadResult
    ) -> None:
        body = {"product_id": product_id, "quantity": 1, "buyer_id": "bench-late-buyer"}
        options: dict[str, Any] = {
            "connections": connections, "method": "POST", "path": "/orders", "body": body,
        }  # fmt: skip
        self.load.run(server, seconds=WARMUP_S, **options)
        result = self.load.run(server, seconds=self.seconds, **options)
        self.db.quiesce(product_id)
        run = SoldOutRun(label, connections, product_id, result, ceiling)
        if result.non_2xx != result.requests:
            run.problems.append(f"{result.ok:,} 2xx answers")
        if result.statuses and set(result.statuses) != {409}:
            run.problems.append(f"statuses {dict(result.statuses)}")
        with httpx.Client(base_url=server.url, timeout=30) as client:
            sample = client.post("/orders", json=body)
        if sample.status_code != 409 or sample.json()["error"]["code"] != "OUT_OF_STOCK":
            run.problems.append(f"a sample answer: {sample.status_code} {sample.text[:200]}")
        stock, rows = self.db.stock(product_id), self.db.count_orders(product_id)
        if stock != 0 or rows != SOLD_OUT_STOCK:
            run.problems.append(f"stock {stock}, {rows} orders rows")
        check = (
            f"MISMATCH: {'; '.join(run.problems)}"
            if run.problems
            else f"all non-2xx, a sample 409 OUT_OF_STOCK; stock 0, {SOLD_OUT_STOCK} orders: ok"
        )
        print(f"    POST /orders, sold out: {result.summary()}")
        print(f"        {result.rate / ceiling.rate:.2f}x HTTP ceiling   ({check})")
        if run.problems:
            self.problems.append(f"{label}, sold out at {connections} connections: {check}")
        self.sold_out.append(run)


async def _coalescer_capacity(url: str, product_id: int, *, clients: int, batch_max: int) -> float:
    """Orders/s through an `OrderCoalescer` in this process, callers in a closed loop: the
    capacity of flash-sale mode itself (queues, batch statement, database), without HTTP."""
    from flashsale.config import Settings
    from flashsale.db import Database
    from flashsale.orders.coalescer import OrderCoalescer
    from flashsale.orders.schemas import OrderCreate
    from flashsale.orders.service import OrderRequest

    total = COALESCER_ORDERS
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


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'local socket'}:{parts.port or 5432}{parts.path}"


def run(
    url: str,
    *,
    clients: list[int],
    seconds: int,
    configurations: list[dict[str, str]],
    batch_max: int,
    existing_orders: int,
    coalescer: bool,
    pgbench_clients: list[int],
    pgbench_seconds: int,
    generator: str = "auto",
) -> None:
    # The bench's own HTTP client (selling out a product) logs nothing per request; the
    # servers log as configured.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    wrk_path = wrk.binary() if generator in ("auto", "wrk") else None
    if generator == "wrk" and wrk_path is None:
        raise RuntimeError("--generator wrk: wrk is not on PATH (Debian package: wrk)")
    with asyncio.Runner() as runner:
        load = Load(runner, wrk_path)
        db = BenchDatabase(runner, url)
        try:
            bench = Bench(db, load, seconds)
            _run(bench, url, clients=clients, configurations=configurations,
                 batch_max=batch_max, existing_orders=existing_orders, coalescer=coalescer,
                 pgbench_clients=pgbench_clients, pgbench_seconds=pgbench_seconds)  # fmt: skip
        finally:
            db.close()


def _run(
    bench: Bench, url: str, *, clients: list[int], configurations: list[dict[str, str]],
    batch_max: int, existing_orders: int, coalescer: bool, pgbench_clients: list[int],
    pgbench_seconds: int,
) -> None:  # fmt: skip
    db, load = bench.db, bench.load
    version = db.fetchval("SHOW server_version")
    print(
        f"flashsale bench orders: load from {load.name}, {bench.seconds} s per run after a "
        f"{WARMUP_S:g} s warm-up\ndatabase: PostgreSQL {version} at {_where(url)}, "
        f"{db.orders_at_start:,} orders at the start"
    )
    if load.wrk_path is None:
        print(
            "WARNING: no wrk (not on PATH, or --generator python): the load comes from the "
            "Python generator in this "
            "process, which tops out near 4k req/s on 2 cores and competes with the server for "
            "CPU; the figures below may measure the generator, not the server. Install the "
            "Debian package `wrk` (apt-get install wrk)."
        )

    print(f"\ndatabase ceiling: pgbench, the plain order statement, {pgbench_seconds} s each")
    pgbench_product = db.create_product("pgbench hot product", HUGE_STOCK)
    baseline = {}
    for count in pgbench_clients:
        baseline[count] = run_pgbench(url, pgbench_product, count, pgbench_seconds)
        print(f"  {count:4d} clients: {baseline[count]:8,.0f} orders/s")
    best_clients, bench.pgbench_best = max(baseline.items(), key=lambda item: item[1])
    print(f"  best: {bench.pgbench_best:,.0f} orders/s at {best_clients} clients")

    if coalescer:
        print(
            f"\nflash-sale mode without HTTP: the coalescer in this process, batch max {batch_max}"
        )
        for count in clients:
            product_id = db.create_product("coalescer hot product", HUGE_STOCK)
            rate = db.runner.run(
                _coalescer_capacity(url, product_id, clients=count, batch_max=batch_max)
            )
            print(
                f"  {count:4d} callers: {rate:8,.0f} orders/s   "
                f"{rate / bench.pgbench_best:.2f}x pgbench best"
            )

    for env in configurations:
        label = " ".join(f"{k}={v}" for k, v in env.items())
        print(f"\n== {label}")
        with running_server(url, env) as server:
            print(f"  server pid {server.process.pid} on {server.url}")
            hot = db.create_product("hot product", HUGE_STOCK)
            sold_out = bench.sell_out(server)
            for index, count in enumerate(clients):
                print(f"  {count} connections")
                ceiling = bench.ceiling(server, count)
                table = "fresh" if index == 0 else "grown" if existing_orders else "fresh"
                fresh = bench.orders(
                    server, label, product_id=hot, connections=count, table=table, ceiling=ceiling
                )
                if index == 0 and existing_orders:
                    bench.existing_orders(existing_orders)
                    grown = bench.orders(
                        server, label, product_id=hot, connections=count, table="grown",
                        ceiling=ceiling,
                    )  # fmt: skip
                    ratio = grown.result.rate / fresh.result.rate
                    print(f"        grown / fresh: {ratio:.2f}x   (target >= {TARGET_GROWN})")
                    bench.grown.append((fresh, grown))
                if index == 0 and load.wrk_path is not None:
                    bench.shop_rules(server, label, count)
                bench.sold_out_tail(server, label, sold_out, count, ceiling)

    _ledger(bench)
    _summary(bench, best_clients)


def _ledger(bench: Bench) -> None:
    print("\nledger: stock + units ordered == initial stock, for every product the bench made")
    for product_id, what, initial, stock, ordered in bench.db.ledger():
        ok = stock + ordered == initial
        print(
            f"  product {product_id:>6} ({what}): {stock:,} + {ordered:,} vs {initial:,}: "
            f"{'ok' if ok else 'MISMATCH'}"
        )
        if not ok:
            bench.problems.append(f"ledger of product {product_id}: MISMATCH")


def _mark(ok: bool) -> str:
    return "" if ok else " MISSED"


def _summary(bench: Bench, best_clients: int) -> None:
    print(
        f"\nsummary  (pgbench best {bench.pgbench_best:,.0f} orders/s at {best_clients} clients; "
        f"{bench.seconds} s per run)"
    )
    misses = (
        _summary_orders(bench)
        + _summary_grown(bench)
        + _summary_rules(bench)
        + _summary_sold_out(bench)
    )
    print_verdict(misses, bench.problems, all_ok="every count and ledger ok")


def print_verdict(misses: list[str], problems: list[str], *, all_ok: str) -> None:
    """The bench's last lines: the targets missed (never an exit status), then its checks."""
    print()
    if misses:
        print("targets missed:")
        for miss in misses:
            print(f"  - {miss}")
    else:
        print("every target met")
    if problems:
        print("problems:")
        for problem in problems:
            print(f"  - {problem}")
    else:
        print(f"checks: {all_ok}")


def _summary_orders(bench: Bench) -> list[str]:
    misses = []
    print(
        f"  {'conns':>5}  {'table':>5}  {'orders/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}  "
        f"{'x 404':>5}  {'x pgb':>5}  {'batch':>6}  {'WAL B/o':>7}  {'seqscan':>7}  "
        f"{'count':>8}  configuration"
    )
    for r in bench.runs:
        res = r.result
        p99, x_ceiling = res.percentile_ms(99), res.rate / r.ceiling.rate
        x_pgbench = res.rate / bench.pgbench_best
        marks = []
        where = f"{r.label}, {r.connections} connections, {r.table} table"
        if r.connections == 64 and x_ceiling < TARGET_X_CEILING:
            marks.append("x 404")
            misses.append(f"{where}: {x_ceiling:.2f}x HTTP ceiling < {TARGET_X_CEILING}")
        if r.connections == 64 and x_pgbench < TARGET_X_PGBENCH:
            marks.append("x pgb")
            misses.append(f"{where}: {x_pgbench:.2f}x pgbench best < {TARGET_X_PGBENCH}")
        target_p99 = TARGET_P99_MS.get(r.connections)
        if target_p99 is not None and not p99 <= target_p99:
            marks.append("p99")
            misses.append(f"{where}: p99 {p99:.1f} ms > {target_p99:g} ms")
        if r.scans.seq_scan:
            marks.append("seqscan")
            misses.append(
                f"{where}: {r.scans.seq_scan:,} sequential scans of orders during the run"
            )
        print(
            f"  {r.connections:5d}  {r.table:>5}  {res.rate:8,.0f}  {res.percentile_ms(50):7.1f}  "
            f"{p99:7.1f}  {x_ceiling:5.2f}  {x_pgbench:5.2f}  {r.mean_batch:6.1f}  "
            f"{r.wal_per_order:7,.0f}  {r.scans.seq_scan:7,}  "
            f"{'ok' if r.count_ok else 'MISMATCH':>8}  {r.label}"
            + (f"  MISSED: {', '.join(marks)}" if marks else "")
        )
    print(
        f"  targets: x 404 >= {TARGET_X_CEILING} and x pgb >= {TARGET_X_PGBENCH} at 64 "
        f"connections; p99 <= {TARGET_P99_MS[64]:g} ms at 64, <= {TARGET_P99_MS[512]:g} ms at "
        "512; seqscan (of orders, during the run) 0"
    )
    return misses


def _summary_grown(bench: Bench) -> list[str]:
    misses = []
    if bench.grown:
        print(f"\n  grown table vs fresh (target >= {TARGET_GROWN}x)")
    for fresh, grown in bench.grown:
        ratio = grown.result.rate / fresh.result.rate
        print(
            f"  {fresh.connections:5d}  {fresh.result.rate:8,.0f} -> {grown.result.rate:8,.0f}"
            f" orders/s ({fresh.table_rows:,} -> {grown.table_rows:,} orders): "
            f"{ratio:.2f}x{_mark(ratio >= TARGET_GROWN)}  {fresh.label}"
        )
        if ratio < TARGET_GROWN:
            misses.append(
                f"{fresh.label}, {fresh.connections} connections: grown table "
                f"{ratio:.2f}x fresh < {TARGET_GROWN}"
            )
    return misses


def _summary_rules(bench: Bench) -> list[str]:
    if not bench.rules:
        return []
    print(f"\n  max_per_buyer on the hot product vs none, a new buyer per order, alternating "
          f"(target: median >= {TARGET_RULES}x)")  # fmt: skip
    ratios: dict[tuple[str, int], list[float]] = {}
    for plain, limited in bench.rules:
        ratio = limited.result.rate / plain.result.rate
        ratios.setdefault((plain.label, plain.connections), []).append(ratio)
        print(
            f"  {plain.connections:5d}  {plain.result.rate:8,.0f} -> {limited.result.rate:8,.0f}"
            f" orders/s, p99 {plain.result.percentile_ms(99):.1f} -> "
            f"{limited.result.percentile_ms(99):.1f} ms: {ratio:.2f}x  {plain.label}"
        )
    misses = []
    for (label, connections), values in ratios.items():
        median = statistics.median(values)
        print(f"  {connections:5d}  median {median:.2f}x{_mark(median >= TARGET_RULES)}  {label}")
        if median < TARGET_RULES:
            misses.append(f"{label}: max_per_buyer median {median:.2f}x plain < {TARGET_RULES}")
    return misses


def _summary_sold_out(bench: Bench) -> list[str]:
    misses = []
    if bench.sold_out:
        print(f"\n  sold-out product (target >= {TARGET_SOLD_OUT_X_CEILING}x HTTP ceiling)")
    for s in bench.sold_out:
        ratio = s.result.rate / s.ceiling.rate
        print(
            f"  {s.connections:5d}  {s.result.rate:8,.0f} req/s  p99 "
            f"{s.result.percentile_ms(99):7.1f} ms  {ratio:.2f}x 404"
            f"{_mark(ratio >= TARGET_SOLD_OUT_X_CEILING)}  "
            f"{'MISMATCH' if s.problems else 'ok'}  {s.label}"
        )
        if ratio < TARGET_SOLD_OUT_X_CEILING:
            misses.append(
                f"{s.label}, {s.connections} connections: sold out {ratio:.2f}x HTTP ceiling "
                f"< {TARGET_SOLD_OUT_X_CEILING}"
            )
    return misses
