"""Imported transactions settle as an independent computation says, and only when a job runs."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta, timezone

import asyncpg
import httpx

from tests.settlement.helpers import run_job, settlements
from tests.transactions.files import csv_body, rows


def _shifted(lines: list[list[str]]) -> list[list[str]]:
    """The same moments written with a +05:30 offset, so the UTC day is not the written one."""
    out = []
    for line in lines:
        moment = datetime.fromisoformat(line[5])
        local = moment.astimezone(timezone(timedelta(hours=5, minutes=30)))
        out.append([*line[:5], local.isoformat()])
    return out


def _settled_from_the_file(lines: list[list[str]]) -> dict[tuple[str, str], list[int]]:
    """Per (merchant, UTC day): gross, fee, count of COMPLETED lines, from the file's text."""
    totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for _, merchant, amount, fee, status, paid_at in lines:
        if status == "COMPLETED":
            key = (merchant, datetime.fromisoformat(paid_at).astimezone(UTC).date().isoformat())
            totals[key][0] += int(amount)
            totals[key][1] += int(fee)
            totals[key][2] += 1
    return dict(totals)


async def _settlements_api(client: httpx.AsyncClient) -> dict[tuple[str, str], list[int]]:
    found: dict[tuple[str, str], list[int]] = {}
    cursor: str | None = None
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/settlements", params=params)).json()
        for line in page["settlements"]:
            assert line["net_cents"] == line["gross_cents"] - line["fee_cents"]
            found[(line["merchant_id"], line["date"])] = [
                line["gross_cents"], line["fee_cents"], line["txn_count"]
            ]  # fmt: skip
        cursor = page["next_cursor"]
        if cursor is None:
            return found


async def test_a_job_over_imported_data_agrees_with_the_file_and_imports_wait_for_a_job(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    first = _shifted(rows(30_000))
    imported = await client.post(
        "/transactions/import", content=csv_body(first), headers={"Content-Type": "text/csv"}
    )
    assert imported.status_code == 201, imported.text

    await run_job(client, date(2025, 3, 1), date(2025, 3, 31))

    assert await _settlements_api(client) == _settled_from_the_file(first)
    before = await settlements(pool, with_job=True)

    # More payments for days already settled: the settlements stay as the job wrote them...
    more = _shifted(rows(5_000, first=30_001))
    assert (
        await client.post(
            "/transactions/import", content=csv_body(more), headers={"Content-Type": "text/csv"}
        )
    ).status_code == 201
    assert await settlements(pool, with_job=True) == before

    # ...until a job runs that range again.
    await run_job(client, date(2025, 3, 1), date(2025, 3, 31))
    assert await _settlements_api(client) == _settled_from_the_file(first + more)
