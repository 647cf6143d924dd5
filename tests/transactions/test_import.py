"""`POST /transactions/import`: streamed COPY, all or nothing, through a live server."""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from flashsale.bench.harness import LiveServer
from tests.support import http_client, running_server
from tests.transactions.files import HEADER, csv_body, ndjson_body, rows

CSV = {"Content-Type": "text/csv"}
NDJSON = {"Content-Type": "application/x-ndjson"}


async def _import(
    client: httpx.AsyncClient, body: bytes, *, headers: dict[str, str] = CSV, **params: str
) -> httpx.Response:
    return await client.post("/transactions/import", content=body, headers=headers, params=params)


async def _count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM transactions"))


def _errors(response: httpx.Response) -> list[tuple[int, str | None]]:
    return [(e["line"], e["field"]) for e in response.json()["error"]["details"]]


async def test_a_200k_line_file_all_or_nothing_then_skip_and_fail(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    good = rows(200_000)
    bad = [list(line) for line in good]
    bad[9][2] = "12.50"  # line 11: amounts are whole cents
    bad[99_999][5] = "2025-03-01 10:00:00"  # line 100001: no T, no offset
    bad[199_999][4] = "DONE"  # line 200001

    refused = await _import(client, csv_body(bad))

    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "VALIDATION_ERROR"
    assert _errors(refused) == [(11, "amount_cents"), (100_001, "paid_at"), (200_001, "status")]
    assert await _count(pool) == 0

    imported = await _import(client, csv_body(good))

    assert imported.status_code == 201, imported.text
    assert imported.json() == {"imported": 200_000, "skipped": 0}
    stored = await pool.fetchrow(
        "SELECT count(*) AS n, sum(amount_cents) AS amount, min(external_id) AS first "
        "FROM transactions"
    )
    assert stored is not None
    assert (stored["n"], stored["amount"]) == (200_000, sum(int(line[2]) for line in good))

    skipped = await _import(client, csv_body(good), on_duplicate="skip")
    failed = await _import(client, csv_body([*rows(5, first=200_001), *good[:10]]))

    assert skipped.status_code == 201, skipped.text
    assert skipped.json() == {"imported": 0, "skipped": 200_000}
    assert failed.status_code == 409, failed.text
    assert failed.json()["error"]["code"] == "DUPLICATE_TRANSACTION"
    assert [d["line"] for d in failed.json()["error"]["details"]] == list(range(7, 17))
    assert failed.json()["error"]["details"][0]["external_id"] == "ext-1"
    assert await _count(pool) == 200_000


async def test_ndjson_imports_the_same_rows_as_csv(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    lines = rows(3_000)

    response = await _import(client, ndjson_body(lines), headers=NDJSON)

    assert response.status_code == 201, response.text
    assert response.json() == {"imported": 3_000, "skipped": 0}
    stored = await pool.fetch(
        "SELECT external_id, merchant_id, amount_cents::text, fee_cents::text, status, "
        "to_char(paid_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM transactions "
        "ORDER BY id"
    )
    assert [list(row.values()) for row in stored] == lines


async def test_ndjson_lines_of_the_wrong_shape_are_reported_with_the_value_errors(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    body = ndjson_body(rows(6)).split(b"\n")[:6]
    body[1] = b'{"external_id": "x"'  # line 2: not JSON
    body[2] = b"[1, 2]"  # line 3
    body[3] = (
        body[3].replace(b'"amount_cents": ', b'"amount_cents": "').replace(b', "fee', b'", "fee')
    )
    body[4] = body[4].replace(b'"status": "', b'"colour": "red", "status": "')
    body[5] = body[5].replace(b"merchant_0", b"merchant\\u00000")  # NUL: PostgreSQL holds none

    response = await _import(
        client, b"\n".join([*body, rows(1, first=7)[0][0].encode()]), headers=NDJSON
    )

    assert response.status_code == 400, response.text
    assert _errors(response) == [
        (2, None), (3, None), (4, "amount_cents"), (5, None), (6, "merchant_id"), (7, None)
    ]  # fmt: skip
    assert await _count(pool) == 0


# Each row breaks one rule; the API refuses the same values (test_api.py checks that side).
INVALID_VALUES = [
    ("external_id", "has space"),
    ("external_id", "x" * 129),
    ("external_id", "é"),
    ("merchant_id", "m" * 65),
    ("merchant_id", "tab\there"),
    ("merchant_id", " padded"),
    ("merchant_id", "zero\u200bwidth"),
    ("amount_cents", "-1"),
    ("amount_cents", "1e3"),
    ("amount_cents", " 12"),
    ("amount_cents", "9223372036854775808"),
    ("fee_cents", "100000"),  # more than the amount
    ("status", "completed"),
    ("paid_at", "2025-03-01"),
    ("paid_at", "2025-03-01T10:00:00"),
    ("paid_at", "2025-02-30T10:00:00Z"),
    ("paid_at", "2025-13-01T10:00:00Z"),
    ("paid_at", "2025-03-01T24:00:00Z"),
    ("paid_at", "2025-03-01T23:59:60Z"),
    ("paid_at", "2025-03-01T10:00:00+16:00"),
    ("paid_at", "2025-03-01T10:00:00.1234567Z"),
    ("paid_at", "1969-12-31T23:59:59Z"),
    ("paid_at", "1970-01-01T00:30:00+01:00"),
    ("paid_at", "0000-01-01T00:00:00Z"),
    ("paid_at", "now"),
]
VALID_EDGES = [
    ("external_id", "!~" + "x" * 126),
    ("merchant_id", "m" * 64),
    ("merchant_id", "Café 東京 \U0001f600"),
    ("amount_cents", "9223372036854775807"),
    ("amount_cents", "000123"),
    ("paid_at", "2025-03-01t10:00:00.123456z"),
    ("paid_at", "1969-12-31T23:30:00-01:00"),
    ("paid_at", "9999-12-31T23:59:59+15:59"),
]


def _with(field: str, value: str, n: int) -> list[str]:
    line = rows(1, first=n)[0]
    index = HEADER.split(",").index(field)
    line[index] = f'"{value}"' if "," in value or '"' in value else value
    return line


async def test_every_rule_is_checked_and_reported_on_its_line_and_field(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    lines = [_with(field, value, n) for n, (field, value) in enumerate(INVALID_VALUES, start=1)]

    response = await _import(client, csv_body(lines))

    assert response.status_code == 400, response.text
    assert _errors(response) == [(n, field) for n, (field, _) in enumerate(INVALID_VALUES, start=2)]
    assert await _count(pool) == 0


async def test_values_at_the_edges_are_accepted(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    lines = [_with(field, value, n) for n, (field, value) in enumerate(VALID_EDGES, start=1)]

    response = await _import(client, csv_body(lines))

    assert response.status_code == 201, response.text
    assert await _count(pool) == len(VALID_EDGES)


async def test_the_first_100_of_many_errors_are_listed_with_the_total(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    lines = rows(1_000)
    for line in lines:
        line[4] = "?"

    response = await _import(client, csv_body(lines))

    assert response.status_code == 400
    assert _errors(response) == [(n, "status") for n in range(2, 102)]
    assert response.json()["error"]["message"].startswith("1,000 errors")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("external_id,merchant_id,amount_cents,fee_cents,status", "missing paid_at"),
        (HEADER + ",colour", "unknown column colour"),
        (HEADER.replace("status", "external_id"), "missing status"),
    ],
)
async def test_a_header_that_does_not_name_the_columns_is_refused(
    client: httpx.AsyncClient, header: str, message: str
) -> None:
    response = await _import(client, csv_body(rows(2), header=header))

    assert response.status_code == 400
    assert _errors(response) == [(1, None)]
    assert message in response.json()["error"]["details"][0]["message"]


async def test_columns_in_any_order_with_a_bom_and_crlf(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    order = [5, 4, 3, 2, 1, 0]
    header = ",".join(HEADER.split(",")[i] for i in order)
    lines = [[line[i] for i in order] for line in rows(50)]

    response = await _import(client, b"\xef\xbb\xbf" + csv_body(lines, header=header, end="\r\n"))

    assert response.status_code == 201, response.text
    assert (
        await pool.fetchval("SELECT count(*) FROM transactions WHERE external_id ~ '^ext-'") == 50
    )


@pytest.mark.parametrize(
    ("body", "line"),
    [
        (csv_body([*rows(3), ["a", "b"]]), 5),  # too few columns
        (csv_body([*rows(2), [*rows(1, first=9)[0], "extra"]]), 4),
        # A quote left open runs to the end of the file, where COPY reports it.
        (csv_body(rows(2)) + b'"unterminated,m,1,0,COMPLETED,2025-03-01T00:00:00Z\n', 5),
        (csv_body(rows(2)) + b"\xff\xfe,m,1,0,COMPLETED,2025-03-01T00:00:00Z\n", 4),
        (b"", 1),
    ],
)
async def test_lines_that_are_not_six_columns_of_utf8_are_reported(
    client: httpx.AsyncClient, pool: asyncpg.Pool, body: bytes, line: int
) -> None:
    response = await _import(client, body)

    assert response.status_code == 400, response.text
    assert _errors(response) == [(line, None)]
    assert await _count(pool) == 0


async def test_an_external_id_twice_in_one_file_is_an_error_in_either_mode(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    lines = [*rows(5), rows(1, first=2)[0]]

    for mode in ("fail", "skip"):
        response = await _import(client, csv_body(lines), on_duplicate=mode)

        assert response.status_code == 400, response.text
        assert response.json()["error"]["details"] == [
            {"line": 7, "field": "external_id", "message": "repeats line 3"}
        ]
    assert await _count(pool) == 0


async def test_invalid_lines_after_a_duplicate_are_still_what_is_reported(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    assert (await _import(client, csv_body(rows(10)))).status_code == 201
    lines = rows(20)  # lines 2-11 are stored already
    lines[15][4] = "DONE"  # line 17

    for mode in ("fail", "skip"):
        response = await _import(client, csv_body(lines), on_duplicate=mode)

        assert response.status_code == 400, response.text
        assert _errors(response) == [(17, "status")]
    assert await _count(pool) == 10


async def test_skip_still_refuses_an_external_id_stored_with_other_values(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    assert (await _import(client, csv_body(rows(10)))).status_code == 201
    changed = rows(12)
    changed[4][2] = str(int(changed[4][2]) + 1)
    changed[4][5] = "2025-03-02T00:00:00Z"

    response = await _import(client, csv_body(changed), on_duplicate="skip")

    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "TRANSACTION_CONFLICT"
    assert response.json()["error"]["details"] == [
        {"line": 6, "external_id": "ext-5", "fields": ["amount_cents", "paid_at"]}
    ]
    assert await _count(pool) == 10


async def test_two_imports_racing_on_overlapping_ids_never_both_insert_one(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    first, second = rows(30_000), rows(30_000, first=20_001)
    for mode, expected_statuses in (("skip", [201, 201]), ("fail", [201, 409])):
        await pool.execute("TRUNCATE transactions")
        async with pool.acquire() as holder, holder.transaction():
            # Both imports stage their rows, then queue behind this lock at their INSERT.
            await holder.execute("LOCK TABLE transactions IN SHARE MODE")
            racing = [
                asyncio.create_task(_import(client, csv_body(body), on_duplicate=mode))
                for body in (first, second)
            ]
            await _until_waiting(pool, 2)
        responses = await asyncio.gather(*racing)

        assert sorted(r.status_code for r in responses) == expected_statuses, [
            r.text for r in responses
        ]
        assert await _count(pool) == (50_000 if mode == "skip" else 30_000)
        if mode == "skip":
            results = [r.json() for r in responses]
            assert sum(r["imported"] for r in results) == 50_000
            assert sum(r["skipped"] for r in results) == 10_000


async def _until_waiting(pool: asyncpg.Pool, sessions: int) -> None:
    for _ in range(800):
        waiting = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND application_name = 'flashsale:import'"
        )
        if waiting >= sessions:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{sessions} imports never waited on the lock")


async def test_a_body_of_another_type_is_415(client: httpx.AsyncClient) -> None:
    response = await _import(client, b"{}", headers={"Content-Type": "application/json"})

    assert response.status_code == 415
    assert "text/csv" in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def small_import_server(database_url: str, logs_dir: Path) -> Iterator[LiveServer]:
    with running_server(database_url, logs_dir, IMPORT_MAX_BYTES="100000") as live:
        yield live


@pytest.fixture
async def small(small_import_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(small_import_server.url) as http:
        yield http


async def test_a_body_over_import_max_bytes_is_413_declared_or_streamed(
    small: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    body = csv_body(rows(3_000))
    assert len(body) > 100_000

    async def streamed() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    declared = await _import(small, body)
    chunked = await small.post("/transactions/import", content=streamed(), headers=CSV)
    within = await _import(small, csv_body(rows(1_000)))

    assert declared.status_code == 413
    assert chunked.status_code == 413, chunked.text
    assert chunked.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert within.status_code == 201  # over MAX_BODY_BYTES (64 KiB): the import's own limit
    assert await _count(pool) == 1_000


async def test_a_client_that_goes_away_mid_body_imports_nothing_and_frees_its_connection(
    server: LiveServer, pool: asyncpg.Pool
) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    body = csv_body(rows(20_000))
    writer.write(
        b"POST /transactions/import HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[: len(body) // 2]
    )
    await writer.drain()

    async def importing() -> bool:
        return bool(await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'flashsale:import'"
        ))  # fmt: skip

    for _ in range(400):
        if await importing():
            break
        await asyncio.sleep(0.025)
    writer.close()
    for _ in range(400):
        if not await importing():
            break
        await asyncio.sleep(0.025)

    assert not await importing()
    assert await _count(pool) == 0


async def test_printable_agrees_with_the_database_on_every_code_point(pool: asyncpg.Pool) -> None:
    from flashsale.schemas import _printable

    def python_says(cp: int) -> bool:
        try:
            _printable(f"a{chr(cp)}a")
        except ValueError:
            return False
        return True

    points = [cp for cp in range(1, 0x110000) if not 0xD800 <= cp <= 0xDFFF]
    rejected_by_sql = set(
        await pool.fetchval(
            "SELECT coalesce(array_agg(cp), '{}') FROM unnest($1::int[]) AS cp "
            "WHERE NOT flashsale_printable('a' || chr(cp) || 'a')",
            points,
        )
    )
    rejected_by_python = {cp for cp in points if not python_says(cp)}

    assert rejected_by_sql == rejected_by_python
    # The table is Unicode's control, format and private-use characters (this Python's data).
    assert rejected_by_python == {
        cp for cp in points if unicodedata.category(chr(cp)) in ("Cc", "Cf", "Co")
    }
