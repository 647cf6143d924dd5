"""The sold-out fast path: the long tail of a flash sale answered from memory.

Once a product sells out, most of a flash sale's requests are late buyers who will all get 409
OUT_OF_STOCK. Each process remembers which products a placement statement left sold out (on
sale, with stock 0) and answers those buyers itself, without a database round trip, until the
stock goes up again (a restock or a cancellation).

- **Never a 201 without stock**: only refusals come from here; every order is still decided by
  the database.
- **Restocks reach every process at once**: a trigger on `products` (migration 0004) sends a
  NOTIFY on every stock increase, whatever made it (a PATCH restock, a cancellation); each
  process LISTENs on its own connection and forgets the product on arrival.
- **No stale mark from a race**: a placement marks a product only if no notification (and no
  reconnection of the listener) arrived since it was sent (`epoch`), so a restock committed
  while its answer was on the way cannot be overwritten by it.
- **Bounded when notifications are lost**: nothing is marked while the listener is down
  (everything is forgotten when it drops), and a mark is trusted for at most `max_age_s`
  (`SOLD_OUT_CACHE_S`), after which the next buyer asks the database again.
- Requests with an `Idempotency-Key` always go to the database: their outcome must be stored.
- A sale that ends while its product is marked sold out is refused OUT_OF_STOCK (not SALE_ENDED)
  from here until the mark's age runs out: both are true, and the database decides after that.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator

import structlog

from flashsale.background import running
from flashsale.db import listen_forever
from flashsale.observability import metrics
from flashsale.orders.service import OrderRequest, OutOfStock

log = structlog.get_logger()

STOCK_INCREASED_CHANNEL = "flashsale_stock_increased"  # the trigger's channel (migration 0004)


def listener_name() -> str:
    """This process's listener connection's application_name (in pg_stat_activity)."""
    return f"flashsale:{os.getpid()}:sold-out-listener"


class SoldOut:
    """One per process: the products known to be sold out, and since when (monotonic)."""

    def __init__(self, *, max_age_s: float) -> None:
        self._max_age_s = max_age_s
        self._since: dict[int, float] = {}
        self._epoch = 0
        self._listening = False

    def check(self, request: OrderRequest) -> None:
        """Raise OutOfStock if `request` can be refused from memory."""
        since = self._since.get(request.data.product_id)
        if since is None or request.idempotency_key is not None:
            return
        if time.monotonic() - since < self._max_age_s:
            metrics.ORDERS_SOLD_OUT_FROM_MEMORY.inc()
            raise OutOfStock()
        del self._since[request.data.product_id]

    @property
    def listening_now(self) -> bool:
        """Whether stock increases reach this process (only then does it remember anything)."""
        return self._listening

    @property
    def epoch(self) -> int:
        """Take it before sending a placement statement; pass it to `record` with the answer."""
        return self._epoch

    def record(self, product_id: int, sold_out: bool, *, epoch: int) -> None:
        """Whether a placement statement sent at `epoch` left the product sold out."""
        if sold_out and self._listening and epoch == self._epoch:
            self._since[product_id] = time.monotonic()

    def forget(self, product_id: int | None = None) -> None:
        """Stock went up (for one product, or possibly any): ask the database again."""
        self._epoch += 1
        if product_id is None:
            self._since.clear()
        else:
            self._since.pop(product_id, None)

    @contextlib.asynccontextmanager
    async def listening(self, url: str) -> AsyncIterator[None]:
        """LISTEN for stock increases on a connection of its own, reconnecting when it drops."""
        async with running(
            listen_forever(
                url,
                STOCK_INCREASED_CHANNEL,
                name=listener_name(),
                on_payload=self._on_notification,
                on_listening=self._on_listening,
                on_down=self._on_down,
                down_event="orders.sold_out_listener_down",
            )
        ):
            yield

    def _on_listening(self) -> None:
        self.forget()  # marks made before we listened may predate a restock
        self._listening = True
        log.info("orders.sold_out_listening")

    def _on_down(self) -> None:
        self._listening = False
        self.forget()

    def _on_notification(self, payload: str) -> None:
        try:
            self.forget(int(payload))
        except ValueError:
            self.forget()
