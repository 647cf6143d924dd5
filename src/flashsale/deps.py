"""FastAPI dependencies shared by every domain's routes (async: sync ones would run in a thread)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from flashsale.db import Database
from flashsale.errors import Unauthorized


async def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


Db = Annotated[Database, Depends(_database)]

_bearer = HTTPBearer(auto_error=False, description="The API_KEY, when the server sets one")


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Admin routes need `Authorization: Bearer <API_KEY>` when API_KEY is set (open otherwise)."""
    api_key = request.app.state.settings.api_key
    if api_key is None:
        return
    presented = credentials.credentials if credentials else ""
    # Constant-time comparison: response timing must not reveal how much of the key matched.
    if not hmac.compare_digest(presented.encode(), api_key.get_secret_value().encode()):
        raise Unauthorized()


AdminOnly = Depends(require_api_key)
