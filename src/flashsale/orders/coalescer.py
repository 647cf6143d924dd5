"""Flash-sale mode: orders for one product coalesced into batches inside each server process.

Every order on a product waits for that product's row lock, so one transaction per order caps a
hot product at what the database can commit on one row. Here, while a batch for product P is in
flight, new orders for P wait in P's queue; when it returns, the waiting orders (up to
`batch_max`) go together as one statement, `service.place_order_batch`: one row lock, first fit
in arrival order, one INSERT, one stock update, one commit. A lone order goes at once (no timer):
batches only form while the database is busy anyway. Each process (and host) coalesces its own
requests; the row lock still arbitrates between processes.

Every caller gets the answer it would have had alone, in an order of execution consistent with
arrival. Idempotency keys:
- a key whose batch is in flight in this process: 409 IDEMPOTENCY_KEY_IN_USE at once, as a single
  keyed order answers while another request holds the key's advisory lock;
- the same key with the same body, waiting together: one of them goes to the database, the later
  ones share its outcome as replays (one order), as if they had arrived just after it committed;
- the same key with a different body: left in the queue for the next batch, where the database
  answers it against the first one's stored record (422, or a replay), as it would have alone;
- everything else (stored records, keys held by other processes) is decided inside the database
  function with the same advisory lock and lookup as a single keyed order.

A product the batch left sold out (on sale, stock 0) is marked in the process's sold-out cache
(`sold_out.py`); its later unkeyed orders are refused before they queue.

The batch commits for all its members or for none: if its statement fails, every member gets a
503 and nothing is written. A caller cancelled while waiting (client gone) leaves its queue; one
cancelled while its batch is in flight does not disturb the batch, which runs in its own task.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from flashsale.db import Database
from flashsale.errors import AppError, InternalError
from flashsale.orders import service
from flashsale.orders.service import (
    IdempotencyKeyInUse,
    OrderBatchFailed,
    OrderRequest,
    OrdersBusy,
    Outcome,
    PlacedOrder,
)
from flashsale.orders.sold_out import SoldOut

log = structlog.get_logger()


@dataclass(eq=False, slots=True)
class _Waiter:
    request: OrderRequest
    future: asyncio.Future[Outcome]
    queued: bool = True
    # Later requests with the same key and body in the same batch: they share this outcome.
    followers: list[_Waiter] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class _Lane:
    """One product's waiting orders and the task that places them, batch after batch."""

    queue: deque[_Waiter] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class OrderCoalescer:
    """One per process. `on_batch(size)` is called after every batch (for metrics)."""

    def __init__(
        self,
        database: Database,
        *,
        batch_max: int,
        max_waiting_per_product: int,
        max_total: int,
        idempotency_ttl_s: int,
        on_batch: Callable[[int], None] | None = None,
        sold_out: SoldOut | None = None,
    ) -> None:
        self._database = database
        self._batch_max = batch_max
        self._max_waiting_per_product = max_waiting_per_product
        self._max_total = max_total
        self._ttl_s = idempotency_ttl_s
        self._on_batch = on_batch
        # Without one, a cache that never listens, so never marks anything.
        self._sold_out = sold_out or SoldOut(max_age_s=0)
        self._lanes: dict[int, _Lane] = {}
        self._keys_in_flight: set[str] = set()
        self._waiting = 0
        self._in_flight = 0

    @property
    def waiting(self) -> int:
        """Orders queued behind a batch in flight, over all products."""
        return self._waiting

    @property
    def in_flight(self) -> int:
        """Orders in batches that are being placed."""
        return self._in_flight

    def waiting_for(self, product_id: int) -> int:
        lane = self._lanes.get(product_id)
        return len(lane.queue) if lane else 0

    async def place(self, request: OrderRequest) -> PlacedOrder:
        self._sold_out.check(request)
        key = request.idempotency_key
        if key is not None and key in self._keys_in_flight:
            raise IdempotencyKeyInUse()
        product_id = request.data.product_id
        lane = self._lanes.get(product_id)
        if self._waiting + self._in_flight >= self._max_total or (
            lane is not None and len(lane.queue) >= self._max_waiting_per_product
        ):
            raise OrdersBusy()
        if lane is None:
            lane = self._lanes[product_id] = _Lane()
            # A clean context: the batch's log lines must not carry the first caller's request id.
            lane.task = asyncio.create_task(
                self._drain(product_id, lane), context=contextvars.Context()
            )
        waiter = _Waiter(request, asyncio.get_running_loop().create_future())
        lane.queue.append(waiter)
        self._waiting += 1
        try:
            outcome = await waiter.future
        except asyncio.CancelledError:
            if waiter.queued:
                lane.queue.remove(waiter)
                self._waiting -= 1
            raise
        if isinstance(outcome, AppError):
            raise outcome
        return outcome

    async def close(self) -> None:
        """Wait for the batches in flight (each ends within the statement timeout)."""
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drain(self, product_id: int, lane: _Lane) -> None:
        try:
            while lane.queue:
                await self._place_batch(product_id, self._take(lane))
        finally:
            del self._lanes[product_id]

    def _take(self, lane: _Lane) -> list[_Waiter]:
        """Up to `batch_max` waiting orders in arrival order, each key once (see the module doc)."""
        batch: list[_Waiter] = []
        by_key: dict[str, _Waiter] = {}
        later: list[_Waiter] = []
        for _ in range(min(self._batch_max, len(lane.queue))):
            waiter = lane.queue.popleft()
            key = waiter.request.idempotency_key
            first = by_key.get(key) if key is not None else None
            if first is not None and first.request.fingerprint != waiter.request.fingerprint:
                later.append(waiter)
                continue
            waiter.queued = False
            self._waiting -= 1
            if first is not None:
                first.followers.append(waiter)
            elif key is not None and key in self._keys_in_flight:  # in another product's batch
                _deliver(waiter, IdempotencyKeyInUse())
            else:
                if key is not None:
                    by_key[key] = waiter
                batch.append(waiter)
        lane.queue.extendleft(reversed(later))
        return batch

    async def _place_batch(self, product_id: int, batch: list[_Waiter]) -> None:
        if not batch:
            return
        keys = {k for w in batch if (k := w.request.idempotency_key) is not None}
        size = len(batch) + sum(len(w.followers) for w in batch)
        self._keys_in_flight |= keys
        self._in_flight += size
        try:
            outcomes = await self._run(product_id, [w.request for w in batch])
            for waiter, outcome in zip(batch, outcomes, strict=True):
                _deliver(waiter, outcome)
                for follower in waiter.followers:
                    _deliver(follower, _shared(outcome))
        finally:
            self._keys_in_flight -= keys
            self._in_flight -= size
            for waiter in batch:  # only if something above broke: nobody is left hanging
                for member in (waiter, *waiter.followers):
                    _deliver(member, InternalError())
        if self._on_batch is not None:
            self._on_batch(size)

    async def _run(self, product_id: int, requests: list[OrderRequest]) -> list[Outcome]:
        """Every request's outcome; if the batch's statement fails, a 503 for each (and the
        statement committed nothing)."""
        failure: AppError
        epoch = self._sold_out.epoch
        try:
            async with self._database.connection(operation="order batch") as conn:
                placement = await service.place_order_batch(
                    conn, product_id=product_id, requests=requests, idempotency_ttl_s=self._ttl_s
                )
            self._sold_out.record(product_id, placement.sold_out, epoch=epoch)
            return placement.outcomes
        except AppError as exc:  # DATABASE_UNAVAILABLE, DATABASE_TIMEOUT (already logged)
            failure = exc
        except Exception as exc:
            log.error(
                "orders.batch_failed", product_id=product_id, size=len(requests), error=repr(exc)
            )
            failure = OrderBatchFailed()
        return [_copy(failure) for _ in requests]


def _deliver(waiter: _Waiter, outcome: Outcome) -> None:
    if not waiter.future.done():  # done: its caller was cancelled, or it was answered already
        waiter.future.set_result(outcome)


def _shared(outcome: Outcome) -> Outcome:
    """A follower's copy of its first request's outcome: a replay of the same order."""
    if isinstance(outcome, PlacedOrder):
        return PlacedOrder(outcome.order, replayed=True)
    return _copy(outcome)


def _copy(error: AppError) -> AppError:
    """Each caller raises its own exception object (a shared one would collect tracebacks)."""
    return type(error)(error.detail_message, details=error.details, headers=error.headers)
