"""Prometheus metrics: the series the service exports, and the functions that record them.

Label values are always bounded: route templates (never raw paths), known HTTP methods, status
codes, refusal reasons, job statuses, GC generations, and at most METRICS_STOCK_PRODUCTS product
ids. How several processes add up their values is `exposition`'s concern; the gauges sampled once
a second (pool, order queue, runtime) are `sampling`'s.

Cost. The request middleware and `Database.connection` record through label children resolved
once and cached: a request pays a dict lookup and a few locked additions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from starlette.types import Scope

from flashsale.errors import AppError
from flashsale.request_context import method, operation

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client chose in-memory or file-backed values by this same test, at its import.
MULTIPROCESS = MULTIPROC_DIR_VARIABLE in os.environ
if MULTIPROCESS:
    # The series below are files there from their creation on: a directory the environment
    # names but nobody made yet must exist first (`multiprocess_directory` wipes it at start).
    os.makedirs(os.environ[MULTIPROC_DIR_VARIABLE], exist_ok=True)

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
ORDERS_CANCELLED = Counter(
    "flashsale_orders_cancelled", "Orders cancelled (each once)", registry=REGISTRY
)
ORDER_UNITS_RETURNED = Counter(
    "flashsale_order_units_returned",
    "Units put back in stock by cancelled orders",
    registry=REGISTRY,
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
JOB_EVENT_STREAMS = Gauge(
    "flashsale_job_event_streams",
    "Open GET /jobs/{job_id}/events streams, summed over live processes",
    multiprocess_mode="livesum",
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

_PLACE_ORDER = ("POST", "/orders")
JOB_FINAL_STATUSES = ("COMPLETED", "FAILED", "CANCELLED")
for _status in JOB_FINAL_STATUSES:  # present at zero from the start, so rate() sees the first one
    SETTLEMENT_JOBS.labels(_status)

_request_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
_operation_series: dict[str, Histogram] = {}
_refusal_series: dict[str, Counter] = {}


def export_refusals_from_zero(reasons: Iterable[str]) -> None:
    """Export these refusal reasons at zero before the first one happens (rate() sees it)."""
    for reason in reasons:
        _refusal_series[reason] = ORDERS_REJECTED.labels(reason)


def observe_request(scope: Scope, route: str, status: int, seconds: float) -> None:
    key = (method(scope), route, status)
    series = _request_series.get(key)
    if series is None:
        series = (
            HTTP_REQUESTS.labels(key[0], route, str(status)),
            HTTP_DURATION.labels(key[0], route),
        )
        _request_series[key] = series
    series[0].inc()
    series[1].observe(seconds)


def observe_db_operation(seconds: float, label: str | None = None) -> None:
    """How long one unit of work held its connection, under `label` (default: the current
    request's method and route, or background)."""
    label = label or operation()
    series = _operation_series.get(label)
    if series is None:
        series = _operation_series[label] = DB_QUERY.labels(label)
    series.observe(seconds)


def record_order_placed(quantity: int) -> None:
    ORDERS_CREATED.inc()
    ORDER_UNITS_SOLD.inc(quantity)


def record_order_cancelled(quantity: int) -> None:
    ORDERS_CANCELLED.inc()
    ORDER_UNITS_RETURNED.inc(quantity)


def record_error(scope: Scope, error: AppError) -> None:
    """Every error response passes here; those that refuse an order placement are counted,
    under the reason their class names. By path, not route: the body guard answers before
    routing."""
    reason = error.refusal
    if reason is None or (scope["method"], scope["path"]) != _PLACE_ORDER:
        return
    series = _refusal_series.get(reason)
    if series is None:
        series = _refusal_series[reason] = ORDERS_REJECTED.labels(reason)
    series.inc()


def record_job_finished(status: str, seconds: float | None) -> None:
    """Settlement: once per job, with its final status (COMPLETED, FAILED or CANCELLED) and how
    long it ran (None for a job cancelled before it started)."""
    SETTLEMENT_JOBS.labels(status).inc()
    if seconds is not None:
        SETTLEMENT_JOB_DURATION.labels(status).observe(seconds)


def record_transactions_processed(count: int) -> None:
    """Settlement: after each batch, with the number of transactions it aggregated."""
    SETTLEMENT_TRANSACTIONS.inc(count)
