"""Reports stored in PostgreSQL (served by any server, deleted after REPORT_RETENTION_DAYS) and
the settlements API, against SQL."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from flashsale.bench.harness import status_is, wait_for_job
from flashsale.settlement.report import csv_chunks
from tests.settlement.helpers import (
    MONTH,
    downloaded_rows,
    expected_csv,
    post_job,
    report_chunks,
    running_worker,
    seed,
    seed_month,
)
from tests.support import eventually

# --- Reports -------------------------------------------------------------------------------------


async def test_a_report_written_by_a_worker_is_served_by_a_server_with_another_data_dir(
    api: httpx.AsyncClient, jobs_db: asyncpg.Pool, jobs_url: str, logs_dir: Path
) -> None:
    await seed(jobs_db, 5_000, *MONTH)
    with running_worker(jobs_url, logs_dir):  # its own DATA_DIR, as `api_server` has
        job_id = await post_job(api, *MONTH)
        job = await wait_for_job(api, job_id, status_is("COMPLETED"))

    response = await api.get(job["download_url"])

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == f'attachment; filename="{job_id}.csv"'
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.headers["etag"] == f'"{job_id}.csv"'
    assert "last-modified" in response.headers
    assert await downloaded_rows(api, job) == await expected_csv(jobs_db, *MONTH)
    assert not list(logs_dir.rglob(f"*{job_id.removeprefix('job_')}*"))  # noqa: ASYNC240


async def test_a_report_of_several_chunks_is_streamed_whole(
    api: httpx.AsyncClient, jobs_db: asyncpg.Pool
) -> None:
    chunks = [b"merchant_id,date,gross,fee,net,txn_count\n", b"a,2025-01-01,1.00,0.00,1.00,1\n"]
    chunks += [b"b,2025-01-01,2.00,0.00,2.00,1\n" * 40_000]  # over a megabyte
    job = uuid.uuid4()
    await jobs_db.execute(
        "INSERT INTO settlement_jobs (id, status, from_date, to_date, file_name, finished_at, "
        "report_bytes) VALUES ($1, 'COMPLETED', $2, $3, 'x', now(), $4)",
        job,
        *MONTH,
        sum(map(len, chunks)),
    )
    await jobs_db.executemany(
        "INSERT INTO settlement_report_chunks (job_id, seq, data) VALUES ($1, $2, $3)",
        [(job, seq, chunk) for seq, chunk in enumerate(chunks)],
    )

    response = await api.get(f"/downloads/job_{job}.csv")

    assert response.status_code == 200
    assert response.content == b"".join(chunks)


def test_a_csv_is_cut_at_line_ends_into_chunks_of_about_the_size_asked() -> None:
    rows = [(f"merchant_{n}", date(2025, 1, 1), n * 101, n, 1) for n in range(1000)]

    chunks = csv_chunks(rows, chunk_bytes=1000)

    assert len(chunks) > 10
    assert all(chunk.endswith(b"\n") for chunk in chunks)
    assert all(len(chunk) < 1000 + 100 for chunk in chunks)
    lines = b"".join(chunks).decode().splitlines()
    assert lines[0] == "merchant_id,date,gross,fee,net,txn_count"
    assert lines[2] == "merchant_1,2025-01-01,1.01,0.01,1.00,1"
    assert len(lines) == 1001
    assert csv_chunks([]) == [b"merchant_id,date,gross,fee,net,txn_count\n"]


async def test_reports_older_than_the_retention_are_deleted_and_their_download_is_410(
    api: httpx.AsyncClient, jobs_db: asyncpg.Pool, jobs_url: str, logs_dir: Path
) -> None:
    await seed(jobs_db, 2_000, *MONTH)
    with running_worker(jobs_url, logs_dir, REPORT_RETENTION_DAYS="2"):  # sweeps every second
        old, fresh = [await post_job(api, *MONTH), await post_job(api, *MONTH)]
        for job_id in (old, fresh):
            await wait_for_job(api, job_id, status_is("COMPLETED"))
        await jobs_db.execute(
            "UPDATE settlement_jobs SET finished_at = now() - interval '2 days 1 minute' "
            "WHERE id = $1",
            uuid.UUID(old.removeprefix("job_")),
        )

        async def old_report_gone() -> bool:
            return await report_chunks(jobs_db, old) == 0

        await eventually(old_report_gone, "the sweep deleted the old report")

    response = await api.get(f"/downloads/{old}.csv")
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "REPORT_EXPIRED"
    job = (await api.get(f"/jobs/{old}")).json()
    assert job["status"] == "COMPLETED"
    assert "download_url" not in job
    assert (await api.get(f"/downloads/{fresh}.csv")).status_code == 200
    assert await report_chunks(jobs_db, fresh) > 0


# --- GET /settlements ----------------------------------------------------------------------------

COLUMNS = "merchant_id, date, gross_cents, fee_cents, net_cents, txn_count, job_id, generated_at"


async def _all_pages(client: httpx.AsyncClient, **params: str) -> list[list[dict[str, object]]]:
    pages = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/settlements", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["settlements"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


async def _expected(
    pool: asyncpg.Pool, where: str = "true", *args: object
) -> list[dict[str, object]]:
    rows = await pool.fetch(
        f"SELECT {COLUMNS} FROM settlements WHERE {where} ORDER BY merchant_id, date", *args
    )
    return [
        {**row, "date": row["date"].isoformat(), "generated_at": _iso(row["generated_at"])}
        for row in rows
    ]


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_settlements_page_by_merchant_then_date_exactly_as_sql_says(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await seed_month(pool)
    job_id = await post_job(client, *MONTH)
    await wait_for_job(client, job_id, status_is("COMPLETED"))
    everything = await _expected(pool)
    assert len(everything) > 200

    pages = await _all_pages(client, limit="37")

    assert [len(page) for page in pages[:-1]] == [37] * (len(pages) - 1)
    assert 1 <= len(pages[-1]) <= 37
    assert [line for page in pages for line in page] == everything
    assert {line["job_id"] for line in everything} == {job_id}
    one_page = await _all_pages(client, limit="1000")
    assert one_page == [everything]

    merchant = str(everything[0]["merchant_id"])
    filtered = await _all_pages(
        client, merchant_id=merchant, **{"from": "2025-01-10", "to": "2025-01-20"}, limit="4"
    )
    assert [line for page in filtered for line in page] == await _expected(
        pool, "merchant_id = $1 AND date BETWEEN $2 AND $3", merchant, date(2025, 1, 10),
        date(2025, 1, 20),
    )  # fmt: skip
    assert (await client.get("/settlements", params={"merchant_id": "nobody"})).json() == {
        "settlements": [],
        "next_cursor": None,
    }


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"from": "2025-13-01"},
        {"to": "2025-01-01T00:00:00Z"},
        {"from": "2025-02-01", "to": "2025-01-01"},
        {"cursor": "not-a-cursor"},
        {"cursor": "bWVyY2hhbnQ"},  # base64url of "merchant": no date
        {"merchant_id": ""},
        {"merchant_id": "x" * 201},
        {"merchant_id": "a\tb"},
        {"unknown": "1"},
    ],
)
async def test_bad_settlement_queries_are_400(
    client: httpx.AsyncClient, query: dict[str, str]
) -> None:
    response = await client.get("/settlements", params=query)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"
