"""The errors every layer raises: one class per answer, carrying its status, code and message.

This module imports nothing of ours: every layer may raise these. An error class also says
whether it refuses an order placement, and under which reason the refusal is counted
(`refusal`, the `flashsale_orders_rejected_total{reason}` label). The HTTP layer (`web/errors.py`)
renders them as the seed's envelope and documents them in OpenAPI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar


class CommandError(Exception):
    """A command cannot run (a bad setting, a database that cannot be reached or started):
    `flashsale` prints its message as one line and exits non-zero, without a traceback."""


class AppError(Exception):
    """Base of every error a request can be answered with; subclasses fix status and code."""

    status_code: int = 400  # an instance may set its own (HttpError)
    code: ClassVar[str] = "BAD_REQUEST"
    message: ClassVar[str] = "Bad request"
    # The reason an order placement refused with this error is counted under (None: not counted).
    refusal: ClassVar[str | None] = None

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.detail_message = message or self.message
        self.details = details
        self.headers = dict(headers or {})  # sent with the error's response
        super().__init__(self.detail_message)


class ValidationFailed(AppError):
    status_code = 400
    code = "VALIDATION_ERROR"
    message = "The request is invalid"
    refusal = "validation"

    @classmethod
    def from_errors(cls, errors: Iterable[Mapping[str, Any]]) -> ValidationFailed:
        """A 400 naming each invalid field, from pydantic's (or FastAPI's) list of errors."""
        details = []
        for err in errors:
            location = [str(part) for part in err.get("loc", ()) if part != "body"]
            field = ".".join(location) or "body"
            message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            if err.get("type") == "extra_forbidden":
                message = "Unknown field"
            elif err.get("type") == "json_invalid":  # its location is a character offset
                field = "body"
                reason = (err.get("ctx") or {}).get("error", "malformed")
                message = f"Invalid JSON: {reason} (at character {location[0] if location else 0})"
            details.append({"field": field, "message": message})
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:3])
        return cls(f"Invalid request: {summary}", details=details)


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
    refusal = "validation"


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "UNSUPPORTED_MEDIA_TYPE"
    message = "The request body must be JSON (Content-Type: application/json)"
    refusal = "validation"


class MethodNotAllowed(AppError):
    status_code = 405
    code = "METHOD_NOT_ALLOWED"
    message = "Method not allowed for this resource"


class BodyNotParsed(ValidationFailed):
    """The framework could not decode a body declared as JSON (not UTF-8, a number too long)."""

    message = (
        "Invalid request: the body is not valid JSON (UTF-8 text, numbers of at most 4300 digits)"
    )


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
    refusal = "database_unavailable"


class DatabaseTimeout(AppError):
    status_code = 503
    code = "DATABASE_TIMEOUT"
    message = "The database did not answer in time; retry shortly"
    refusal = "database_timeout"


def refusal_reasons() -> set[str]:
    """Every reason an order refusal can be counted under, of the error classes defined so far
    (the app calls it once every domain is imported, to export each reason from zero)."""
    reasons, pending = set(), [AppError]
    while pending:
        error = pending.pop()
        pending += error.__subclasses__()
        if error.refusal:
            reasons.add(error.refusal)
    return reasons
