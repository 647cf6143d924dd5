"""What the current task knows of the request it serves: its id and its route.

Set once per request by the request middleware (`web/middleware.py`); read by whoever labels or
answers on the request's behalf (log lines, database metrics, the outermost 500 handler). Each
request runs in its own task with its own copy of the context, so nothing leaks between them.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from typing import Any

import structlog
from starlette.types import Scope

REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_current_request: ContextVar[Scope | None] = ContextVar("flashsale_request", default=None)


def incoming_request_id(scope: Scope) -> str:
    """The client's `X-Request-ID` when it is sane, otherwise a new one."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _SANE_REQUEST_ID.match(value):
            return str(value.decode("ascii"))
    # 128 random bits, like a uuid4's hex, for less: compare `python -m timeit -s 'import os'
    # 'os.urandom(16).hex()'` with `python -m timeit -s 'import uuid' 'uuid.uuid4().hex'`.
    return os.urandom(16).hex()


def enter_request(scope: Scope, request_id: str) -> None:
    """Bind the request to this task: its id to every log line, its scope to `operation()`."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    _current_request.set(scope)


def current_request_id() -> str | None:
    """The id of the request this task serves (for responses built outside the middleware)."""
    request_id: str | None = structlog.contextvars.get_contextvars().get("request_id")
    return request_id


def method(scope: Scope) -> str:
    """The request's method, or OTHER for anything unusual (a bounded metrics label)."""
    value: str = scope["method"]
    return value if value in _METHODS else "OTHER"


def route_template(scope: Scope) -> str:
    """The matched route's path template (never the raw path, which is unbounded)."""
    route: Any = scope.get("route")
    return str(getattr(route, "path", "unmatched"))


def operation() -> str:
    """What the current task does, for labels: "<METHOD> <route template>", or background."""
    scope = _current_request.get()
    return f"{method(scope)} {route_template(scope)}" if scope else "background"
