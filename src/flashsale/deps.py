"""FastAPI dependencies shared by every domain's routes (async: sync ones would run in a thread)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from flashsale.db import Database


async def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


Db = Annotated[Database, Depends(_database)]
