"""How one settlement job computes: count, cut into batches, aggregate the batches in parallel.

1. Count the COMPLETED transactions of each UTC day of the range (index-only scans of the covering
   index, in parallel). Their sum is the job's `total`.
2. Cut each day into ceil(count / JOB_BATCH_SIZE) equal time slices: batches of about
   JOB_BATCH_SIZE rows (exactly so when a day's payments are spread evenly) that never straddle
   a day, so PostgreSQL groups a batch by merchant only and computes no day per row.
3. JOB_WORKERS connections take batches from one queue; PostgreSQL sums each batch
   (GROUP BY merchant_id), and the few partial sums per batch are merged here. Rows are never
   pulled into Python.

All connections of a job read one snapshot (exported by the first, imported by the others), so
the total counted first and the batches' sums describe exactly the same rows, whatever is written
to `transactions` meanwhile: `processed` ends equal to `total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import structlog

from flashsale.db import Connection
from flashsale.observability import metrics
from flashsale.settlement import service
from flashsale.settlement.service import SettlementRow

log = structlog.get_logger()

DAY = timedelta(days=1)
T = TypeVar("T")


@dataclass
class Progress:
    """What the job has done so far; read by whoever reports it."""

    processed: int = 0
    total: int | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    day: date
    start: datetime
    end: datetime


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def plan_batches(day_counts: Iterable[tuple[date, int]], batch_size: int) -> list[Batch]:
    """Cut each day into ceil(count / batch_size) equal, contiguous time slices [start, end)."""
    batches = []
    for day, count in day_counts:
        parts = math.ceil(count / batch_size)
        if not parts:
            continue
        start = day_start(day)
        bounds = [start + DAY * i / parts for i in range(parts + 1)]
        batches += [Batch(day, lo, hi) for lo, hi in itertools.pairwise(bounds)]
    return batches


@contextlib.contextmanager
def first_failure() -> Iterator[None]:
    """Re-raise a task group's first failure on its own: the others are its consequences."""
    try:
        yield
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None


async def run_all(coroutines: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run concurrently; on the first failure cancel the rest (and their queries) and raise it."""
    with first_failure():
        async with asyncio.TaskGroup() as group:
            for coroutine in coroutines:
                group.create_task(coroutine)


async def _on_each(
    connections: list[Connection],
    items: Iterable[T],
    work: Callable[[Connection, T], Awaitable[None]],
) -> None:
    """Every connection takes the next item from one shared queue until none is left."""
    queue = iter(items)

    async def drain(conn: Connection) -> None:
        for item in queue:
            await work(conn, item)

    await run_all(drain(conn) for conn in connections)


class _SharedSnapshot:
    """Up to `limit` pooled connections, each in a read-only REPEATABLE READ transaction on the
    snapshot of the first one. Opened lazily: a one-day job needs one connection to count."""

    def __init__(self, pool: asyncpg.Pool, stack: contextlib.AsyncExitStack, limit: int) -> None:
        self.pool, self.stack, self.limit = pool, stack, limit
        self.connections: list[Connection] = []
        self.snapshot = ""

    async def _open(self) -> Connection:
        conn: Connection = await self.stack.enter_async_context(self.pool.acquire())
        transaction = conn.transaction(isolation="repeatable_read", readonly=True)
        await self.stack.enter_async_context(transaction)
        if self.snapshot:
            await service.import_snapshot(conn, self.snapshot)
        else:
            self.snapshot = await service.export_snapshot(conn)
        return conn

    async def at_most(self, wanted: int) -> list[Connection]:
        wanted = max(1, min(self.limit, wanted))
        if not self.connections:
            self.connections.append(await self._open())
        missing = wanted - len(self.connections)
        if missing > 0:

            async def add() -> None:
                self.connections.append(await self._open())

            await run_all(add() for _ in range(missing))
        return self.connections[:wanted]


@contextlib.asynccontextmanager
async def shared_snapshot(pool: asyncpg.Pool, limit: int) -> AsyncIterator[_SharedSnapshot]:
    async with contextlib.AsyncExitStack() as stack:
        yield _SharedSnapshot(pool, stack, limit)


async def aggregate(
    pool: asyncpg.Pool,
    *,
    first_day: date,
    last_day: date,
    workers: int,
    batch_size: int,
    progress: Progress,
) -> list[SettlementRow]:
    """Settlement lines of [first_day, last_day], sorted by merchant then day."""
    days = [first_day + DAY * n for n in range((last_day - first_day).days + 1)]
    counts = dict.fromkeys(days, 0)
    sums: dict[tuple[str, date], list[int]] = {}

    async def count(conn: Connection, day: date) -> None:
        counts[day] = await service.count_completed(
            conn, start=day_start(day), end=day_start(day) + DAY
        )

    async def add_up(conn: Connection, batch: Batch) -> None:
        started = time.perf_counter()
        rows = 0
        for record in await service.aggregate_batch(conn, start=batch.start, end=batch.end):
            merchant, gross, fee, txns = record
            line = sums.setdefault((merchant, batch.day), [0, 0, 0])
            line[0] += gross
            line[1] += fee
            line[2] += txns
            rows += txns
        progress.processed += rows
        metrics.record_transactions_processed(rows)
        log.debug(
            "settlement.batch_done",
            day=batch.day.isoformat(),
            rows=rows,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    started = time.perf_counter()
    async with shared_snapshot(pool, workers) as snapshot:
        await _on_each(await snapshot.at_most(len(days)), days, count)
        progress.total = sum(counts.values())
        batches = plan_batches(counts.items(), batch_size)
        log.info(
            "settlement.counted",
            total=progress.total,
            batches=len(batches),
            workers=min(workers, len(batches)),
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        await _on_each(await snapshot.at_most(len(batches)), batches, add_up)
    return sorted((m, d, gross, fee, txns) for (m, d), (gross, fee, txns) in sums.items())
