"""Routes that serve pages to a browser (the operator console, the API docs).

Every response of such a route, errors included, carries the page's security headers: its
Content-Security-Policy, `nosniff`, no referrer, and its caching rule. Errors are rendered here
(as the app's handlers would) because those handlers answer outside the route.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ClassVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError

from flashsale.access.control import AccessRoute
from flashsale.errors import AppError, ValidationFailed
from flashsale.web.errors import respond


def security_headers(csp: str, *, cache_control: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": cache_control,
    }


class _PageRoute(AccessRoute):
    headers: ClassVar[Mapping[str, str]] = {}

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        headers = self.headers

        async def with_headers(request: Request) -> Response:
            try:
                response = await handler(request)
            except AppError as exc:
                response = respond(request.scope, exc)
            except RequestValidationError as exc:
                response = respond(request.scope, ValidationFailed.from_errors(exc.errors()))
            for name, value in headers.items():
                response.headers.setdefault(name, value)  # a route may set its own
            return response

        return with_headers


def page_route(headers: Mapping[str, str]) -> type[AccessRoute]:
    """A route class whose every response carries `headers` (see `security_headers`)."""
    return type("PageRoute", (_PageRoute,), {"headers": dict(headers)})
