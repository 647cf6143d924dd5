"""Edge checks on a request: its body's size and media type, and its query parameters' names.

The body checks are a pure ASGI middleware before any routing or parsing (a few microseconds),
so the hot path pays almost nothing:
- a body must be declared as JSON (415 UNSUPPORTED_MEDIA_TYPE otherwise);
- a body may be at most `max_bytes`: a larger Content-Length is refused before reading, and a
  streamed (chunked) body is counted as it arrives, so neither can push past the limit (413).
A route that takes another kind of body (the bulk import) has a `BodyRule` of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import HTTPException, Request
from fastapi.dependencies.models import Dependant
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flashsale.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from flashsale.web.errors import respond

_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def media_type(content_type: bytes | str) -> str:
    """The media type of a Content-Type value, lowercase, without parameters."""
    text = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
    return text.split(";", 1)[0].strip().lower()


def _is_json(content_type: bytes) -> bool:
    kind = media_type(content_type)
    return kind == "application/json" or kind.endswith("+json")


@dataclass(frozen=True, slots=True)
class BodyRule:
    """The bodies one path takes instead of JSON of at most MAX_BODY_BYTES."""

    max_bytes: int
    media_types: frozenset[str]

    def accepts(self, content_type: bytes) -> bool:
        return media_type(content_type) in self.media_types

    def refusal(self) -> UnsupportedMediaType:
        return UnsupportedMediaType(
            f"The request body must be one of: {', '.join(sorted(self.media_types))}"
        )


class RequestBodyGuard:
    def __init__(
        self, app: ASGIApp, *, max_bytes: int, rules: Mapping[str, BodyRule] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.rules = dict(rules or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _METHODS_WITH_BODY:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        rule = self.rules.get(scope["path"])
        max_bytes = rule.max_bytes if rule else self.max_bytes
        if length is None and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body
            return
        if length is not None and not length.strip().isdigit():
            await respond(scope, ValidationFailed("Invalid Content-Length"))(scope, receive, send)
            return
        if length is not None and int(length) > max_bytes:
            await respond(scope, PayloadTooLarge())(scope, receive, send)
            return
        content_type = headers.get(b"content-type", b"")
        if length != b"0" and not (rule.accepts(content_type) if rule else _is_json(content_type)):
            refusal = rule.refusal() if rule else UnsupportedMediaType()
            await respond(scope, refusal)(scope, receive, send)
            return
        await self.app(scope, self._counting(receive, max_bytes), send)

    @staticmethod
    def _counting(receive: Receive, max_bytes: int) -> Receive:
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > max_bytes:
                # An HTTPException passes through FastAPI's body parsing (anything else becomes
                # a 400 there); the handler renders it as PAYLOAD_TOO_LARGE.
                raise HTTPException(PayloadTooLarge.status_code)
            return message

        return receive_within_limit


# Query parameters: an app-wide dependency, run after routing (it needs the route's declarations).


def _declared_query(dependant: Dependant) -> frozenset[str]:
    """The query parameter names a route declares, through its dependencies and query models."""
    names: set[str] = set()
    for param in dependant.query_params:
        model = param.field_info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            names |= {field.alias or name for name, field in model.model_fields.items()}
        else:
            names.add(param.alias)
    for sub in dependant.dependencies:
        names |= _declared_query(sub)
    return frozenset(names)


_DECLARED: dict[int, frozenset[str]] = {}


async def known_query_parameters(request: Request) -> None:
    """400 for a query parameter the route does not declare, as for an unknown body field:
    a misspelt filter must not silently return everything."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or not request.query_params:
        return
    declared = _DECLARED.get(id(route))
    if declared is None:
        declared = _DECLARED[id(route)] = _declared_query(dependant)
    unknown = sorted(set(request.query_params) - declared)
    if unknown:
        raise ValidationFailed(
            f"Unknown query parameter: {', '.join(unknown)}",
            details=[
                {"field": f"query.{name}", "message": "Unknown parameter"} for name in unknown
            ],
        )
