"""The OpenAPI document, corrected to describe what the service really answers.

FastAPI documents a 422 `HTTPValidationError` on every route that takes input; we answer every
validation failure with 400 and the error envelope. This rewrites those entries, and documents the
edge answers every route can give (413/415 for bodies, 503 when the database is unreachable), so
that clients and the schema-driven fuzz tests see the real contract.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from flashsale.errors import (
    AppError,
    DatabaseTimeout,
    DatabaseUnavailable,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from flashsale.web.errors import describe

_ENVELOPE = {"$ref": "#/components/schemas/ErrorEnvelope"}


def _error(*errors: type[AppError]) -> dict[str, Any]:
    return {
        "description": describe(*errors),
        "content": {"application/json": {"schema": _ENVELOPE}},
    }


def _corrected(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            responses = operation["responses"]
            default_422 = responses.get("422", {}).get("content", {}).get("application/json", {})
            if "HTTPValidationError" in str(default_422.get("schema", "")):
                del responses["422"]
                responses.setdefault("400", _error(ValidationFailed))
            if "requestBody" in operation:
                responses.setdefault("413", _error(PayloadTooLarge))
                responses.setdefault("415", _error(UnsupportedMediaType))
            if path != "/health":  # /health reports an outage in its own shape
                responses.setdefault("503", _error(DatabaseUnavailable, DatabaseTimeout))
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _corrected(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
