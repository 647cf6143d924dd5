"""FastAPI dependencies shared by every domain's routes."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Request


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


DbPool = Annotated[asyncpg.Pool, Depends(_pool)]
