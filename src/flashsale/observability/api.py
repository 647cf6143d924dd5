"""`GET /metrics`: every process's metrics, plus figures read from the database at scrape time.

Stock levels and settlement jobs waiting/running are counted in PostgreSQL by the process that
answers the scrape, so they are exact and reported once however many processes serve the API.
Stock is exported for at most METRICS_STOCK_PRODUCTS products, the most recently updated ones
(those being sold), plus the count of products in and out of stock: bounded cardinality.
`flashsale_database_up` says whether the answering process reaches PostgreSQL: the scrape's own
reads refresh it, so it is current even when no request comes in.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from flashsale.access.control import AccessRoute, OperatorOnly
from flashsale.db import Connection
from flashsale.deps import AppSettings, Db
from flashsale.errors import DatabaseTimeout, DatabaseUnavailable
from flashsale.observability import exposition

router = APIRouter(tags=["observability"], route_class=AccessRoute)

# A scrape should not queue behind a crowd of orders for long; without the database it still
# reports everything else.
DATABASE_WAIT_S = 1.0


# With operator keys, a scrape needs one (a viewer's is enough: deploy/prometheus.yml).
@router.get("/metrics", include_in_schema=False, dependencies=[OperatorOnly])
async def metrics_endpoint(database: Db, settings: AppSettings) -> Response:
    families: list[Metric] = []
    try:
        async with database.connection(acquire_timeout_s=DATABASE_WAIT_S) as conn:
            families += await stock_families(conn, limit=settings.metrics_stock_products)
            families += await job_families(conn)
    except (DatabaseUnavailable, DatabaseTimeout):
        families = []
    up = GaugeMetricFamily(
        "flashsale_database_up",
        "1 when this process's last database work (a request, a health check, this scrape) "
        "reached PostgreSQL, 0 when it failed for an outage",
    )
    up.add_metric([], int(database.reachable))
    return Response(exposition.render([*families, up]), media_type=CONTENT_TYPE_PLAIN_0_0_4)


async def stock_families(conn: Connection, *, limit: int) -> list[Metric]:
    products = GaugeMetricFamily(
        "flashsale_products", "Products by stock state (available, sold_out)", labels=["state"]
    )
    counts = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE stock > 0) AS available, "
        "count(*) FILTER (WHERE stock = 0) AS sold_out FROM products"
    )
    assert counts is not None
    products.add_metric(["available"], counts["available"])
    products.add_metric(["sold_out"], counts["sold_out"])
    stock = GaugeMetricFamily(
        "flashsale_product_stock",
        "Units in stock of the most recently updated products (METRICS_STOCK_PRODUCTS of them)",
        labels=["product_id"],
    )
    rows = await conn.fetch(
        "SELECT id, stock FROM products ORDER BY updated_at DESC, id DESC LIMIT $1", limit
    )
    for row in rows:
        stock.add_metric([str(row["id"])], row["stock"])
    return [products, stock]


async def job_families(conn: Connection) -> list[Metric]:
    waiting = GaugeMetricFamily("flashsale_settlement_jobs_waiting", "Settlement jobs queued")
    running = GaugeMetricFamily("flashsale_settlement_jobs_running", "Settlement jobs running")
    counts = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE status = 'QUEUED') AS waiting, "
        "count(*) FILTER (WHERE status = 'RUNNING') AS running "
        "FROM settlement_jobs WHERE status IN ('QUEUED', 'RUNNING')"
    )
    assert counts is not None
    waiting.add_metric([], counts["waiting"])
    running.add_metric([], counts["running"])
    return [waiting, running]
