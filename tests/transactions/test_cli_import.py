"""`flashsale import transactions FILE`: the import's rules, against the database directly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg

from tests.support import ROOT
from tests.transactions.files import csv_body, ndjson_body, rows


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "flashsale", "import", "transactions", *args]


def _env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url, "DATA_DIR": str(tmp_path)}


def _run(database_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(*args), env=_env(database_url, tmp_path),
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip


async def test_import_then_skip_then_fail_from_files(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    csv_file = tmp_path / "march.csv"
    csv_file.write_bytes(csv_body(rows(20_000)))
    ndjson_file = tmp_path / "more.ndjson"
    ndjson_file.write_bytes(ndjson_body(rows(500, first=20_001)))

    imported = _run(database_url, tmp_path, str(csv_file))
    from_ndjson = _run(database_url, tmp_path, str(ndjson_file))
    skipped = _run(database_url, tmp_path, str(csv_file), "--on-duplicate", "skip")
    failed = _run(database_url, tmp_path, str(ndjson_file), "--format", "ndjson")

    assert imported.returncode == 0, imported.stderr
    assert "imported 20,000, skipped 0" in imported.stdout
    assert "imported 500, skipped 0" in from_ndjson.stdout
    assert "imported 0, skipped 20,000" in skipped.stdout
    assert failed.returncode == 1
    assert "500 external_ids already stored: 'ext-20001' (line 1)" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert await pool.fetchval("SELECT count(*) FROM transactions") == 20_500


async def test_an_invalid_file_prints_the_report_and_imports_nothing(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    lines = rows(1_000)
    lines[41][3] = "999999"  # line 43: more fee than amount
    lines[99][1] = ""  # line 101: a missing merchant_id
    path = tmp_path / "bad.csv"
    path.write_bytes(csv_body(lines))

    result = _run(database_url, tmp_path, str(path))

    assert result.returncode == 1
    report = result.stderr.splitlines()
    assert report[0].startswith("Error: 2 errors, nothing was imported. First: line 43, fee_cents")
    assert report[1:3] == [
        "  line 43, field fee_cents: must not exceed amount_cents",
        "  line 101, field merchant_id: required",
    ]
    assert await pool.fetchval("SELECT count(*) FROM transactions") == 0


async def test_ctrl_c_during_the_import_imports_nothing(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    path = tmp_path / "big.csv"
    path.write_bytes(csv_body(rows(400_000)))
    process = await asyncio.create_subprocess_exec(
        *_command(str(path)), env=_env(database_url, tmp_path), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(800):
            if await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%import_staging%'"
            ):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the import never started its COPY")
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()

    assert process.returncode != 0, stderr
    assert await pool.fetchval("SELECT count(*) FROM transactions") == 0
