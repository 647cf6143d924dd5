"""Gauges sampled once a second, never on the request path: this process's connection pool,
order queue, CPU, memory, file descriptors and garbage collector.

What is sampled is read through small protocols, so this module needs nothing of the layers
above it (the database's `Database` and the coalescer satisfy them).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator
from typing import Protocol

from prometheus_client import Counter
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.process_collector import ProcessCollector

from flashsale.background import running
from flashsale.observability import metrics

SAMPLE_INTERVAL_S = 1.0


class Pool(Protocol):
    """What the sampler reads of a connection pool."""

    @property
    def size(self) -> int: ...  # the configured maximum
    @property
    def open_connections(self) -> int: ...
    @property
    def idle_connections(self) -> int: ...


class OrderQueue(Protocol):
    """What the sampler reads of the order coalescer."""

    @property
    def waiting(self) -> int: ...
    @property
    def in_flight(self) -> int: ...


_process_collector = ProcessCollector(registry=None)
_PROCESS_GAUGES = {
    "process_resident_memory_bytes": metrics.PROCESS_MEMORY,
    "process_open_fds": metrics.PROCESS_OPEN_FDS,
    "process_max_fds": metrics.PROCESS_MAX_FDS,
}
_reported_totals: dict[Counter, float] = {}


def _advance(counter: Counter, total: float) -> None:
    """Bring a counter that mirrors a running total (CPU seconds, GC runs) up to `total`."""
    delta = total - _reported_totals.get(counter, 0.0)
    if delta > 0:
        counter.inc(delta)
        _reported_totals[counter] = total


def sample(pool: Pool | None, orders: OrderQueue | None = None) -> None:
    # prometheus_client reads /proc; whatever it cannot read (no /proc here) is left out.
    for figure in (s for family in _process_collector.collect() for s in family.samples):
        if figure.name == "process_cpu_seconds_total":
            _advance(metrics.PROCESS_CPU, figure.value)
        elif figure.name in _PROCESS_GAUGES:
            _PROCESS_GAUGES[figure.name].set(figure.value)
    for generation, stats in enumerate(gc.get_stats()):
        _advance(metrics.GC_COLLECTIONS.labels(str(generation)), stats["collections"])
        _advance(metrics.GC_COLLECTED.labels(str(generation)), stats["collected"])
    if pool is not None:
        idle = pool.idle_connections
        metrics.DB_POOL_MAX.set(pool.size)
        metrics.DB_POOL_CONNECTIONS.labels("idle").set(idle)
        metrics.DB_POOL_CONNECTIONS.labels("in_use").set(pool.open_connections - idle)
    if orders is not None:
        metrics.ORDERS_WAITING.labels("queued").set(orders.waiting)
        metrics.ORDERS_WAITING.labels("in_batch").set(orders.in_flight)


async def _sample_forever(pool: Pool | None, orders: OrderQueue | None) -> None:
    while True:
        sample(pool, orders)
        await asyncio.sleep(SAMPLE_INTERVAL_S)


@contextlib.asynccontextmanager
async def sampling(pool: Pool | None, orders: OrderQueue | None = None) -> AsyncIterator[None]:
    """Keep this process's pool, order-queue and runtime gauges current while the block runs
    (the app's lifespan; `flashsale worker`). On exit, its live gauges leave the multiprocess
    sums."""
    try:
        async with running(_sample_forever(pool, orders)):
            yield
    finally:
        if metrics.MULTIPROCESS:
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
