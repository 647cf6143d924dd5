"""/metrics after real traffic: every counter moves by exactly what was sent, in one process or
several, and the output passes `promtool check metrics`."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from flashsale.app import create_app  # noqa: F401  (imports every domain's error classes)
from flashsale.bench.harness import free_port
from flashsale.config import Settings
from flashsale.errors import refusal_reasons
from flashsale.observability import exposition, metrics, sampling
from tests.factories import make_product
from tests.observability.scraping import Scrape, promtool_check_metrics, scrape
from tests.support import http_client, running_server

POOL_SIZE = 4


def _order(product_id: int, quantity: int = 1) -> dict[str, object]:
    return {"product_id": product_id, "quantity": quantity, "buyer_id": "buyer-1"}


async def test_counters_move_by_exactly_the_traffic_sent(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=3)
    before = await scrape(client)

    statuses = [
        (await client.post("/orders", json=_order(product["id"]))).status_code,
        (await client.post("/orders", json=_order(product["id"]))).status_code,
    ]
    keyed = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    first = await client.post("/orders", json=_order(product["id"]), headers=keyed)
    replay = await client.post("/orders", json=_order(product["id"]), headers=keyed)
    statuses += [
        first.status_code,
        replay.status_code,
        (await client.post("/orders", json=_order(product["id"], 2), headers=keyed)).status_code,
        (await client.post("/orders", json=_order(product["id"]))).status_code,
        (await client.post("/orders", json=_order(10**9))).status_code,
        (await client.post("/orders", json={"product_id": "one"})).status_code,
    ]
    fetched = await client.get(f"/orders/{first.json()['id']}")
    malformed = await client.get("/orders/not-a-uuid")
    after = await scrape(client)

    assert statuses == [201, 201, 201, 201, 422, 409, 404, 400]
    assert replay.headers["idempotent-replayed"] == "true"
    assert (fetched.status_code, malformed.status_code) == (200, 400)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("flashsale_orders_created_total") == 3  # the replay is not a new order
    assert delta("flashsale_order_units_sold_total") == 3
    rejected = {
        reason: delta("flashsale_orders_rejected_total", reason=reason)
        for reason in (
            "out_of_stock", "product_not_found", "validation",
            "idempotency_key_reused", "idempotency_key_in_use",
        )
    }  # fmt: skip
    assert rejected == {
        "out_of_stock": 1, "product_not_found": 1, "validation": 1,
        "idempotency_key_reused": 1, "idempotency_key_in_use": 0,
    }  # fmt: skip
    place = {"method": "POST", "route": "/orders"}
    for status, count in {"201": 4, "422": 1, "409": 1, "404": 1, "400": 1}.items():
        assert delta("flashsale_http_requests_total", **place, status=status) == count, status
    assert delta("flashsale_http_request_duration_seconds_count", **place) == 8
    assert delta("flashsale_http_request_duration_seconds_bucket", **place, le="+Inf") == 8
    get = {"method": "GET", "route": "/orders/{order_id}"}
    assert delta("flashsale_http_requests_total", **get, status="200") == 1
    assert delta("flashsale_http_requests_total", **get, status="400") == 1
    # Every placement went to the database, one after another (one batch each in flash-sale
    # mode, timed under its own operation name), but the invalid body and the late buyer: the
    # keyed order sold the last unit, so the process knew the product was sold out.
    assert delta("flashsale_orders_sold_out_from_memory_total") == 1
    assert delta("flashsale_db_query_duration_seconds_count", operation="order batch") == 6
    assert delta("flashsale_order_batch_size_count") == 6
    assert (
        delta("flashsale_db_query_duration_seconds_count", operation="GET /orders/{order_id}") == 1
    )
    assert delta("flashsale_db_query_duration_seconds_count", operation="GET /metrics") == 1
    assert delta("flashsale_db_pool_acquire_duration_seconds_count") == 6 + 1 + 1
    # Stock is read from the database at scrape time.
    assert after.value("flashsale_product_stock", product_id=str(product["id"])) == 0
    assert after.value("flashsale_products", state="sold_out") == 1
    assert after.value("flashsale_products", state="available") == 0
    # Route templates, never raw paths.
    assert not any(
        "not-a-uuid" in labels or first.json()["id"] in labels for labels in _labels(after)
    )


async def test_refusals_at_the_edge_are_counted_like_the_others(client: httpx.AsyncClient) -> None:
    """413 and 415 come from the body guard, before routing: still refused order placements."""
    before = await scrape(client)
    too_large = await client.post(
        "/orders", content=b"{" + b" " * 70_000 + b"}", headers={"content-type": "application/json"}
    )
    not_json = await client.post("/orders", content=b"x", headers={"content-type": "text/plain"})
    elsewhere = await client.post("/products", content=b"x", headers={"content-type": "text/plain"})
    after = await scrape(client)

    assert (too_large.status_code, not_json.status_code, elsewhere.status_code) == (413, 415, 415)
    rejected = "flashsale_orders_rejected_total"
    assert (
        after.value(rejected, reason="validation") - before.value(rejected, reason="validation")
        == 2
    )
    # Every reason an error class declares is exported (from zero, before its first refusal:
    # this server is shared with tests that refuse orders, so only presence is checked here).
    exported = {dict(labels)["reason"] for labels in after.series(rejected)}
    assert exported == refusal_reasons()
    assert {"sale_not_started", "sale_ended", "purchase_limit_exceeded"} <= exported


def _labels(scraped: Scrape) -> set[str]:
    return {value for (_, labels) in scraped.samples for _, value in labels}


async def test_runtime_and_pool_figures_are_exported(client: httpx.AsyncClient) -> None:
    scraped = await scrape(client)

    assert scraped.value("flashsale_db_pool_max_connections") == Settings().db_pool_size
    assert scraped.value("flashsale_db_pool_connections", state="idle") >= 1
    assert scraped.value("process_resident_memory_bytes") > 10_000_000
    assert scraped.value("process_cpu_seconds_total") > 0
    assert scraped.value("process_open_fds") > 0
    assert scraped.value("python_gc_collections_total", generation="0") > 0


async def test_metrics_output_passes_promtool(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await make_product(pool, stock=0)
    await client.post("/orders", json=_order(1))
    scraped = await scrape(client)

    checked = promtool_check_metrics(scraped.text)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""


async def test_stock_is_exported_for_the_most_recently_updated_products_only(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    limit = Settings().metrics_stock_products
    products = [await make_product(pool, stock=i) for i in range(limit + 5)]
    oldest = products[0]
    await pool.execute(
        "UPDATE products SET updated_at = now() + interval '1 minute' WHERE id = $1", oldest["id"]
    )

    stock = (await scrape(client)).series("flashsale_product_stock")

    newest = [oldest, *products[-(limit - 1) :]]
    assert stock == {frozenset({("product_id", str(p["id"]))}): p["stock"] for p in newest}


@dataclass
class MergedView:
    """What scrapes of a two-worker server returned after both workers took orders."""

    scrapes: list[Scrape]
    sent: int
    product_id: int
    directory: Path


@pytest.fixture(scope="module")
async def merged_view(
    database_url: str, pool: asyncpg.Pool, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> MergedView:
    """WEB_CONCURRENCY=2, with a stale file from an earlier run in PROMETHEUS_MULTIPROC_DIR."""
    directory = tmp_path_factory.mktemp("prometheus")
    stale = MmapedDict(str(directory / "counter_999999.db"))  # type: ignore[no-untyped-call]
    stale.write_value(  # type: ignore[no-untyped-call]
        mmap_key("flashsale_orders_created", "flashsale_orders_created_total", [], [], "old"),
        1000.0,
        0.0,
    )
    stale.close()  # type: ignore[no-untyped-call]
    product = await make_product(pool, stock=10**6)
    env = {
        "WEB_CONCURRENCY": "2",
        "DB_POOL_SIZE": str(POOL_SIZE),
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
    }

    with running_server(database_url, logs_dir, **env) as server:
        async with http_client(server.url, connections=64) as client:
            await _until(
                client, lambda s: s.value("flashsale_db_pool_max_connections") == 2 * POOL_SIZE
            )
            sent = 0
            while len(_pids_with_orders(directory)) < 2:  # until both workers have taken orders
                assert sent < 2000, "the kernel never gave the second worker a connection"
                async with http_client(server.url, connections=64) as burst:
                    responses = await asyncio.gather(
                        *(burst.post("/orders", json=_order(product["id"])) for _ in range(100))
                    )
                assert {r.status_code for r in responses} == {201}
                sent += 100
            scrapes = []
            for _ in range(8):  # new connections: several of them reach each worker
                async with http_client(server.url, connections=1) as fresh:
                    scrapes.append(await scrape(fresh))
    return MergedView(scrapes, sent, product["id"], directory)


async def test_several_workers_report_one_merged_view(merged_view: MergedView) -> None:
    """Whichever worker answers, the counters hold every worker's part, once; what a previous
    run left in the directory is wiped at start."""
    sent = merged_view.sent
    for scraped in merged_view.scrapes:
        assert scraped.value("flashsale_orders_created_total") == sent
        assert scraped.value("flashsale_order_units_sold_total") == sent
        assert (
            scraped.value(
                "flashsale_http_requests_total", method="POST", route="/orders", status="201"
            )
            == sent
        )
        assert scraped.value("flashsale_db_pool_max_connections") == 2 * POOL_SIZE
        assert scraped.value("process_max_fds") > 0
        # Read from the database by the answering process: reported once, never doubled.
        stock = scraped.value("flashsale_product_stock", product_id=str(merged_view.product_id))
        assert stock == 10**6 - sent
    assert not (merged_view.directory / "counter_999999.db").exists()


async def test_the_merged_view_passes_promtool(merged_view: MergedView) -> None:
    for scraped in merged_view.scrapes:
        checked = promtool_check_metrics(scraped.text)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def _pids_with_orders(directory: Path) -> set[str]:
    pids = set()
    for path in directory.glob("counter_*.db"):
        for family in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
            if any(
                s.name == "flashsale_orders_created_total" and s.value > 0 for s in family.samples
            ):
                pids.add(path.stem.split("_")[1])
    return pids


async def _until(client: httpx.AsyncClient, condition: Callable[[Scrape], bool]) -> None:
    for _ in range(100):
        if condition(await scrape(client)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the condition never held")


def test_serve_gives_several_workers_a_fresh_directory_and_removes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_DIR_VARIABLE, raising=False)
    with exposition.multiprocess_directory(1):
        assert metrics.MULTIPROC_DIR_VARIABLE not in os.environ  # one process: in memory

    with exposition.multiprocess_directory(2):
        directory = Path(os.environ[metrics.MULTIPROC_DIR_VARIABLE])
        assert directory.is_dir()
        assert list(directory.iterdir()) == []

    assert not directory.exists()
    assert metrics.MULTIPROC_DIR_VARIABLE not in os.environ


def test_worker_metrics_server_serves_the_job_metrics() -> None:
    """`flashsale worker` processes expose the same registry on METRICS_PORT."""
    port = free_port()
    server = exposition.serve_worker_metrics(Settings(metrics_port=port))
    assert server is not None
    try:
        before = Scrape(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
        metrics.record_job_finished("COMPLETED", 12.5)
        metrics.record_job_finished("CANCELLED", 0.3)
        metrics.record_transactions_processed(10_000)
        metrics.record_transactions_processed(2_500)
        sampling.sample(None)
        after = Scrape(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
    finally:
        server.shutdown()
        server.server_close()

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("flashsale_settlement_jobs_total", status="COMPLETED") == 1
    assert delta("flashsale_settlement_jobs_total", status="CANCELLED") == 1
    assert delta("flashsale_settlement_jobs_total", status="FAILED") == 0
    assert delta("flashsale_settlement_job_duration_seconds_sum", status="COMPLETED") == 12.5
    assert (
        delta("flashsale_settlement_job_duration_seconds_bucket", status="COMPLETED", le="10.0")
        == 0
    )
    assert (
        delta("flashsale_settlement_job_duration_seconds_bucket", status="COMPLETED", le="30.0")
        == 1
    )
    assert delta("flashsale_settlement_transactions_processed_total") == 12_500
    assert after.value("process_resident_memory_bytes") > 0


async def test_a_crowd_shows_in_the_batch_size_histogram(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=50)
    before = await scrape(client)

    responses = await asyncio.gather(
        *(client.post("/orders", json=_order(product["id"])) for _ in range(200))
    )
    after = await scrape(client)

    assert sorted({r.status_code for r in responses}) == [201, 409]
    # Every order went through exactly one batch, granted or refused, or was refused from
    # memory once a batch had left the product sold out.
    batched = after.value("flashsale_order_batch_size_sum") - before.value(
        "flashsale_order_batch_size_sum"
    )
    from_memory = after.value("flashsale_orders_sold_out_from_memory_total") - before.value(
        "flashsale_orders_sold_out_from_memory_total"
    )
    batches = after.value("flashsale_order_batch_size_count") - before.value(
        "flashsale_order_batch_size_count"
    )
    assert batched + from_memory == 200
    assert batched >= 50
    assert 1 <= batches <= 200
    assert after.value("flashsale_orders_waiting", state="queued") >= 0


async def test_a_metrics_directory_nobody_made_yet_is_created(
    database_url: str, logs_dir: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "not" / "made"
    with running_server(
        database_url, logs_dir, WEB_CONCURRENCY="2", PROMETHEUS_MULTIPROC_DIR=str(directory)
    ) as server:
        async with http_client(server.url) as client:
            scraped = await scrape(client)

    assert scraped.value("flashsale_db_pool_max_connections") > 0
    assert any(directory.glob("*.db"))
