"""GET /console (the page), its two static files, and the admin JSON it reads products from.

Every response here, errors included, carries a strict Content-Security-Policy: the page runs
only its own script and style, talks only to this origin, and cannot be framed.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Response

from flashsale.access.control import Forbidden, OperatorOnly
from flashsale.console import service
from flashsale.console.schemas import ProductSalesList
from flashsale.deps import Db
from flashsale.errors import NotFound, Unauthorized, ValidationFailed
from flashsale.schemas import Limit, Offset
from flashsale.web.errors import documented
from flashsale.web.pages import page_route, security_headers

_HERE = Path(__file__).parent
# Served by name from this table only: no path from the URL ever reaches the filesystem.
_STATIC = {"console.js": "text/javascript", "console.css": "text/css"}

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = security_headers(CSP, cache_control="no-store")

router = APIRouter(prefix="/console", tags=["console"], route_class=page_route(SECURITY_HEADERS))


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
