"""The app's state, typed, and the FastAPI dependencies routes read it through.

The lifespan (`app.py`) builds one `AppState` and stores it on the app; routes never touch
`request.app.state` themselves. Dependencies are async: sync ones would run in a thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from starlette.applications import Starlette

from flashsale.access.control import Access
from flashsale.config import Settings
from flashsale.db import Database
from flashsale.orders.placement import OrderPlacement
from flashsale.settlement.events import JobEvents
from flashsale.settlement.worker import JobRuntime
from flashsale.transactions.importing import MAX_CONCURRENT_IMPORTS


@dataclass(frozen=True, slots=True)
class AppState:
    """What one server process holds while it runs, set once in the lifespan."""

    settings: Settings
    database: Database
    orders: OrderPlacement
    jobs: JobRuntime
    job_events: JobEvents
    access: Access
    started_at: float  # time.monotonic() when the process started serving
    # Bulk imports running in this process (each on a connection of its own)
    imports: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_IMPORTS)
    )


def set_state(app: Starlette, state: AppState) -> None:
    app.state.flashsale = state


def state_of(app: Starlette) -> AppState:
    state: AppState = app.state.flashsale
    return state


async def _state(request: Request) -> AppState:
    return state_of(request.app)


async def _settings(request: Request) -> Settings:
    return state_of(request.app).settings


async def _database(request: Request) -> Database:
    return state_of(request.app).database


async def _jobs(request: Request) -> JobRuntime:
    return state_of(request.app).jobs


async def _job_events(request: Request) -> JobEvents:
    return state_of(request.app).job_events


State = Annotated[AppState, Depends(_state)]
AppSettings = Annotated[Settings, Depends(_settings)]
Db = Annotated[Database, Depends(_database)]
Jobs = Annotated[JobRuntime, Depends(_jobs)]
JobEventHub = Annotated[JobEvents, Depends(_job_events)]
