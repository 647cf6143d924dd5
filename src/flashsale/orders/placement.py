"""How this process places orders: flash-sale mode's coalescer, or one statement per order.

`POST /orders` only sees `OrderPlacement.place()`; which one it gets is `ORDER_COALESCING`. Both
consult the process's sold-out cache first and feed it with what each statement left in stock.
"""

from __future__ import annotations

from typing import Protocol

from flashsale.config import Settings
from flashsale.db import Database
from flashsale.errors import AppError
from flashsale.observability import metrics
from flashsale.orders import service
from flashsale.orders.coalescer import OrderCoalescer
from flashsale.orders.service import OrderRequest, PlacedOrder
from flashsale.orders.sold_out import SoldOut


class OrderPlacement(Protocol):
    async def place(self, request: OrderRequest) -> PlacedOrder:
        """The placed (or replayed) order; raises the refusal otherwise."""
        ...

    async def close(self) -> None:
        """Wait for what is in flight."""
        ...


class DirectPlacement:
    """ORDER_COALESCING=off: each order in its own statement and transaction."""

    def __init__(self, database: Database, *, idempotency_ttl_s: int, sold_out: SoldOut) -> None:
        self._database = database
        self._ttl_s = idempotency_ttl_s
        self._sold_out = sold_out

    async def place(self, request: OrderRequest) -> PlacedOrder:
        self._sold_out.check(request)
        epoch = self._sold_out.epoch
        async with self._database.connection() as conn:
            placement = await service.place_order(
                conn, request=request, idempotency_ttl_s=self._ttl_s
            )
        self._sold_out.record(request.data.product_id, placement.sold_out, epoch=epoch)
        (outcome,) = placement.outcomes
        if isinstance(outcome, AppError):
            raise outcome
        return outcome

    async def close(self) -> None:
        """Nothing runs outside its request."""


def new_order_placement(
    settings: Settings, database: Database, sold_out: SoldOut
) -> OrderCoalescer | DirectPlacement:
    if not settings.order_coalescing:
        return DirectPlacement(
            database, idempotency_ttl_s=settings.idempotency_ttl_s, sold_out=sold_out
        )
    return OrderCoalescer(
        database,
        batch_max=settings.order_batch_max,
        max_waiting_per_product=settings.order_queue_max_per_product,
        max_total=settings.order_queue_max_total,
        idempotency_ttl_s=settings.idempotency_ttl_s,
        on_batch=metrics.ORDER_BATCH_SIZE.observe,
        sold_out=sold_out,
    )
