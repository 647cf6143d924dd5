"""Console fixtures: a live server with an API key, and Debian's chromium driven by Playwright.

Playwright's bundled browsers are never downloaded: the tests launch the system chromium, and
skip without it (fail under CI=true, where .ci/run installs it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Dialog, Page, Request

from flashsale.bench.harness import LiveServer
from tests.support import running_server

API_KEY = "console-test-key-5f2c9a71"


@pytest.fixture(scope="module")
def console_server(database_url: str, logs_dir: Path) -> Iterator[LiveServer]:
    # info: one `http.request` line per request, so the log really is evidence about the key.
    with running_server(database_url, logs_dir, API_KEY=API_KEY, LOG_LEVEL="info") as live:
        yield live


@pytest.fixture
async def admin(console_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=console_server.url, headers=headers, timeout=30) as http:
        yield http


@dataclass
class Recorded:
    """What the page did besides rendering: every request URL, dialogs, errors, CSP reports."""

    urls: list[str] = field(default_factory=list)
    responses: list[tuple[str, int, str]] = field(default_factory=list)  # url, status, type
    dialogs: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)


@dataclass
class Console:
    page: Page
    url: str
    recorded: Recorded
    shots: Path

    async def open(self, key: str | None = API_KEY) -> None:
        """Load /console and, with `key`, type it into the key form."""
        await self.page.goto(f"{self.url}/console")
        if key is not None:
            await self.page.get_by_label("API key", exact=True).fill(key)
            await self.page.get_by_role("button", name="Use key").click()

    async def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await self.page.screenshot(path=path, full_page=True)
        return path


@pytest.fixture
async def console(
    browser: Browser, console_server: LiveServer, tmp_path: Path
) -> AsyncIterator[Console]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    recorded = Recorded()

    async def dismiss(dialog: Dialog) -> None:
        recorded.dialogs.append(dialog.message)
        await dialog.dismiss()

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            recorded.csp_violations.append(message.text)

    def on_request(request: Request) -> None:
        recorded.urls.append(request.url)

    page.on("dialog", dismiss)
    page.on("console", on_console)
    page.on("pageerror", lambda error: recorded.page_errors.append(str(error)))
    page.on("request", on_request)
    page.on(
        "response",
        lambda response: recorded.responses.append(
            (response.url, response.status, response.headers.get("content-type", ""))
        ),
    )
    yield Console(page, console_server.url, recorded, tmp_path)
    await context.close()
    # Every test: the page ran without script errors and broke none of its own CSP.
    assert recorded.page_errors == []
    assert recorded.csp_violations == []
