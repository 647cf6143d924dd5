"""POST /orders as a plain ASGI endpoint, answered before FastAPI's routing.

A flash sale is almost all `POST /orders`, and FastAPI's per-request machinery (matching every
route, solving dependencies, a JSON pass then a validation pass, Request and Response objects,
its exception and exit-stack layers) cost more Python per order than everything else the order
needs (py-spy profile in the README). This middleware answers that one route itself, with the
same contract: the body validated by the same `OrderCreate` schema (pydantic-core parses and
validates the JSON in one pass), the `Idempotency-Key` checked the same way, the same response
model, error envelope and metrics. Everything else goes on to FastAPI; the route declared in
`orders/api.py` is this endpoint's OpenAPI description.

It sits inside the request-context middleware (request id, the `http.request` log line, HTTP
metrics) and the body guard (415 and 413 before any parsing), like every other route.
"""

from __future__ import annotations

from typing import TypeVar

import structlog
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from flashsale.access.buyers import Unauthenticated
from flashsale.access.control import BuyerMismatch, bearer_token
from flashsale.deps import state_of
from flashsale.errors import AppError, InternalError, PayloadTooLarge, ValidationFailed
from flashsale.observability import metrics
from flashsale.orders.api import router
from flashsale.orders.schemas import Order, OrderCreate, VerifiedOrderCreate
from flashsale.orders.service import (
    REPLAYED_HEADER,
    OrderRequest,
    PlacedOrder,
    validate_idempotency_key,
)
from flashsale.web.errors import respond

log = structlog.get_logger()

PATH = "/orders"
_IDEMPOTENCY_KEY = b"idempotency-key"
_ORDER_JSON = TypeAdapter(Order)
_JSON = (b"content-type", b"application/json")
_REPLAYED = (REPLAYED_HEADER.lower().encode(), b"true")


class _Disconnected(Exception):
    """The client went away before its body arrived: nothing to answer."""


class PlaceOrderEndpoint:
    def __init__(self, app: ASGIApp, *, api: FastAPI) -> None:
        self.app = app
        self._api = api  # for its state, set in the lifespan
        self._route = next(  # the documented route: metrics and logs label requests by it
            route
            for route in router.routes
            if isinstance(route, APIRoute)
            and route.path == PATH
            and "POST" in (route.methods or ())
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        scope["route"] = self._route
        try:
            placed = await self._place(scope, receive)
        except AppError as error:
            await respond(scope, error)(scope, receive, send)
            return
        except _Disconnected:
            return
        except Exception as exc:
            log.error("http.unhandled_error", error=repr(exc))
            await respond(scope, InternalError())(scope, receive, send)
            return
        order = placed.order
        body = _ORDER_JSON.dump_json(order)
        headers = [
            _JSON,
            (b"content-length", b"%d" % len(body)),
            (b"location", f"/orders/{order.id}".encode()),
        ]
        if placed.replayed:
            headers.append(_REPLAYED)
        else:
            metrics.record_order_placed(order.quantity)
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _place(self, scope: Scope, receive: Receive) -> PlacedOrder:
        state = state_of(self._api)
        buyers = state.access.buyers
        if buyers is None:  # BUYER_AUTH=none: the body names the buyer (the seed's contract)
            data = _parse(OrderCreate, await _read_body(receive))
        else:  # the token names the buyer, checked before the body is read
            token = bearer_token(scope)
            if token is None:
                raise Unauthenticated()
            buyer_id = await buyers.buyer_id(token)
            claimed = _parse(VerifiedOrderCreate, await _read_body(receive))
            if claimed.buyer_id not in (None, buyer_id):
                raise BuyerMismatch()
            data = OrderCreate.model_construct(
                product_id=claimed.product_id, quantity=claimed.quantity, buyer_id=buyer_id
            )
        key = None
        for name, value in scope["headers"]:
            if name == _IDEMPOTENCY_KEY:  # present but empty is a 400, not "no key"
                key = validate_idempotency_key(value.decode("latin-1"))
                break
        return await state.orders.place(OrderRequest.of(data, key))


Body = TypeVar("Body", OrderCreate, VerifiedOrderCreate)


def _parse(model: type[Body], body: bytes) -> Body:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise ValidationFailed.from_errors(exc.errors()) from None


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            message = await receive()
        except HTTPException as exc:  # the body guard counted past MAX_BODY_BYTES
            raise PayloadTooLarge() from exc
        if message["type"] == "http.disconnect":
            raise _Disconnected()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
