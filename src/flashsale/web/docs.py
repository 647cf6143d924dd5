"""GET /docs (Swagger UI) and /redoc (ReDoc), with every file they load served from this origin.

FastAPI's own pages load their scripts from a CDN: on this origin (where /console keeps an
operator key) that is foreign code, and without internet they stay blank. Here the pages are ours,
the scripts come pinned from a Python package (`fastapi-offline`), and every
response carries a strict Content-Security-Policy: only this origin's scripts run, nothing is
fetched from elsewhere, and the pages cannot be framed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources
from importlib.resources.abc import Traversable

from fastapi import APIRouter, FastAPI, Response

from flashsale.errors import NotFound
from flashsale.web.pages import page_route, security_headers

# Scripts only from this origin, never inline nor eval'd; fetches only to this origin; nothing
# else loads from elsewhere. Swagger UI needs no more than this (its icons are data: images).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# ReDoc's page needs two more, both checked in a browser (tests/test_docs.py): its styles are
# <style> elements that styled-components adds at run time (for styles only: scripts stay
# 'self'), and its search index runs in a Worker made from a blob: URL.
REDOC_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; worker-src blob:; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)
# no-cache: the browser may keep a file but asks each time (a new release shows).
SECURITY_HEADERS = security_headers(CSP, cache_control="no-cache")


def _ours(name: str) -> Traversable:
    return resources.files("flashsale.web") / "docs" / name


def _vendored(name: str) -> Traversable:
    # fastapi-offline ships the dist files of swagger-ui 5 and redoc 2 in its static/ folder.
    return resources.files("fastapi_offline") / "static" / name


# Served by name from this table only: no path from the URL ever reaches the filesystem.
_STATIC: dict[str, tuple[Callable[[str], Traversable], str]] = {
    "swagger-ui-bundle.js": (_vendored, "text/javascript"),
    "swagger-ui.css": (_vendored, "text/css"),
    "swagger-init.js": (_ours, "text/javascript"),
    "redoc.standalone.js": (_vendored, "text/javascript"),
}


# ReDoc 2 draws Redocly's logo in its sidebar from their CDN, whatever its options. Given an
# empty data: image instead, the logo fails to load and ReDoc leaves it out (its own onError).
_PATCHES = {
    "redoc.standalone.js": (b'src:"https://cdn.redoc.ly/redoc/logo-mini.svg"', b'src:"data:,"'),
}


@functools.cache
def _read(name: str) -> bytes:
    """A file's bytes, read once: a page of ours, or a name of `_STATIC`."""
    if name not in _STATIC:
        return _ours(name).read_bytes()
    where, _ = _STATIC[name]
    content = where(name).read_bytes()
    if name in _PATCHES:
        content = content.replace(*_PATCHES[name])
    return content


_router = APIRouter(route_class=page_route(SECURITY_HEADERS), include_in_schema=False)


@_router.get("/docs", include_in_schema=False)
async def swagger_ui_page() -> Response:
    return Response(_read("docs.html"), media_type="text/html")


@_router.get("/redoc", include_in_schema=False)
async def redoc_page() -> Response:
    headers = {"Content-Security-Policy": REDOC_CSP}
    return Response(_read("redoc.html"), media_type="text/html", headers=headers)


@_router.get("/docs/static/{name}", include_in_schema=False)
async def docs_static(name: str) -> Response:
    entry = _STATIC.get(name)
    if entry is None:
        raise NotFound()
    return Response(_read(name), media_type=entry[1])


def install_docs(app: FastAPI) -> None:
    """Serve /docs, /redoc and their files (public: they show only what /openapi.json does)."""
    app.include_router(_router)
