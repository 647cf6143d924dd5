"""The ASGI application: routers, error handlers, middleware and lifespan in one place."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from flashsale import __version__, db, health
from flashsale.access.buyers import BuyerKeys, BuyerTokens
from flashsale.access.control import Access
from flashsale.access.operators import OperatorKeys
from flashsale.config import Settings, load_settings
from flashsale.console.api import router as console_router
from flashsale.deps import AppState, set_state
from flashsale.errors import refusal_reasons
from flashsale.observability import metrics
from flashsale.observability.api import router as metrics_router
from flashsale.observability.logging import configure_logging
from flashsale.observability.sampling import sampling
from flashsale.orders.api import router as orders_router
from flashsale.orders.coalescer import OrderCoalescer
from flashsale.orders.hot_path import PlaceOrderEndpoint
from flashsale.orders.placement import new_order_placement
from flashsale.orders.sold_out import SoldOut
from flashsale.products.api import router as products_router
from flashsale.settlement.api import router as settlement_router
from flashsale.settlement.events import JobEvents
from flashsale.settlement.worker import job_runtime
from flashsale.transactions.api import IMPORT_PATH, import_body_rule
from flashsale.transactions.api import router as transactions_router
from flashsale.web.docs import install_docs
from flashsale.web.errors import install_error_handlers
from flashsale.web.guards import RequestBodyGuard, known_query_parameters
from flashsale.web.middleware import HeadAsGet, RequestContextMiddleware
from flashsale.web.openapi import install_openapi

log = structlog.get_logger()


def create_app(settings: Settings | None = None) -> FastAPI:
    """App factory; uvicorn calls it with no arguments in every worker process."""
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started_at = time.monotonic()
        url = db.database_url(settings)
        database = await db.Database.connect(settings, url)
        sold_out = SoldOut(max_age_s=settings.sold_out_cache_s)
        orders = new_order_placement(settings, database, sold_out)
        job_events = JobEvents(database, max_streams=settings.job_event_streams_max)
        buyer_keys = BuyerKeys(settings) if settings.buyer_auth == "jwt" else None
        buyers = BuyerTokens(settings, buyer_keys) if buyer_keys else None
        access = Access(OperatorKeys(settings.operator_keys), buyers)
        # Everything built so far lives as long as the process: keep it out of the collector's
        # full passes, whose pauses otherwise stall every request in flight under a crowd.
        gc.freeze()
        log.info("app.started", version=__version__, pool_size=settings.db_pool_size)
        try:
            async with (
                sampling(database, orders if isinstance(orders, OrderCoalescer) else None),
                sold_out.listening(url) if settings.sold_out_cache_s else contextlib.nullcontext(),
                # With EMBEDDED_WORKER this process runs settlement jobs too (`processes.serve`).
                job_runtime(settings, url, worker=settings.embedded_worker) as jobs,
                job_events.listening(url),
                buyer_keys.kept_current() if buyer_keys else contextlib.nullcontext(),
            ):
                state = AppState(settings, database, orders, jobs, job_events, access, started_at)
                set_state(app, state)
                yield
        finally:
            await orders.close()
            await database.close()
            log.info("app.stopped")

    app = FastAPI(
        title="flashsale",
        version=__version__,
        summary="Limited-stock orders that never oversell, and merchant settlement jobs.",
        lifespan=lifespan,
        dependencies=[Depends(known_query_parameters)],
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    install_openapi(app)
    install_docs(app)
    app.include_router(health.router)
    app.include_router(metrics_router)
    app.include_router(products_router)
    app.include_router(orders_router)
    app.include_router(settlement_router)
    app.include_router(transactions_router)
    app.include_router(console_router)
    metrics.export_refusals_from_zero(refusal_reasons())
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PATCH"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "If-Match",
                "X-Request-ID",
            ],
            expose_headers=["ETag", "Location", "X-Request-ID", "Idempotent-Replayed"],
        )
    app.add_middleware(PlaceOrderEndpoint, api=app)
    app.add_middleware(
        RequestBodyGuard,
        max_bytes=settings.max_body_bytes,
        rules={IMPORT_PATH: import_body_rule(settings.import_max_bytes)},
    )
    app.add_middleware(HeadAsGet)
    app.add_middleware(RequestContextMiddleware)
    return app
