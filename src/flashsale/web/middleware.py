"""Per-request context as a plain ASGI middleware (no BaseHTTPMiddleware overhead on the hot path).

Takes `X-Request-ID` from the request when it is sane, otherwise generates one; returns it on the
response; binds it to every log line of the request; at the end logs one `http.request` line with
method, route template, status and duration, and records the same in the HTTP metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flashsale import request_context
from flashsale.observability import metrics
from flashsale.request_context import REQUEST_ID_HEADER

log = structlog.get_logger()


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_context.incoming_request_id(scope)
        # Bound until the task ends, including for the outermost 500 handler.
        request_context.enter_request(scope, request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER, request_id.encode("ascii")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            seconds = time.perf_counter() - started
            route = request_context.route_template(scope)
            metrics.observe_request(scope, route, status, seconds)
            log.info(
                "http.request",
                method=scope["method"],
                route=route,
                status=status,
                duration_ms=round(seconds * 1000, 3),
            )


class HeadAsGet:
    """HEAD wherever GET is answered (RFC 9110): the GET's status and headers, no body.

    The app runs the request as a GET; once its response has started, the body is dropped and
    the app is stopped, so that a HEAD of an endless stream (job events) ends at once too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        ended = asyncio.Event()

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body" and not ended.is_set():
                ended.set()
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        running = asyncio.ensure_future(self.app({**scope, "method": "GET"}, receive, headers_only))
        waiting = asyncio.ensure_future(ended.wait())
        try:
            await asyncio.wait({running, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            if not running.done():
                running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running  # re-raises what the app raised before the response ended
