"""The job and download endpoints' contract: validation, shapes, listing, and every 404."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from flashsale.bench.harness import LiveServer, status_is, wait_for_job
from flashsale.schemas import encode_cursor
from tests.settlement.helpers import post_job, run_job


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"from": "2025-01-01"},
        {"to": "2025-01-31"},
        {"from": "2025-01-31", "to": "2025-01-01"},  # reversed
        {"from": "2024-01-01", "to": "2025-01-01"},  # 367 days
        {"from": "2025-02-30", "to": "2025-03-01"},  # no such day
        {"from": "2025-1-1", "to": "2025-01-31"},
        {"from": "2025-01-01T00:00:00Z", "to": "2025-01-31"},
        {"from": 20250101, "to": "2025-01-31"},
        {"from": None, "to": "2025-01-31"},
        {"from": "2025-01-01", "to": "2025-01-31", "merchant": "merchant_001"},
        ["2025-01-01", "2025-01-31"],
        {"from": "0001-01-01", "to": "0001-12-31"},  # found by the fuzz run: was a 500
        {"from": "9999-12-31", "to": "9999-12-31"},
    ],
)
async def test_invalid_ranges_are_400_and_queue_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool, body: Any
) -> None:
    response = await client.post("/jobs/settlement", json=body)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"
    assert await pool.fetchval("SELECT count(*) FROM settlement_jobs") == 0


async def test_a_job_is_accepted_with_its_location_and_a_full_year_is_allowed(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/jobs/settlement", json={"from": "2024-01-01", "to": "2024-12-31"}
    )

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "QUEUED"
    assert body["job_id"].startswith("job_")
    uuid.UUID(body["job_id"].removeprefix("job_"))
    assert response.headers["location"] == f"/jobs/{body['job_id']}"

    job = await wait_for_job(client, body["job_id"], status_is("COMPLETED"))
    assert set(job) == {
        "job_id", "status", "progress", "processed", "total", "from", "to", "created_at",
        "started_at", "finished_at", "updated_at", "download_url",
    }  # fmt: skip
    assert (job["from"], job["to"], job["total"], job["processed"]) == (
        "2024-01-01", "2024-12-31", 0, 0,
    )  # fmt: skip
    rows = (await client.get(job["download_url"])).text
    assert rows == "merchant_id,date,gross,fee,net,txn_count\n"


async def test_jobs_are_listed_newest_first(client: httpx.AsyncClient) -> None:
    ids = [await post_job(client, date(2025, 1, day), date(2025, 1, day)) for day in (1, 2, 3)]
    await asyncio.gather(*(wait_for_job(client, i, status_is("COMPLETED")) for i in ids))

    listed = (await client.get("/jobs", params={"limit": 2})).json()

    assert listed["limit"] == 2
    assert [job["job_id"] for job in listed["jobs"]] == [ids[2], ids[1]]
    completed = (await client.get("/jobs", params={"status": "COMPLETED"})).json()["jobs"]
    assert [job["job_id"] for job in completed] == ids[::-1]
    assert (await client.get("/jobs", params={"status": "QUEUED"})).json()["jobs"] == []
    assert (await client.get("/jobs", params={"status": "DONE"})).status_code == 400
    assert (await client.get("/jobs", params={"limit": 0})).status_code == 400


async def test_every_job_can_be_listed_page_by_page(
    api: httpx.AsyncClient, jobs_db: asyncpg.Pool
) -> None:
    # 130 jobs (beyond the old limit of 100), several created in the same microsecond.
    await jobs_db.execute(
        "INSERT INTO settlement_jobs (from_date, to_date, status, created_at) "
        "SELECT '2025-01-01', '2025-01-01', CASE WHEN n % 3 = 0 THEN 'CANCELLED' ELSE 'QUEUED' END, "
        "'2026-01-01'::timestamptz + (n / 4) * interval '1 second' "
        "FROM generate_series(1, 130) AS n"
    )
    newest_first = [
        f"job_{row['id']}"
        for row in await jobs_db.fetch(
            "SELECT id FROM settlement_jobs ORDER BY created_at DESC, id DESC"
        )
    ]

    async def all_pages(**params: str) -> list[list[str]]:
        pages, cursor = [], None
        while True:
            query = {**params, **({"cursor": cursor} if cursor else {})}
            body = (await api.get("/jobs", params=query)).json()
            pages.append([job["job_id"] for job in body["jobs"]])
            cursor = body["next_cursor"]
            if cursor is None:
                return pages

    pages = await all_pages(limit="17")
    assert [len(page) for page in pages] == [17] * 7 + [11]
    assert [job for page in pages for job in page] == newest_first
    cancelled = await all_pages(limit="5", status="CANCELLED")
    assert [job for page in cancelled for job in page] == [
        f"job_{row['id']}"
        for row in await jobs_db.fetch(
            "SELECT id FROM settlement_jobs WHERE status = 'CANCELLED' "
            "ORDER BY created_at DESC, id DESC"
        )
    ]
    for bad in ("x", "bm90IGEgY3Vyc29y", encode_cursor("2026-01-01T00:00:00", str(uuid.uuid4()))):
        response = await api.get("/jobs", params={"cursor": bad})
        assert response.status_code == 400, bad
        assert response.json()["error"]["details"][0]["field"] == "query.cursor"


@pytest.mark.parametrize(
    "job_id",
    [
        f"job_{uuid.uuid4()}",
        str(uuid.uuid4()),
        f"job_{str(uuid.uuid4()).upper()}",
        "job_123",
        "settlement",
        "job_%2e%2e",
    ],
)
async def test_unknown_jobs_are_404(client: httpx.AsyncClient, job_id: str) -> None:
    for response in (
        await client.get(f"/jobs/{job_id}"),
        await client.post(f"/jobs/{job_id}/cancel"),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "JOB_NOT_FOUND"


async def test_a_finished_job_cannot_be_cancelled(client: httpx.AsyncClient) -> None:
    job = await run_job(client, date(2025, 1, 1), date(2025, 1, 1))

    response = await client.post(f"/jobs/{job['job_id']}/cancel")

    assert response.status_code == 409
    assert response.json()["error"] == {
        "code": "JOB_NOT_CANCELLABLE",
        "message": "The job has already finished (COMPLETED)",
    }
    assert (await client.get(f"/jobs/{job['job_id']}")).json()["status"] == "COMPLETED"


@pytest.mark.parametrize(
    "path",
    [
        f"/downloads/job_{uuid.uuid4()}.csv",
        "/downloads/",
        "/downloads/job_.csv",
        "/downloads/../../../../etc/passwd",
        "/downloads/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/downloads/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/downloads/job_../../../etc/passwd.csv",
        "/downloads/%2fetc%2fpasswd",
        "/downloads/pgdata/postgresql.conf",
        f"/downloads/job_{uuid.uuid4()}.csv%00.txt",
        f"/downloads/JOB_{uuid.uuid4()}.CSV",
        f"/downloads/job_{uuid.uuid4()}.csv/../../pgdata/PG_VERSION",
    ],
)
async def test_downloads_of_unknown_or_malicious_names_are_404(
    server: LiveServer, path: str
) -> None:
    status, body = await _raw_get(server.url, path)  # as sent: no client-side normalization

    assert status == 404, body
    assert b'"FILE_NOT_FOUND"' in body


async def test_a_report_is_served_only_for_a_completed_job(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    job = await run_job(client, date(2025, 1, 1), date(2025, 1, 1))
    # Report chunks of a job that is not COMPLETED are not served, even when they exist.
    other = uuid.uuid4()
    await pool.execute(
        "INSERT INTO settlement_jobs (id, status, from_date, to_date) "
        "VALUES ($1, 'CANCELLED', '2025-01-01', '2025-01-01')",
        other,
    )
    await pool.execute(
        "INSERT INTO settlement_report_chunks (job_id, seq, data) VALUES ($1, 0, $2)",
        other,
        b"merchant_id,date,gross,fee,net,txn_count\n",
    )

    assert (await client.get(job["download_url"])).status_code == 200
    response = await client.get(f"/downloads/job_{other}.csv")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "FILE_NOT_FOUND"


async def _raw_get(base_url: str, path: str) -> tuple[int, bytes]:
    address = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest
