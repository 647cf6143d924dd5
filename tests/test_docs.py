"""/docs (Swagger UI) and /redoc (ReDoc) against a live server: every file they load comes from
this origin, under a strict CSP, and in a real browser (Debian's chromium) they render the API
without a request elsewhere and without a CSP violation."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Request, expect

from flashsale.bench.harness import LiveServer
from flashsale.web.docs import CSP, REDOC_CSP

STATIC = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "swagger-init.js": "text/javascript",
    "redoc.standalone.js": "text/javascript",
}
# Generous: the first load parses two 1 MB bundles; a limit only turns a hang into a failure.
SLOW = 30_000
SHOTS = Path("/tmp")


def assert_secured(response: httpx.Response, csp: str = CSP) -> None:
    assert response.headers["content-security-policy"] == csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("csp", [CSP, REDOC_CSP])
def test_the_csp_runs_only_this_origins_scripts(csp: str) -> None:
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["img-src"] == "'self' data:"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'none'"
    assert directives["form-action"] == "'none'"
    for sources in directives.values():
        assert "'unsafe-eval'" not in sources
        assert "http" not in sources
        assert "*" not in sources
    # Only ReDoc's page lets styles run inline (styled-components), and Workers from blob: URLs.
    assert directives["style-src"] == ("'self' 'unsafe-inline'" if csp == REDOC_CSP else "'self'")
    assert directives.get("worker-src") == ("blob:" if csp == REDOC_CSP else None)


@pytest.mark.parametrize(("path", "csp"), [("/docs", CSP), ("/redoc", REDOC_CSP)])
async def test_the_pages_are_public_and_reference_only_this_origin(
    server: LiveServer, path: str, csp: str
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        page = await http.get(path)  # without any credentials
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert_secured(page, csp)
    assert re.search(r"https?://", page.text) is None
    assert "<script>" not in page.text  # no inline script: every <script> has a src
    for src in re.findall(r'(?:src|href|spec-url)="([^"]*)"', page.text):
        assert src.startswith("/") or src.startswith("data:"), src


async def test_each_static_file_is_served_with_its_media_type(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for name, media_type in STATIC.items():
            response = await http.get(f"/docs/static/{name}")
            assert response.status_code == 200, name
            assert response.headers["content-type"].split(";")[0] == media_type
            assert response.headers["cache-control"] == "no-cache"
            assert_secured(response)
            assert len(response.content) > 100
        assert "SwaggerUIBundle" in (await http.get("/docs/static/swagger-init.js")).text
        # ReDoc's sidebar logo is pointed away from Redocly's CDN (see docs._PATCHES).
        assert "cdn.redoc.ly" not in (await http.get("/docs/static/redoc.standalone.js")).text


@pytest.mark.parametrize(
    "name", ["x", "docs.html", "redoc.html", "swagger-ui-bundle.js.map", "favicon.png", "docs.py"]
)
async def test_an_unknown_static_name_is_404_in_the_error_envelope(
    server: LiveServer, name: str
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        response = await http.get(f"/docs/static/{name}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
    assert_secured(response)


@pytest.mark.parametrize("path", ["..%2Fdocs.py", "%2E%2E%2F%2E%2E%2Fapp.py", "../../app.py"])
async def test_a_path_never_reaches_the_filesystem(server: LiveServer, path: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        response = await http.get(f"/docs/static/{path}")
    # A decoded "/" makes it another path, which no route serves.
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


async def test_the_pages_are_not_in_the_openapi_document(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        paths = (await http.get("/openapi.json")).json()["paths"]
    assert not [path for path in paths if path.startswith(("/docs", "/redoc"))]


@dataclass
class Recorded:
    """Every request the page made, and every error or CSP violation it reported."""

    urls: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[tuple[Page, Recorded]]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    opened = await context.new_page()
    recorded = Recorded()

    def on_console(message: ConsoleMessage) -> None:
        # A CSP violation is reported as a console error ("Refused to ... Content Security Policy").
        if message.type == "error" or "Content Security Policy" in message.text:
            recorded.console_errors.append(message.text)

    def on_request(request: Request) -> None:
        recorded.urls.append(request.url)

    opened.on("console", on_console)
    opened.on("pageerror", lambda error: recorded.page_errors.append(str(error)))
    opened.on("request", on_request)
    yield opened, recorded
    await context.close()


def assert_stayed_on(server: LiveServer, recorded: Recorded) -> None:
    foreign = [
        url for url in recorded.urls if not url.startswith((f"{server.url}/", "data:", "blob:"))
    ]
    assert foreign == []
    assert f"{server.url}/openapi.json" in recorded.urls
    assert recorded.console_errors == []
    assert recorded.page_errors == []


async def test_swagger_ui_renders_the_api_from_this_origin_only(
    server: LiveServer, page: tuple[Page, Recorded]
) -> None:
    opened, recorded = page
    await opened.goto(f"{server.url}/docs")
    await expect(opened.locator(".swagger-ui .info .title")).to_contain_text(
        "flashsale", timeout=SLOW
    )
    operation = opened.locator(".opblock-summary-path", has_text=re.compile(r"^/orders$"))
    await expect(operation.first).to_be_visible(timeout=SLOW)
    await opened.screenshot(path=SHOTS / "docs-swagger.png")
    # "Try it out" on GET /health: Swagger UI calls this origin and renders the answer.
    health = opened.locator(
        ".opblock", has=opened.locator(".opblock-summary-path", has_text="/health")
    )
    await health.locator(".opblock-summary").click()
    await health.get_by_role("button", name="Try it out").click()
    await health.get_by_role("button", name="Execute").click()
    status = health.locator(".live-responses-table tbody .response-col_status")
    await expect(status).to_have_text("200", timeout=SLOW)
    assert f"{server.url}/health" in recorded.urls
    assert_stayed_on(server, recorded)


async def test_redoc_renders_the_api_from_this_origin_only(
    server: LiveServer, page: tuple[Page, Recorded]
) -> None:
    opened, recorded = page
    await opened.goto(f"{server.url}/redoc")
    await expect(opened.locator("h1").first).to_contain_text("flashsale", timeout=SLOW)
    await expect(opened.get_by_text("/orders", exact=True).first).to_be_attached(timeout=SLOW)
    # The search box runs in a Worker: typing in it must work under the CSP too.
    await opened.get_by_placeholder("Search...").fill("orders")
    await expect(opened.locator("[data-role='search:results'] li").first).to_be_visible(
        timeout=SLOW
    )
    await opened.screenshot(path=SHOTS / "docs-redoc.png")
    assert_stayed_on(server, recorded)
