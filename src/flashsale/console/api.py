"""GET /console (the page), its two static files, and the admin JSON it reads products from.

Every response here, errors included, carries a strict Content-Security-Policy: the page runs
only its own script and style, talks only to this origin, and cannot be framed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError

from flashsale.access.control import AccessRoute, Forbidden, OperatorOnly
from flashsale.console import service
from flashsale.console.schemas import ProductSalesList
from flashsale.deps import Db
from flashsale.errors import AppError, NotFound, Unauthorized, ValidationFailed
from flashsale.schemas import Limit, Offset
from flashsale.web.errors import documented, respond

_HERE = Path(__file__).parent
# Served by name from this table only: no path from the URL ever reaches the filesystem.
_STATIC = {"console.js": "text/javascript", "console.css": "text/css"}

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class _ConsoleRoute(AccessRoute):
    """Adds the security headers to every response of the console's routes. Errors are rendered
    here (as the app's handlers would) because those handlers answer outside the route."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_headers(request: Request) -> Response:
            try:
                response = await handler(request)
            except AppError as exc:
                response = respond(request.scope, exc)
            except RequestValidationError as exc:
                response = respond(request.scope, ValidationFailed.from_errors(exc.errors()))
            response.headers.update(SECURITY_HEADERS)
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return with_headers


router = APIRouter(prefix="/console", tags=["console"], route_class=_ConsoleRoute)


@functools.cache
def _read(path: Path) -> bytes:
    return path.read_bytes()


@router.get("", include_in_schema=False)
async def console_page() -> Response:
    return Response(_read(_HERE / "templates" / "console.html"), media_type="text/html")


@router.get("/static/{name}", include_in_schema=False)
async def console_static(name: str) -> Response:
    media_type = _STATIC.get(name)
    if media_type is None:
        raise NotFound()
    # no-cache, not no-store: the browser may keep it but asks each time (a new release shows).
    headers = {"Cache-Control": "no-cache"}
    return Response(_read(_HERE / "static" / name), media_type=media_type, headers=headers)


@router.get(
    "/products",
    dependencies=[OperatorOnly],
    responses=documented(ValidationFailed, Unauthorized, Forbidden),
    summary="Products by id, with the units their CONFIRMED orders hold (for the console)",
)
async def product_sales(
    database: Db, limit: Annotated[Limit, Query()] = 20, offset: Annotated[Offset, Query()] = 0
) -> ProductSalesList:
    async with database.connection() as conn:
        products = await service.list_product_sales(conn, limit=limit, offset=offset)
    return ProductSalesList(products=products, limit=limit, offset=offset)
