"""`flashsale seed`: products, and COPY-loaded transactions that are deterministic per seed."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import numpy as np

from flashsale import seeding
from tests.support import ROOT

SUMMARY = """
SELECT count(*) AS n, sum(amount_cents) AS amount, sum(fee_cents) AS fee,
       count(DISTINCT merchant_id) AS merchants, min(paid_at) AS first, max(paid_at) AS last,
       sum(hashtext(merchant_id || amount_cents || status || paid_at)) AS fingerprint
FROM transactions
"""


def _seed(database_url: str, tmp_path: Path, *args: str, check: bool = True) -> str:
    """`flashsale seed ARGS`: its output (stdout, then stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "flashsale", "seed", *args],
        env={**os.environ, "DATABASE_URL": database_url, "DATA_DIR": str(tmp_path)},
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=check,
    )  # fmt: skip
    return result.stdout + result.stderr


async def test_seed_loads_transactions_deterministically(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    args = ["--products", "0", "--transactions", "30000", "--merchants", "7",
            "--from", "2025-02-01", "--to", "2025-02-28", "--seed", "5"]  # fmt: skip

    output = _seed(database_url, tmp_path, *args)
    first = dict(await pool.fetchrow(SUMMARY))  # type: ignore[arg-type]
    _seed(database_url, tmp_path, *args, "--reset")
    second = dict(await pool.fetchrow(SUMMARY))  # type: ignore[arg-type]
    _seed(database_url, tmp_path, *args[:-1], "6", "--reset")
    other_seed = dict(await pool.fetchrow(SUMMARY))  # type: ignore[arg-type]

    assert "loaded 30,000" in output
    assert first == second
    # Written in paid_at order, as recorded payments are (one chunk here: fully sorted).
    assert await pool.fetchval(
        "SELECT bool_and(paid_at >= previous) FROM (SELECT paid_at, lag(paid_at) OVER (ORDER BY id)"
        " AS previous FROM transactions WHERE status = 'COMPLETED') AS ordered"
    )
    assert first["fingerprint"] != other_seed["fingerprint"]
    assert first["n"] == 30_000
    assert first["merchants"] == 7
    assert first["first"] >= datetime(2025, 2, 1, tzinfo=UTC)
    assert first["last"] < datetime(2025, 3, 1, tzinfo=UTC)


async def test_seeded_rows_follow_the_seed_distributions(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    _seed(database_url, tmp_path, "--products", "2", "--stock", "7", "--transactions", "20000")

    merchants = await pool.fetch("SELECT DISTINCT merchant_id FROM transactions ORDER BY 1")
    assert [r["merchant_id"] for r in merchants] == [f"merchant_{i:03d}" for i in range(1, 11)]
    bad_fees = await pool.fetchval(
        "SELECT count(*) FROM transactions "
        "WHERE fee_cents <> round(amount_cents * 0.029) + 30 OR amount_cents NOT BETWEEN 100 AND 49999"
    )
    assert bad_fees == 0
    rows = await pool.fetch(
        "SELECT status, count(*) / 20000.0 AS share FROM transactions GROUP BY 1"
    )
    shares = {row["status"]: row["share"] for row in rows}
    assert set(shares) == {"COMPLETED", "PENDING", "FAILED", "REFUNDED"}
    assert 0.85 < shares["COMPLETED"] < 0.95
    assert await pool.fetchval("SELECT count(*) FROM products WHERE stock = 7") == 2


async def test_a_second_seed_adds_nothing_unless_asked(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    args = ["--products", "2", "--transactions", "1000"]
    first = _seed(database_url, tmp_path, *args)
    before = dict(await pool.fetchrow(SUMMARY))  # type: ignore[arg-type]

    refused = _seed(database_url, tmp_path, *args, check=False)

    assert "products: created 2 (ids 1..2), 0 already there" in first
    assert refused.strip().splitlines() == [
        "Error: transactions already holds 1,000 rows: add --append to add 1,000 more, "
        "or --reset to replace them"
    ]
    assert dict(await pool.fetchrow(SUMMARY)) == before  # type: ignore[arg-type]
    assert await pool.fetchval("SELECT count(*) FROM products") == 2

    replaced = _seed(database_url, tmp_path, *args, "--reset")
    assert "products: created none, 2 already there" in replaced
    assert dict(await pool.fetchrow(SUMMARY)) == before  # type: ignore[arg-type]
    _seed(database_url, tmp_path, "--products", "0", "--transactions", "500", "--append")
    assert await pool.fetchval("SELECT count(*) FROM transactions") == 1_500
    assert await pool.fetchval("SELECT count(*) FROM products") == 2
    both = _seed(database_url, tmp_path, "--transactions", "1", "--reset", "--append", check=False)
    assert "--reset and --append exclude each other" in both


def test_fee_is_29_per_mille_rounded_half_up_plus_30() -> None:
    amounts = np.array([100, 49_999, 1_000, 1_724])
    assert seeding.fee_cents(amounts).tolist() == [33, 1480, 59, 80]


def test_chunks_are_identical_for_the_same_seed() -> None:
    spec = seeding.TransactionSpec(1_000, 3, date(2025, 1, 1), date(2025, 1, 2), seed=9)
    assert b"".join(c for c, _ in seeding.transaction_copy_chunks(spec)) == b"".join(
        c for c, _ in seeding.transaction_copy_chunks(spec)
    )
