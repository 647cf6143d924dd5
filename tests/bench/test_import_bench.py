"""`flashsale bench import` end to end on a small scale: its figures come out, its own checks
(rows and sums as the baseline's, rows stored per 201) pass, and it leaves no database behind."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import asyncpg
import pytest

from flashsale.bench import imports
from tests.support import require_tool


async def _bench_databases(admin_url: str) -> list[str]:
    conn = await asyncpg.connect(admin_url)
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'flashsale\\_bench\\_%'"
        )
        return [row["datname"] for row in rows]
    finally:
        await conn.close()


def test_bench_import_prints_checked_figures_and_drops_its_databases(
    admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("wrk", "wrk")
    before = asyncio.run(_bench_databases(admin_url))
    options = imports.Options(
        existing=2_000, merchants=5, formats=["csv", "ndjson"], connections=4, seconds=1,
        web_concurrency=1, explain=True, profile=True,
    )  # fmt: skip
    imports.run(admin_url, rows=[3_000], options=options)
    out = capsys.readouterr().out

    assert "3,000 rows into a table of 2,000" in out
    assert out.count('201 {"imported":3000,"skipped":0}') == 2
    assert out.count("rows and sums as the baseline's: ok") == 2
    assert "MISMATCH" not in out
    assert "x HTTP ceiling; rows stored" in out
    assert "201s (ok)" in out
    assert "Insert on transactions" in out
    assert "Seq Scan on import_staging" in out
    assert "py-spy, the server during the import" in out
    assert "POST /transactions/import (csv)" in out.split("summary")[1]
    assert asyncio.run(_bench_databases(admin_url)) == before


def test_top_frames_counts_where_samples_were_taken() -> None:
    collapsed = "main;run;copy 6\nmain;run;parse 3\nmain;idle 1\nnot a line\n"
    assert imports.top_frames(collapsed, count=2) == (10, [("copy", 0.6), ("parse", 0.3)])


def test_tree_rss_counts_the_children() -> None:
    # b"x" * n writes every page (a zeroed bytearray would not be resident yet).
    child = subprocess.Popen(
        [sys.executable, "-c", 'import time; b = b"x" * 200 * 2**20; time.sleep(30)']
    )
    try:
        child_kb = imports.tree_rss_kb(child.pid)
        for _ in range(200):  # until the child has written its memory
            if child_kb >= 200 * 1024:
                break
            time.sleep(0.05)
            child_kb = imports.tree_rss_kb(child.pid)
        assert child_kb >= 200 * 1024
        assert imports.tree_rss_kb(os.getpid()) >= child_kb
    finally:
        child.kill()
        child.wait()
