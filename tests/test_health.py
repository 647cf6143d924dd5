"""/health reports the database, goes 503 when it is gone, and recovers when it is back."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from flashsale import migrations
from flashsale.bench.harness import LiveServer
from flashsale.health import format_uptime
from tests.support import EmbeddedPostgres, running_server


async def test_health_is_healthy_with_the_seed_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "version", "checks", "uptime", "timestamp"}
    assert body["status"] == "healthy"
    assert body["checks"] == {"database": "healthy"}
    assert body["version"] == "1.0.0"
    assert re.fullmatch(r"(\d+h)?(\d+m)?\d+s", body["uptime"])
    assert body["timestamp"].endswith("Z")


def test_uptime_is_formatted_like_go_durations() -> None:
    assert format_uptime(8130.9) == "2h15m30s"
    assert format_uptime(245) == "4m5s"
    assert format_uptime(7) == "7s"
    assert format_uptime(3600) == "1h0m0s"


async def test_health_is_503_while_the_database_is_down_and_recovers(
    tmp_path: Path, logs_dir: Path
) -> None:
    database = EmbeddedPostgres(tmp_path / "pgdata")
    migrations.upgrade(database.url)
    with running_server(database.url, logs_dir) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            assert (await client.get("/health")).status_code == 200

            database.stop()
            down = await client.get("/health")
            order = await client.post(
                "/orders", json={"product_id": 1, "quantity": 1, "buyer_id": "b"}
            )

            assert down.status_code == 503
            assert down.json()["status"] == "unhealthy"
            assert down.json()["checks"] == {"database": "unhealthy"}
            assert order.status_code == 503
            assert order.json()["error"]["code"] == "DATABASE_UNAVAILABLE"

            database.start()
            await _until_healthy(client, server)
    database.stop()


async def _until_healthy(client: httpx.AsyncClient, server: LiveServer) -> None:
    for _ in range(100):
        if (await client.get("/health")).status_code == 200:
            return
    raise AssertionError(f"never recovered:\n{server.log()}")
