"""Domain errors and the one place that renders every error as the seed's envelope.

`{"error": {"code": "...", "message": "...", "details": ...}}` for every 4xx and 5xx, whether it
comes from a service (an `AppError`), request validation, routing, or an unexpected failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from flashsale.observability import metrics
from flashsale.observability.middleware import current_request_id

log = structlog.get_logger()


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any | None = None


class ErrorEnvelope(BaseModel):
    """The body of every error response."""

    error: ErrorBody


def documented(description: str) -> dict[str, Any]:
    """An OpenAPI `responses` entry: this description, with the error envelope as the body."""
    return {"model": ErrorEnvelope, "description": description}


UNAUTHORIZED_DOC = documented("API key required (UNAUTHORIZED, when API_KEY is set)")


class AppError(Exception):
    """Base of every error a service raises; subclasses fix the status and code."""

    status_code: int = 400
    code: str = "BAD_REQUEST"
    message: str = "Bad request"

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        self.detail_message = message or self.message
        self.details = details
        super().__init__(self.detail_message)


class ValidationFailed(AppError):
    status_code = 400
    code = "VALIDATION_ERROR"
    message = "The request is invalid"


class NotFound(AppError):
    status_code = 404
    code = "NOT_FOUND"
    message = "Resource not found"


class Unauthorized(AppError):
    status_code = 401
    code = "UNAUTHORIZED"
    message = "A valid 'Authorization: Bearer <key>' header is required"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "PAYLOAD_TOO_LARGE"
    message = "The request body is too large"


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "UNSUPPORTED_MEDIA_TYPE"
    message = "The request body must be JSON (Content-Type: application/json)"


class MethodNotAllowed(AppError):
    status_code = 405
    code = "METHOD_NOT_ALLOWED"
    message = "Method not allowed for this resource"


class HttpError(AppError):
    """Any other status raised by the framework, rendered in the envelope."""

    code = "HTTP_ERROR"

    def __init__(self, status_code: int, message: str) -> None:
        self.status_code = status_code
        super().__init__(message)


class InternalError(AppError):
    status_code = 500
    code = "INTERNAL_ERROR"
    message = "Internal server error"


class DatabaseUnavailable(AppError):
    status_code = 503
    code = "DATABASE_UNAVAILABLE"
    message = "The database is unavailable; retry shortly"


class DatabaseTimeout(AppError):
    status_code = 503
    code = "DATABASE_TIMEOUT"
    message = "The database did not answer in time; retry shortly"


def error_response(error: AppError, headers: dict[str, str] | None = None) -> JSONResponse:
    if error.status_code == 503:
        headers = {"Retry-After": "1", **(headers or {})}
    elif error.status_code == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    body = ErrorBody(code=error.code, message=error.detail_message, details=error.details)
    return JSONResponse(
        {"error": body.model_dump(exclude_none=True)},
        status_code=error.status_code,
        headers=headers,
    )


def validation_failed(errors: Iterable[Mapping[str, Any]]) -> ValidationFailed:
    """A 400 naming each invalid field, from pydantic's (or FastAPI's) list of errors."""
    details = []
    for err in errors:
        location = [str(part) for part in err.get("loc", ()) if part != "body"]
        field = ".".join(location) or "body"
        message = str(err.get("msg", "invalid value"))
        if err.get("type") == "extra_forbidden":
            message = "Unknown field"
        details.append({"field": field, "message": message})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:3])
    return ValidationFailed(f"Invalid request: {summary}", details=details)


_STATUS_CODES: dict[int, type[AppError]] = {
    401: Unauthorized,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def respond(scope: Scope, error: AppError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The response for `error` to the request in `scope`, counted in the metrics."""
    metrics.record_error(scope, error.code)
    return error_response(error, headers)


async def _on_app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return respond(request.scope, exc)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return respond(request.scope, validation_failed(exc.errors()))


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    known = _STATUS_CODES.get(exc.status_code)
    error = known() if known else HttpError(exc.status_code, str(exc.detail))
    return respond(request.scope, error, headers=dict(exc.headers) if exc.headers else None)


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
