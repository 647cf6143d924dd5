"""The operator console in a real browser (Debian's chromium) against a live server with API_KEY."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import httpx
from playwright.async_api import Locator, Route, expect

from flashsale.bench.harness import LiveServer, status_is, wait_for_job
from flashsale.console.api import CSP
from tests.console.conftest import API_KEY, Console
from tests.settlement.helpers import (
    MONTH,
    add_transaction,
    final_writes_held,
    fully_counted,
    seed,
    seed_month,
    settlements,
)

# Generous: a job's row updates every 2 s when polled; a limit only turns a hang into a failure.
SLOW = 30_000
XSS_NAME = "<img src=x onerror=alert(1)>"
XSS_MERCHANT = "<script>alert(1)</script>"


def job_row(console: Console, job_id: str) -> Locator:
    return console.page.locator(f'#jobs-body tr[data-job-id="{job_id}"]')


async def start_job_from_page(
    console: Console, admin: httpx.AsyncClient, first: date, last: date
) -> str:
    page = console.page
    form = page.locator("#job-form")
    await form.get_by_label("From").fill(first.isoformat())
    await form.get_by_label("To").fill(last.isoformat())
    await page.get_by_role("button", name="Start settlement job").click()
    await expect(page.locator("#jobs-status")).to_contain_text("started", timeout=SLOW)
    started = re.search(r"job_[0-9a-f-]{36}", await page.locator("#jobs-status").inner_text())
    assert started is not None
    job_id = started.group(0)
    assert (await admin.get(f"/jobs/{job_id}")).status_code == 200
    return job_id


async def test_a_job_started_from_the_page_completes_and_its_csv_downloads(
    console: Console, admin: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await seed_month(pool)
    await console.open()

    job_id = await start_job_from_page(console, admin, *MONTH)
    row = job_row(console, job_id)
    await expect(row.locator(".job-status")).to_have_text("COMPLETED", timeout=SLOW)
    await expect(row.locator("progress")).to_have_attribute("value", "100")
    await expect(row.locator(".bar-text")).to_contain_text("100%")
    await console.screenshot("job-completed")

    async with console.page.expect_download() as download_info:
        await row.get_by_role("button", name=f"Download the CSV of job {job_id}").click()
    download = await download_info.value
    saved = await download.path()

    job = (await admin.get(f"/jobs/{job_id}")).json()
    direct = await admin.get(job["download_url"])
    assert direct.status_code == 200
    assert download.suggested_filename == f"{job_id}.csv"
    assert await asyncio.to_thread(Path(saved).read_bytes) == direct.content
    assert direct.content.startswith(b"merchant_id,date,gross,fee,net,txn_count\n")


async def test_a_running_job_is_cancelled_from_the_page(
    console: Console, admin: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await seed(pool, 5_000, *MONTH)
    await console.open()

    # The job computes everything, then waits for this lock to write: RUNNING until we cancel.
    async with final_writes_held(pool):
        job_id = await start_job_from_page(console, admin, *MONTH)
        await wait_for_job(admin, job_id, fully_counted)
        row = job_row(console, job_id)
        await expect(row.locator(".job-status")).to_have_text("RUNNING", timeout=SLOW)
        await console.screenshot("job-running")

        await row.get_by_role("button", name=f"Cancel job {job_id}").click()

        await expect(row.locator(".job-status")).to_have_text("CANCELLED", timeout=SLOW)
        await expect(row.get_by_role("button")).to_have_count(0)
    await console.screenshot("job-cancelled")
    assert (await admin.get(f"/jobs/{job_id}")).json()["status"] == "CANCELLED"
    assert await settlements(pool) == []


async def test_a_wrong_key_shows_the_refusal_and_a_right_one_clears_it(
    console: Console, pool: asyncpg.Pool
) -> None:
    await pool.execute("INSERT INTO products (name, price, stock) VALUES ('Widget', 1999, 7)")
    await console.open(key="not-the-key")

    alert = console.page.get_by_role("alert")
    await expect(alert).to_have_text(
        "The key was refused (401). Enter an operator key (a viewer's is enough to watch)."
    )
    await expect(console.page.locator("#products-body tr")).to_have_count(0)
    await console.screenshot("wrong-key")

    await console.page.get_by_label("API key", exact=True).fill(API_KEY)
    await console.page.get_by_role("button", name="Use key").click()

    await expect(alert).to_be_hidden()
    await expect(console.page.locator("#products-body tr")).to_have_count(1)
    await expect(console.page.locator("#products-body td").nth(2)).to_have_text("19.99")


async def test_user_input_is_rendered_as_text_and_the_page_has_a_strict_csp(
    console: Console, admin: httpx.AsyncClient
) -> None:
    created = await admin.post("/products", json={"name": XSS_NAME, "price": 5, "stock": 3})
    assert created.status_code == 201, created.text

    await console.open()

    name_cell = console.page.locator("#products-body td.name")
    await expect(name_cell).to_have_count(1)
    assert await name_cell.text_content() == XSS_NAME
    assert await console.page.locator("img").count() == 0
    await console.page.wait_for_timeout(500)  # an onerror would fire by now
    assert console.recorded.dialogs == []
    await console.screenshot("xss-product")

    page = await admin.get("/console")
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    for name in ("console.js", "console.css"):
        static = await admin.get(f"/console/static/{name}")
        assert static.status_code == 200
        assert static.headers["content-security-policy"] == CSP
    for source in (page.text, (await admin.get("/console/static/console.js")).text):
        assert "innerHTML" not in source
        assert "insertAdjacentHTML" not in source
        assert "document.write" not in source
    assert "<script>" not in page.text  # only <script src=...>: no inline script
    assert "style=" not in page.text


async def test_a_merchant_id_is_rendered_as_text_in_settlements(
    console: Console, admin: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    # Needs GET /settlements (being built on main).
    await add_transaction(pool, XSS_MERCHANT, datetime(2025, 1, 5, 12, tzinfo=UTC), 1234, 34)
    job = (
        await admin.post("/jobs/settlement", json={"from": "2025-01-05", "to": "2025-01-05"})
    ).json()
    await wait_for_job(admin, job["job_id"], status_is("COMPLETED"))

    await console.open()
    await console.page.get_by_label("Merchant id (exact)").fill(XSS_MERCHANT)
    await console.page.get_by_role("button", name="Show settlements").click()

    merchant = console.page.locator("#settlements-body td.merchant")
    await expect(merchant).to_have_count(1, timeout=SLOW)
    assert await merchant.text_content() == XSS_MERCHANT
    await expect(console.page.locator("#settlements-body td").nth(2)).to_have_text("12.34")
    assert await console.page.locator("#settlements-body script").count() == 0
    await console.page.wait_for_timeout(500)
    assert console.recorded.dialogs == []
    await console.screenshot("xss-settlements")


async def test_the_key_is_never_in_a_url_nor_in_the_server_log(
    console: Console, admin: httpx.AsyncClient, pool: asyncpg.Pool, console_server: LiveServer
) -> None:
    await seed(pool, 2_000, *MONTH)
    await pool.execute("INSERT INTO products (name, price, stock) VALUES ('Widget', 1999, 7)")
    await console.open()
    job_id = await start_job_from_page(console, admin, *MONTH)
    row = job_row(console, job_id)
    await expect(row.locator(".job-status")).to_have_text("COMPLETED", timeout=SLOW)
    async with console.page.expect_download():
        await row.get_by_role("button", name=f"Download the CSV of job {job_id}").click()
    await console.page.get_by_role("button", name="Show settlements").click()
    await expect(console.page.locator("#products-body tr")).to_have_count(1)

    urls = console.recorded.urls
    assert any("/console/products" in url for url in urls)
    assert any("/jobs/settlement" in url for url in urls)
    assert [url for url in urls if API_KEY in url] == []
    log = console_server.log()
    assert "/console/products" in log  # the log does record the page's requests
    assert API_KEY not in log


async def test_a_narrow_window_scrolls_tables_not_the_page(
    console: Console, admin: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    long_name = "An exceptionally long product name that would push a table wider than a phone"
    await pool.execute(
        "INSERT INTO products (name, price, stock, max_per_buyer, sale_starts_at, sale_ends_at) "
        "VALUES ($1, 123456, 40, 2, '2026-12-24T18:00:00Z', '2026-12-26T00:00:00Z')",
        long_name,
    )
    await admin.post("/jobs/settlement", json={"from": "2025-01-01", "to": "2025-01-02"})
    await console.page.set_viewport_size({"width": 360, "height": 800})
    await console.open()
    await expect(console.page.locator("#products-body tr")).to_have_count(1)
    await expect(console.page.locator("#jobs-body tr")).to_have_count(1, timeout=SLOW)

    await console.screenshot("narrow-360")
    widths = await console.page.evaluate(
        "() => ({body: document.body.scrollWidth, root: document.documentElement.scrollWidth,"
        " view: window.innerWidth,"
        " table: document.querySelector('#products-table').scrollWidth})"
    )
    assert widths["view"] == 360
    assert widths["body"] <= widths["view"], widths
    assert widths["root"] <= widths["view"], widths
    assert widths["table"] > widths["view"]  # the table is wider: it scrolls inside its wrapper


async def test_the_products_table_shows_units_sold_and_the_sell_through(
    console: Console, admin: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = (
        await admin.post("/products", json={"name": "Sneaker", "price": 10050, "stock": 10})
    ).json()
    for buyer in ("a", "b", "c"):
        order = {"product_id": product["id"], "quantity": 1, "buyer_id": buyer}
        assert (await admin.post("/orders", json=order)).status_code == 201

    await console.open()

    row = console.page.locator("#products-body tr").first
    await expect(row.locator("td.sold")).to_have_text("3")
    await expect(row.locator("td.stock")).to_have_text("7")
    await expect(row.locator("td").nth(2)).to_have_text("100.50")
    await expect(row.get_by_role("progressbar", name="Sell-through of Sneaker")).to_have_attribute(
        "value", "30"
    )
    await expect(row.locator(".bar-text")).to_have_text("30% sold (3 of 10)")

    # Live stock: a sale made elsewhere shows without reloading the page.
    order = {"product_id": product["id"], "quantity": 2, "buyer_id": "d"}
    assert (await admin.post("/orders", json=order)).status_code == 201
    await expect(row.locator("td.stock")).to_have_text("5", timeout=SLOW)
    await expect(row.locator(".bar-text")).to_have_text("50% sold (5 of 10)")
    # The order rate counts them from /metrics once two samples exist.
    await expect(console.page.locator("#order-rate")).not_to_have_text("—", timeout=SLOW)


async def test_units_sold_counts_only_confirmed_orders(
    admin: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    first = (await admin.post("/products", json={"name": "A", "price": 1, "stock": 10})).json()
    second = (await admin.post("/products", json={"name": "B", "price": 1, "stock": 10})).json()
    await admin.post("/products", json={"name": "C", "price": 1, "stock": 10})
    orders = [
        (await admin.post("/orders", json={"product_id": pid, "quantity": q, "buyer_id": b})).json()
        for pid, q, b in [(first["id"], 2, "x"), (first["id"], 3, "y"), (second["id"], 4, "x")]
    ]
    assert (await admin.post(f"/orders/{orders[1]['id']}/cancel")).status_code == 200

    page = await admin.get("/console/products", params={"limit": 2, "offset": 0})
    rest = await admin.get("/console/products", params={"limit": 2, "offset": 2})

    assert page.status_code == 200
    assert [(p["name"], p["units_sold"], p["stock"]) for p in page.json()["products"]] == [
        ("A", 2, 8),
        ("B", 4, 6),
    ]
    assert [(p["name"], p["units_sold"]) for p in rest.json()["products"]] == [("C", 0)]
    assert page.headers["content-security-policy"] == CSP


async def test_the_console_api_needs_the_key_and_validates_paging(
    console_server: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=console_server.url) as anonymous:
        refused = await anonymous.get("/console/products")
        wrong = await anonymous.get("/console/products", headers={"Authorization": "Bearer no"})
        bad = await anonymous.get(
            "/console/products?limit=0", headers={"Authorization": f"Bearer {API_KEY}"}
        )
        unknown = await anonymous.get("/console/static/..%2Fapi.py")
        page = await anonymous.get("/console")

    for response in (refused, wrong):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "UNAUTHORIZED"
        assert response.headers["content-security-policy"] == CSP
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "VALIDATION_ERROR"
    assert bad.headers["content-security-policy"] == CSP
    assert unknown.status_code == 404
    assert page.status_code == 200  # the page itself needs no key
    assert page.headers["content-type"].startswith("text/html")


async def test_without_an_api_key_on_the_server_the_console_needs_none(
    console: Console, server: LiveServer, pool: asyncpg.Pool
) -> None:
    await pool.execute("INSERT INTO products (name, price, stock) VALUES ('Open', 100, 1)")
    console.url = server.url  # the session's server has no API_KEY

    await console.open(key=None)

    await expect(console.page.locator("#products-body tr")).to_have_count(1)
    await expect(console.page.locator("#jobs-status")).to_have_text("No jobs yet.")
    await expect(console.page.get_by_role("alert")).to_be_hidden()


def _paths(console: Console) -> list[str]:
    return [url.removeprefix(console.url) for url in console.recorded.urls]


async def test_job_progress_comes_from_the_event_stream(
    console: Console, admin: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    # Needs GET /jobs/{job_id}/events (being built on main).
    await seed(pool, 5_000, *MONTH)
    await console.open()

    async with final_writes_held(pool):
        job_id = await start_job_from_page(console, admin, *MONTH)
        row = job_row(console, job_id)
        await expect(row.locator(".job-status")).to_have_text("RUNNING", timeout=SLOW)
    await expect(row.locator(".job-status")).to_have_text("COMPLETED", timeout=SLOW)
    await expect(row.locator("progress")).to_have_attribute("value", "100")

    events = [
        (status, kind)
        for url, status, kind in console.recorded.responses
        if url == f"{console.url}/jobs/{job_id}/events"
    ]
    assert events, "the page never opened the job's event stream"
    assert all(status == 200 and kind.startswith("text/event-stream") for status, kind in events)
    assert f"/jobs/{job_id}" not in _paths(console)  # it never fell back to polling


async def test_the_page_parses_comments_crlf_and_multi_line_data_in_the_stream(
    console: Console, admin: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """The stream is answered by the browser here (page.route), in the contract's format, to
    reach parser cases a live server does not choose to send: heartbeats, CRLF line ends, one
    JSON document over several data lines, an event that is not JSON."""
    await seed(pool, 2_000, *MONTH)

    async def stream(route: Route) -> None:
        job_id = route.request.url.split("/")[-2]
        running = await wait_for_job(admin, job_id, fully_counted)
        failed = {**running, "status": "FAILED", "error": "boom <b>bold</b>", "progress": 40}
        halfway = json.dumps({**running, "progress": 50})
        final = json.dumps(failed, indent=1).split("\n")  # one document, many lines
        body = (
            ": heartbeat\r\n\r\n"
            f"data: {halfway}\r\n\r\n"
            "data: not json\n\n"
            ": another heartbeat\n" + "".join(f"data: {line}\n" for line in final) + "\n"
        )
        await route.fulfill(status=200, body=body, headers={"Content-Type": "text/event-stream"})

    await console.page.route("**/jobs/*/events", stream)
    await console.open()
    async with final_writes_held(pool):
        job_id = await start_job_from_page(console, admin, *MONTH)
        row = job_row(console, job_id)
        await expect(row.locator(".job-status")).to_have_text("FAILED", timeout=SLOW)
        await expect(row.locator("td.error")).to_have_text("failed: boom <b>bold</b>")
        assert f"/jobs/{job_id}" not in _paths(console)  # the stream's last event sufficed
        await admin.post(f"/jobs/{job_id}/cancel")


async def test_a_stream_refused_with_503_falls_back_to_polling(
    console: Console, admin: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await seed(pool, 2_000, *MONTH)

    async def too_many(route: Route) -> None:
        envelope = {"error": {"code": "TOO_MANY_STREAMS", "message": "Too many event streams"}}
        await route.fulfill(status=503, json=envelope, headers={"Retry-After": "1"})

    await console.page.route("**/jobs/*/events", too_many)
    await console.open()
    async with final_writes_held(pool):
        job_id = await start_job_from_page(console, admin, *MONTH)
        row = job_row(console, job_id)
        await expect(row.locator(".job-status")).to_have_text("RUNNING", timeout=SLOW)
    await expect(row.locator(".job-status")).to_have_text("COMPLETED", timeout=SLOW)
    assert f"/jobs/{job_id}/events" in _paths(console)
    assert f"/jobs/{job_id}" in _paths(console)  # polled


async def test_settlements_page_through_by_cursor(
    console: Console, admin: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    # Needs GET /settlements (being built on main).
    await seed(pool, 3_000, *MONTH)  # 7 merchants x 31 days: several pages of 50
    job = (
        await admin.post("/jobs/settlement", json={"from": "2025-01-01", "to": "2025-01-31"})
    ).json()
    await wait_for_job(admin, job["job_id"], status_is("COMPLETED"))
    expected = [(merchant, day.isoformat()) for merchant, day, *_ in await settlements(pool)]
    assert len(expected) > 100

    await console.open()
    page = console.page
    await page.get_by_role("button", name="Show settlements").click()
    body = page.locator("#settlements-body tr")
    nxt = page.get_by_role("button", name="Next page").last
    seen: list[tuple[str, str]] = []
    first_page: list[str] = []
    while True:
        await expect(page.locator("#settlements-status")).to_contain_text(
            f"Page {len(seen) // 50 + 1}:", timeout=SLOW
        )
        rows = [
            (
                await row.locator("td").nth(0).inner_text(),
                await row.locator("td").nth(1).inner_text(),
            )
            for row in await body.all()
        ]
        first_page = first_page or [m for m, _ in rows]
        seen += rows
        if await nxt.is_disabled():
            break
        await nxt.click()
    assert seen == expected
    await console.screenshot("settlements-last-page")

    await page.get_by_role("button", name="First page").click()
    await expect(page.locator("#settlements-status")).to_contain_text("Page 1:")
    assert [
        await cell.inner_text()
        for cell in await page.locator("#settlements-body td.merchant").all()
    ] == first_page

    merchant = expected[0][0]
    await page.get_by_label("Merchant id (exact)").fill(merchant)
    await page.get_by_role("button", name="Show settlements").click()
    await expect(page.locator("#settlements-body td.merchant")).to_have_count(
        sum(1 for m, _ in expected if m == merchant), timeout=SLOW
    )
    assert {
        await c.inner_text() for c in await page.locator("#settlements-body td.merchant").all()
    } == {merchant}


async def test_the_key_lives_in_session_storage_until_forgotten(
    console: Console, pool: asyncpg.Pool
) -> None:
    await pool.execute("INSERT INTO products (name, price, stock) VALUES ('Widget', 1999, 7)")
    await console.open()
    page = console.page
    await expect(page.locator("#products-body tr")).to_have_count(1)

    stored = await page.evaluate("() => [{...sessionStorage}, {...localStorage}]")
    assert list(stored[0].values()) == [API_KEY]
    assert stored[1] == {}
    assert await page.get_by_label("API key", exact=True).input_value() == ""
    await page.reload()  # same tab: the key is still there, nothing to type again
    await expect(page.locator("#products-body tr")).to_have_count(1)

    await page.get_by_role("button", name="Forget key").click()

    await expect(page.locator("#products-body tr")).to_have_count(0)
    assert await page.evaluate("() => sessionStorage.length") == 0
    await expect(page.get_by_role("alert")).to_have_text(
        "This server needs an operator key (401). Enter one (a viewer's is enough to watch).",
        timeout=SLOW,
    )
    await expect(page.locator("#products-body tr")).to_have_count(0)


async def test_the_key_form_works_from_the_keyboard_with_a_visible_focus(
    console: Console, pool: asyncpg.Pool
) -> None:
    await pool.execute("INSERT INTO products (name, price, stock) VALUES ('Widget', 1999, 7)")
    await console.open(key=None)
    page = console.page

    await page.keyboard.press("Tab")
    focused = await page.evaluate(
        "() => [document.activeElement.id, getComputedStyle(document.activeElement).outlineStyle,"
        " getComputedStyle(document.activeElement).outlineWidth]"
    )
    assert focused == ["api-key", "solid", "3px"]
    await page.keyboard.type(API_KEY)
    await page.keyboard.press("Enter")

    await expect(page.locator("#products-body tr")).to_have_count(1)
    assert await page.evaluate("() => document.documentElement.lang") == "en"
    await console.screenshot("keyboard")
