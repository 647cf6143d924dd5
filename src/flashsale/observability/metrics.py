"""Prometheus metrics: the series the service exports and how every process contributes to them.

Label values are always bounded: route templates (never raw paths), known HTTP methods, status
codes, error codes, job statuses, GC generations, and at most METRICS_STOCK_PRODUCTS product ids.

Processes. With one server process the values live in memory. With several (`WEB_CONCURRENCY`
> 1), `flashsale serve` hands the workers an empty PROMETHEUS_MULTIPROC_DIR (before they import
prometheus_client); every process writes its values to its own files there, and the worker that
answers a scrape merges them all (prometheus_client's multiprocess mode). Counters and histograms
add up over every process that ran; per-process gauges (pool, memory, fds) add up over the live
ones. Figures read from the database at scrape time (stock, jobs waiting) are never written to
those files: the one process that answers the scrape reports them, once.

Cost. The request middleware and `Database.connection` record through label children resolved
once and cached: a request pays a dict lookup and a few locked additions. Pool and runtime gauges
are sampled once a second by `sampling()`, never on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.process_collector import ProcessCollector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from starlette.types import Scope

    from flashsale.config import Settings
    from flashsale.db import Database

log = structlog.get_logger()

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client chose in-memory or file-backed values by this same test, at its import.
MULTIPROCESS = MULTIPROC_DIR_VARIABLE in os.environ
SAMPLE_INTERVAL_S = 1.0

# `*_created` series would double the output (and read oddly as `orders_created_created`).
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry()

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_JOB_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

# HTTP
HTTP_REQUESTS = Counter(
    "flashsale_http_requests",
    "HTTP requests by method, route template and response status",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "flashsale_http_request_duration_seconds",
    "HTTP request latency in the server, from the parsed request to the last byte sent",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

# Orders
ORDERS_CREATED = Counter(
    "flashsale_orders_created", "Orders placed (idempotent replays excluded)", registry=REGISTRY
)
ORDER_UNITS_SOLD = Counter(
    "flashsale_order_units_sold", "Units sold by the orders placed", registry=REGISTRY
)
ORDERS_REJECTED = Counter(
    "flashsale_orders_rejected",
    "Order placements refused, by reason",
    ["reason"],
    registry=REGISTRY,
)

ORDERS_SOLD_OUT_FROM_MEMORY = Counter(
    "flashsale_orders_sold_out_from_memory",
    "Out-of-stock refusals answered from the sold-out cache, without the database (also "
    "counted in flashsale_orders_rejected_total)",
    registry=REGISTRY,
)

# Settlement jobs (recorded by the job code; waiting/running are read at scrape time)
SETTLEMENT_JOBS = Counter(
    "flashsale_settlement_jobs",
    "Settlement jobs that ended, by final status",
    ["status"],
    registry=REGISTRY,
)
SETTLEMENT_JOB_DURATION = Histogram(
    "flashsale_settlement_job_duration_seconds",
    "Settlement job run time, from start to final status",
    ["status"],
    buckets=_JOB_BUCKETS,
    registry=REGISTRY,
)
SETTLEMENT_TRANSACTIONS = Counter(
    "flashsale_settlement_transactions_processed",
    "Payment transactions aggregated by settlement jobs",
    registry=REGISTRY,
)

# Flash-sale mode (order coalescing)
ORDER_BATCH_SIZE = Histogram(
    "flashsale_order_batch_size",
    "Orders placed together in one batch transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    registry=REGISTRY,
)
ORDERS_WAITING = Gauge(
    "flashsale_orders_waiting",
    "Orders waiting for a batch (queued) or in a batch in flight, summed over live processes",
    ["state"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)

# Database
DB_POOL_MAX = Gauge(
    "flashsale_db_pool_max_connections",
    "Configured pool size (DB_POOL_SIZE), summed over live processes",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
DB_POOL_CONNECTIONS = Gauge(
    "flashsale_db_pool_connections",
    "Open pool connections by state (in_use, idle), summed over live processes",
    ["state"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
DB_ACQUIRE = Histogram(
    "flashsale_db_pool_acquire_duration_seconds",
    "Wait for a pooled connection (FIFO gate plus pool)",
    buckets=_WAIT_BUCKETS,
    registry=REGISTRY,
)
DB_QUERY = Histogram(
    "flashsale_db_query_duration_seconds",
    "Time a connection is held for one unit of work (one statement, or the transaction a "
    "service opens), by operation: the request's method and route template, or background",
    ["operation"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

# Runtime: this process's figures, copied by the sampler so that multiprocess mode can add them up
PROCESS_CPU = Counter(
    "process_cpu_seconds", "User and system CPU time spent, in seconds", registry=REGISTRY
)
PROCESS_MEMORY = Gauge(
    "process_resident_memory_bytes",
    "Resident memory, summed over live processes",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
PROCESS_OPEN_FDS = Gauge(
    "process_open_fds",
    "Open file descriptors, summed over live processes",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
PROCESS_MAX_FDS = Gauge(
    "process_max_fds",
    "Open file descriptor limit of one process",
    multiprocess_mode="livemax",  # the same in every process; max ignores a not-yet-sampled 0
    registry=REGISTRY,
)
GC_COLLECTIONS = Counter(
    "python_gc_collections",
    "Garbage collector runs, by generation",
    ["generation"],
    registry=REGISTRY,
)
GC_COLLECTED = Counter(
    "python_gc_objects_collected",
    "Objects freed by the garbage collector, by generation",
    ["generation"],
    registry=REGISTRY,
)

# Error codes that refuse an order placement, and the reason each is counted under.
_REFUSALS = {
    "OUT_OF_STOCK": "out_of_stock",
    "PRODUCT_NOT_FOUND": "product_not_found",
    "VALIDATION_ERROR": "validation",
    "PAYLOAD_TOO_LARGE": "validation",
    "UNSUPPORTED_MEDIA_TYPE": "validation",
    "IDEMPOTENCY_KEY_IN_USE": "idempotency_key_in_use",
    "IDEMPOTENCY_KEY_REUSED": "idempotency_key_reused",
    "ORDERS_BUSY": "busy",
    "ORDER_BATCH_FAILED": "batch_failed",
    "DATABASE_UNAVAILABLE": "database_unavailable",
    "DATABASE_TIMEOUT": "database_timeout",
}
_REFUSED = {code: ORDERS_REJECTED.labels(reason) for code, reason in _REFUSALS.items()}
_PLACE_ORDER = ("POST", "/orders")
JOB_FINAL_STATUSES = ("COMPLETED", "FAILED", "CANCELLED")
for _status in JOB_FINAL_STATUSES:  # present at zero from the start, so rate() sees the first one
    SETTLEMENT_JOBS.labels(_status)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_request_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
_operation_series: dict[str, Histogram] = {}
# The request being served by this task: lets `Database.connection` name its operation.
_current_request: ContextVar[Scope | None] = ContextVar("flashsale_request", default=None)


def route_template(scope: Scope) -> str:
    """The matched route's path template (never the raw path, which is unbounded)."""
    route: Any = scope.get("route")
    return str(getattr(route, "path", "unmatched"))


def _method(scope: Scope) -> str:
    method: str = scope["method"]
    return method if method in _METHODS else "OTHER"


def enter_request(scope: Scope) -> None:
    _current_request.set(scope)


def observe_request(scope: Scope, route: str, status: int, seconds: float) -> None:
    method = _method(scope)
    key = (method, route, status)
    series = _request_series.get(key)
    if series is None:
        series = (
            HTTP_REQUESTS.labels(method, route, str(status)),
            HTTP_DURATION.labels(method, route),
        )
        _request_series[key] = series
    series[0].inc()
    series[1].observe(seconds)


def observe_db_operation(seconds: float, operation: str | None = None) -> None:
    if operation is None:
        scope = _current_request.get()
        operation = f"{_method(scope)} {route_template(scope)}" if scope else "background"
    series = _operation_series.get(operation)
    if series is None:
        series = _operation_series[operation] = DB_QUERY.labels(operation)
    series.observe(seconds)


def record_order_placed(quantity: int) -> None:
    ORDERS_CREATED.inc()
    ORDER_UNITS_SOLD.inc(quantity)


def record_error(scope: Scope, code: str) -> None:
    """Every error response passes here; those that refuse an order placement are counted."""
    counter = _REFUSED.get(code)
    if counter is not None and (scope["method"], route_template(scope)) == _PLACE_ORDER:
        counter.inc()


def record_job_finished(status: str, seconds: float | None) -> None:
    """Settlement: once per job, with its final status (COMPLETED, FAILED or CANCELLED) and how
    long it ran (None for a job cancelled before it started)."""
    SETTLEMENT_JOBS.labels(status).inc()
    if seconds is not None:
        SETTLEMENT_JOB_DURATION.labels(status).observe(seconds)


def record_transactions_processed(count: int) -> None:
    """Settlement: after each batch, with the number of transactions it aggregated."""
    SETTLEMENT_TRANSACTIONS.inc(count)


# Sampling: pool and runtime gauges of this process, once a second.

_process_collector = ProcessCollector(registry=None)
_PROCESS_GAUGES = {
    "process_resident_memory_bytes": PROCESS_MEMORY,
    "process_open_fds": PROCESS_OPEN_FDS,
    "process_max_fds": PROCESS_MAX_FDS,
}
_reported_totals: dict[Counter, float] = {}


def _advance(counter: Counter, total: float) -> None:
    """Bring a counter that mirrors a running total (CPU seconds, GC runs) up to `total`."""
    delta = total - _reported_totals.get(counter, 0.0)
    if delta > 0:
        counter.inc(delta)
        _reported_totals[counter] = total


class OrderQueue(Protocol):
    """What the sampler reads of the order coalescer."""

    @property
    def waiting(self) -> int: ...
    @property
    def in_flight(self) -> int: ...


def sample(database: Database | None, orders: OrderQueue | None = None) -> None:
    # prometheus_client reads /proc; whatever it cannot read (no /proc here) is left out.
    for figure in (s for family in _process_collector.collect() for s in family.samples):
        if figure.name == "process_cpu_seconds_total":
            _advance(PROCESS_CPU, figure.value)
        elif figure.name in _PROCESS_GAUGES:
            _PROCESS_GAUGES[figure.name].set(figure.value)
    for generation, stats in enumerate(gc.get_stats()):
        _advance(GC_COLLECTIONS.labels(str(generation)), stats["collections"])
        _advance(GC_COLLECTED.labels(str(generation)), stats["collected"])
    if database is not None:
        idle = database.pool.get_idle_size()
        DB_POOL_MAX.set(database.size)
        DB_POOL_CONNECTIONS.labels("idle").set(idle)
        DB_POOL_CONNECTIONS.labels("in_use").set(database.pool.get_size() - idle)
    if orders is not None:
        ORDERS_WAITING.labels("queued").set(orders.waiting)
        ORDERS_WAITING.labels("in_batch").set(orders.in_flight)


async def _sample_forever(database: Database | None, orders: OrderQueue | None) -> None:
    while True:
        sample(database, orders)
        await asyncio.sleep(SAMPLE_INTERVAL_S)


@contextlib.asynccontextmanager
async def sampling(
    database: Database | None, orders: OrderQueue | None = None
) -> AsyncIterator[None]:
    """Keep this process's pool, order-queue and runtime gauges current while the block runs
    (the app's lifespan; `flashsale worker`). On exit, its live gauges leave the multiprocess
    sums."""
    task = asyncio.create_task(_sample_forever(database, orders))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if MULTIPROCESS:
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


# Exposition


@functools.cache
def scrape_registry() -> CollectorRegistry:
    """What this process renders: its own registry, or the merge of every process's files."""
    if not MULTIPROCESS:
        return REGISTRY
    merged = CollectorRegistry()
    MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
    return merged


class _Scrape:
    def __init__(self, extra: Iterable[Metric]) -> None:
        self.extra = extra

    def collect(self) -> Iterator[Metric]:
        yield from scrape_registry().collect()
        yield from self.extra


def render(extra: Iterable[Metric] = ()) -> bytes:
    """The Prometheus text exposition of every process's metrics plus `extra` families."""
    return generate_latest(_Scrape(extra))


def serve_worker_metrics(settings: Settings) -> WSGIServer | None:
    """`flashsale worker`: serve this process's metrics on METRICS_PORT from a daemon thread
    (`shutdown()` the returned server to stop it). A port already taken (another worker on the
    same host) costs the metrics endpoint, not the worker: it is logged and None is returned."""
    try:
        server, _ = start_http_server(
            settings.metrics_port, settings.server_host, registry=scrape_registry()
        )
    except OSError as exc:
        log.warning("metrics.port_unavailable", port=settings.metrics_port, error=str(exc))
        return None
    return server


@contextlib.contextmanager
def multiprocess_directory(workers: int) -> Iterator[None]:
    """`flashsale serve`: give the worker processes an empty PROMETHEUS_MULTIPROC_DIR.

    Set it before they start (they import prometheus_client fresh) and wipe what earlier runs
    left there, or dead processes' counters would be added to ours. Only this process's own
    files stay: with a directory named by the environment it already writes there. A directory
    we created is removed at exit; one the environment names is kept (and wiped at the next
    start). One process needs no directory unless the environment names one.
    """
    configured = os.environ.get(MULTIPROC_DIR_VARIABLE)
    if not configured and workers == 1:
        yield
        return
    path = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="flashsale-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    own = f"_{os.getpid()}.db"
    for leftover in path.iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover)
        elif not leftover.name.endswith(own):
            leftover.unlink()
    os.environ[MULTIPROC_DIR_VARIABLE] = str(path)
    try:
        yield
    finally:
        if not configured:
            shutil.rmtree(path, ignore_errors=True)
            del os.environ[MULTIPROC_DIR_VARIABLE]
