"""Every error answered in the seed's envelope, and documented in OpenAPI from the error classes.

`{"error": {"code": "...", "message": "...", "details": ...}}` for every 4xx and 5xx, whether it
comes from a service (an `AppError`), request validation, routing, or an unexpected failure.
Every error response goes through `respond`, which counts it in the metrics.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from flashsale.errors import (
    AppError,
    BodyNotParsed,
    HttpError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from flashsale.observability import metrics
from flashsale.request_context import current_request_id

log = structlog.get_logger()


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any | None = None


class ErrorEnvelope(BaseModel):
    """The body of every error response."""

    error: ErrorBody


def describe(*errors: type[AppError]) -> str:
    """An OpenAPI description of a response that carries one of these errors."""
    return "; ".join(f"{error.code}: {error.message}" for error in errors)


def documented(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route that can answer with these errors: one entry per status,
    describing each code it may carry, with the error envelope as the body."""
    by_status: dict[int, list[type[AppError]]] = defaultdict(list)
    for error in errors:
        by_status[error.status_code].append(error)
    return {
        status: {"model": ErrorEnvelope, "description": describe(*same_status)}
        for status, same_status in sorted(by_status.items())
    }


def error_response(error: AppError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = {**error.headers, **(headers or {})}
    if error.status_code == 503:
        headers.setdefault("Retry-After", "1")
    elif error.status_code == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    body = ErrorBody(code=error.code, message=error.detail_message, details=error.details)
    return JSONResponse(
        {"error": body.model_dump(exclude_none=True)},
        status_code=error.status_code,
        headers=headers,
    )


def respond(scope: Scope, error: AppError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The response for `error` to the request in `scope`, counted in the metrics."""
    metrics.record_error(scope, error)
    return error_response(error, headers)


_STATUS_CODES: dict[int, type[AppError]] = {
    error.status_code: error
    for error in (Unauthorized, NotFound, MethodNotAllowed, PayloadTooLarge, UnsupportedMediaType)
}


async def _on_app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return respond(request.scope, exc)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return respond(request.scope, ValidationFailed.from_errors(exc.errors()))


def _flat(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The app's routes, with those of included routers (FastAPI keeps each included router as
    one route holding its `original_router`; our routers are included without a prefix)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from _flat(included.routes) if included is not None else (route,)


def allowed_methods(request: Request) -> str:
    """Every method some route answers at this path (Starlette's 405 names only the first
    route's), and HEAD wherever GET is (`HeadAsGet`)."""
    methods: set[str] = set()
    for route in _flat(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    known = _STATUS_CODES.get(exc.status_code)
    if exc.status_code == 400:  # FastAPI's only own 400: a JSON body it could not decode
        known = BodyNotParsed
    error = known() if known else HttpError(exc.status_code, str(exc.detail))
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return respond(request.scope, error, headers=headers or None)


async def _on_unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.error("http.unhandled_error", error=repr(exc))
    # Rendered outside the request middleware (by the outermost handler): add its header here.
    request_id = current_request_id()
    return error_response(InternalError(), {"X-Request-ID": request_id} if request_id else None)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _on_app_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
