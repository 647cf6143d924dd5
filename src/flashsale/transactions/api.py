from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

import structlog
from fastapi import APIRouter, Path, Query, Request, Response, status

from flashsale.access.control import AccessRoute, Forbidden, OperatorOnly
from flashsale.deps import Db, State
from flashsale.errors import (
    AppError,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from flashsale.transactions import importing, service
from flashsale.transactions.schemas import (
    ImportFormat,
    ImportQuery,
    ImportResult,
    Transaction,
    TransactionCreate,
    TransactionId,
    TransactionPage,
    TransactionQuery,
    transaction_cursor,
)
from flashsale.web.errors import documented
from flashsale.web.guards import BodyRule, media_type

log = structlog.get_logger()

router = APIRouter(
    prefix="/transactions",
    tags=["transactions"],
    dependencies=[OperatorOnly],
    responses=documented(Unauthorized, Forbidden),
    route_class=AccessRoute,
)

IMPORT_PATH = "/transactions/import"
IMPORT_MEDIA_TYPES = {"text/csv": "csv", "application/x-ndjson": "ndjson"}
# A client that sends nothing for this long loses its import (and its database connection).
IMPORT_IDLE_TIMEOUT_S = 60.0


def import_body_rule(max_bytes: int) -> BodyRule:
    return BodyRule(max_bytes=max_bytes, media_types=frozenset(IMPORT_MEDIA_TYPES))


class TooManyImports(AppError):
    status_code = 503
    code = "TOO_MANY_IMPORTS"
    message = "This server runs as many imports as it may; retry when one has finished"


class ImportStalled(AppError):
    status_code = 408
    code = "REQUEST_TIMEOUT"
    message = f"The body stopped arriving for {IMPORT_IDLE_TIMEOUT_S:.0f} s: nothing was imported"


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": Transaction, "description": "Already stored with these values (a retry)"},
        **documented(ValidationFailed, service.TransactionConflict),
    },
    summary="Record one payment transaction (a retry with the same values is safe)",
)
async def create_transaction(
    body: TransactionCreate, database: Db, response: Response
) -> Transaction:
    async with database.connection() as conn:
        transaction, created = await service.record_transaction(conn, data=body)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/transactions/{transaction.id}"
    return transaction


@router.get(
    "",
    responses=documented(ValidationFailed),
    summary="Transactions in paid_at order, a page at a time (keyset)",
)
async def list_transactions(
    database: Db, query: Annotated[TransactionQuery, Query()]
) -> TransactionPage:
    async with database.connection() as conn:
        page, last = await service.list_transactions(conn, query=query)
    return TransactionPage(
        transactions=page, next_cursor=transaction_cursor(last) if last is not None else None
    )


@router.get(
    "/{transaction_id}",
    responses=documented(service.TransactionNotFound, ValidationFailed),
    summary="One transaction",
)
async def get_transaction(
    transaction_id: Annotated[TransactionId, Path(description="Transaction id")], database: Db
) -> Transaction:
    async with database.connection() as conn:
        return await service.get_transaction(conn, transaction_id=transaction_id)


async def _body(request: Request) -> AsyncIterator[bytes]:
    chunks = request.stream().__aiter__()
    while True:
        try:
            async with asyncio.timeout(IMPORT_IDLE_TIMEOUT_S):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ImportStalled() from None
        yield chunk


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
            "description": "CSV with the header external_id,merchant_id,amount_cents,"
            "fee_cents,status,paid_at (any order), or one JSON object per line",
        }
    },
    responses=documented(
        importing.ImportInvalid,
        importing.DuplicateTransactions,
        importing.ImportConflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        ImportStalled,
        TooManyImports,
    ),
    summary="Bulk-import transactions from a CSV or NDJSON body, all or nothing",
)
async def import_transactions(
    request: Request, query: Annotated[ImportQuery, Query()], state: State
) -> ImportResult:
    form: ImportFormat = IMPORT_MEDIA_TYPES.get(  # type: ignore[assignment]
        media_type(request.headers.get("content-type", "")), "csv"
    )
    if state.imports.locked():
        raise TooManyImports(headers={"Retry-After": "5"})
    started = time.perf_counter()
    async with state.imports, state.database.dedicated_connection(name="flashsale:import") as conn:
        result = await importing.import_transactions(
            conn, _body(request), form=form, on_duplicate=query.on_duplicate
        )
    log.info(
        "transactions.imported",
        format=form,
        imported=result.imported,
        skipped=result.skipped,
        duration_s=round(time.perf_counter() - started, 3),
    )
    return result
