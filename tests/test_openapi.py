"""The OpenAPI document describes the errors the routes really answer, from the error classes."""

from __future__ import annotations

from typing import Any

from flashsale.app import create_app
from flashsale.config import load_settings
from flashsale.errors import AppError


def _subclasses(error: type[AppError]) -> list[type[AppError]]:
    return [error, *(sub for child in error.__subclasses__() for sub in _subclasses(child))]


def _responses(method: str, path: str) -> dict[str, Any]:
    spec = create_app(load_settings()).openapi()
    responses: dict[str, Any] = spec["paths"][path][method]["responses"]
    return responses


def test_placing_an_order_documents_every_refusal_under_its_status() -> None:
    responses = _responses("post", "/orders")
    refusals = [error for error in _subclasses(AppError) if error.refusal]

    assert {error.code for error in refusals} >= {
        "OUT_OF_STOCK",
        "SALE_NOT_STARTED",
        "SALE_ENDED",
        "PURCHASE_LIMIT_EXCEEDED",
        "ORDERS_BUSY",
        "PAYLOAD_TOO_LARGE",
    }
    for error in refusals:
        assert error.code in responses[str(error.status_code)]["description"], error.code
    assert set(responses) == {"201", "400", "401", "403", "404", "409", "413", "415", "422", "503"}
    assert "UNAUTHENTICATED" in responses["401"]["description"]
    assert "BUYER_MISMATCH" in responses["403"]["description"]
    assert "AUTH_UNAVAILABLE" in responses["503"]["description"]


def test_admin_routes_document_the_api_key_and_their_own_errors() -> None:
    cancel = _responses("post", "/jobs/{job_id}/cancel")
    update = _responses("patch", "/products/{product_id}")

    assert "UNAUTHORIZED" in cancel["401"]["description"]
    assert "JOB_NOT_CANCELLABLE" in cancel["409"]["description"]
    assert "VERSION_CONFLICT" in update["412"]["description"]
    assert "PRECONDITION_REQUIRED" in update["428"]["description"]
    assert cancel["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorEnvelope"
    }


def test_shop_rules_are_documented() -> None:
    spec = create_app(load_settings()).openapi()
    schemas = spec["components"]["schemas"]
    cancel = spec["paths"]["/orders/{order_id}/cancel"]["post"]

    for model in ("Product", "ProductCreate", "ProductUpdate"):
        assert {"max_per_buyer", "sale_starts_at", "sale_ends_at"} <= set(
            schemas[model]["properties"]
        ), model
    assert "cancelled_at" in schemas["Order"]["properties"]
    assert {"200", "400", "401", "404"} <= set(cancel["responses"])
    assert "ORDER_NOT_FOUND" in cancel["responses"]["404"]["description"]
    assert cancel["security"] == [{"operatorKey": []}]
    status = next(p for p in spec["paths"]["/orders"]["get"]["parameters"] if p["name"] == "status")
    assert "CANCELLED" in str(status["schema"])
    assert "Retry-After" in spec["paths"]["/orders"]["post"]["description"]
