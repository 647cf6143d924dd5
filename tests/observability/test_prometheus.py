"""A real Prometheus (Debian's `prometheus`) scraping a live `flashsale serve` with two server
processes and its job worker, with deploy/alerts.yml loaded: what the dashboards and alerts
will read is exactly what happened."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from flashsale.access.operators import new_key
from flashsale.bench.harness import FINISHED, free_port, migrated_database, status_is, wait_for_job
from tests.support import ROOT, eventually, http_client, require_tool, running_server

STOCK, BUYERS = 100, 137


@contextmanager
def running_prometheus(
    binary: str, targets: dict[str, str], directory: Path, key_files: dict[str, Path] | None = None
) -> Iterator[httpx.Client]:
    """Prometheus on 127.0.0.1 scraping `targets` (job -> host:port) every second, evaluating
    deploy/alerts.yml every second; a client on its HTTP API once it is ready. A job named in
    `key_files` scrapes with the key in that file, as deploy/prometheus.yml does."""
    key_files = key_files or {}
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "deploy" / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [{"targets": [target]}],
                **(
                    {"authorization": {"type": "Bearer", "credentials_file": str(key_files[job])}}
                    if job in key_files
                    else {}
                ),
            }
            for job, target in targets.items()
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = directory / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as api:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, log_path.read_text(errors="replace")
                try:
                    if api.get("/-/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text(errors="replace")
                time.sleep(0.1)
            yield api
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _data(api: httpx.Client, path: str, **params: str) -> Any:
    response = api.get(f"/api/v1/{path}", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]


def query(api: httpx.Client, promql: str) -> float | None:
    """The single value of an instant query, or None while it has no result."""
    result = _data(api, "query", query=promql)["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


@pytest.fixture
async def own_database(admin_url: str) -> AsyncIterator[str]:
    """A database of its own: no other test's server runs its settlement job."""
    async with migrated_database(admin_url, "flashsale_prometheus") as url:
        yield url


async def test_prometheus_sees_exactly_the_crowd_the_job_and_healthy_rules(
    own_database: str, logs_dir: Path, tmp_path: Path
) -> None:
    binary = require_tool("prometheus", "prometheus")
    worker_port = free_port()
    env = {"WEB_CONCURRENCY": "2", "METRICS_PORT": str(worker_port), "LOG_LEVEL": "warning"}
    conn = await asyncpg.connect(own_database)
    try:
        product_id = await conn.fetchval(
            "INSERT INTO products (name, price, stock) VALUES ('hot', 100, $1) RETURNING id", STOCK
        )
    finally:
        await conn.close()

    # Two server processes and the job worker `serve` supervises: one scrape of the API shows
    # them all (the worker writes into the same multiprocess directory, and opens no port).
    with running_server(own_database, logs_dir, **env) as server:
        targets = {"flashsale-app": server.url.removeprefix("http://")}
        with running_prometheus(binary, targets, tmp_path) as api:

            async def target_up() -> bool:
                active = _data(api, "targets")["activeTargets"]
                return [(t["labels"]["job"], t["health"]) for t in active] == [
                    ("flashsale-app", "up")
                ]

            await eventually(target_up, "the API target is up")
            with pytest.raises(ConnectionRefusedError):  # the supervised worker opens no port
                socket.create_connection(("127.0.0.1", worker_port), timeout=1).close()

            async with http_client(server.url, connections=BUYERS) as client:
                body = {"product_id": product_id, "quantity": 1}
                responses = await asyncio.gather(
                    *(
                        client.post("/orders", json={**body, "buyer_id": f"buyer-{n}"})
                        for n in range(BUYERS)
                    )
                )
                statuses = sorted(r.status_code for r in responses)
                assert statuses == [201] * STOCK + [409] * (BUYERS - STOCK)
                job = await client.post(
                    "/jobs/settlement", json={"from": "2025-01-01", "to": "2025-01-31"}
                )
                assert job.status_code == 202, job.text
                finished = await wait_for_job(client, job.json()["job_id"], status_is(*FINISHED))
                assert finished["status"] == "COMPLETED", finished

            expected = {
                "sum(flashsale_orders_created_total)": STOCK,
                'sum(flashsale_orders_rejected_total{reason="out_of_stock"})': BUYERS - STOCK,
                'sum(flashsale_settlement_jobs_total{status="COMPLETED"})': 1,
                'sum(flashsale_http_requests_total{route="/orders", status="201"})': STOCK,
                "min(flashsale_database_up)": 1,
            }

            async def prometheus_has_seen_it_all() -> bool:
                return {promql: query(api, promql) for promql in expected} == expected

            await eventually(prometheus_has_seen_it_all, "Prometheus's figures equal the traffic")

            async def every_rule_evaluated() -> bool:
                rules = [r for g in _data(api, "rules")["groups"] for r in g["rules"]]
                return bool(rules) and all(r["health"] == "ok" for r in rules)

            await eventually(every_rule_evaluated, "every alert rule evaluated with health ok")
            rules = [r for g in _data(api, "rules")["groups"] for r in g["rules"]]
            alerts = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
            assert {r["name"] for r in rules} == {
                rule["alert"] for group in alerts["groups"] for rule in group["rules"]
            }
            assert [r["name"] for r in rules if r["state"] == "firing"] == []


async def test_prometheus_scrapes_a_keyed_server_with_a_viewer_key(
    database_url: str, logs_dir: Path, tmp_path: Path
) -> None:
    binary = require_tool("prometheus", "prometheus")
    secret, viewer = new_key("prometheus", "viewer")
    key_file = tmp_path / "prometheus_key"
    key_file.write_text(secret)
    with running_server(database_url, logs_dir, API_KEYS=viewer.line) as server:
        target = server.url.removeprefix("http://")
        jobs = {"with-viewer-key": target, "without-key": target}
        keys = {"with-viewer-key": key_file}
        with running_prometheus(binary, jobs, tmp_path, keys) as api:

            async def scraped() -> bool:
                active = _data(api, "targets")["activeTargets"]
                health = {t["labels"]["job"]: t["health"] for t in active}
                return health == {"with-viewer-key": "up", "without-key": "down"}

            await eventually(scraped, "the keyed job is up and the other is refused")
            refused = next(
                t
                for t in _data(api, "targets")["activeTargets"]
                if t["labels"]["job"] == "without-key"
            )
            assert "401" in refused["lastError"]
