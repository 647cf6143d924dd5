"""The settlement CSV: `merchant_id,date,gross,fee,net,txn_count`, amounts in units with exactly
two decimals (from integer cents, never via floats), one line per merchant and UTC day."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from flashsale.settlement.service import SettlementRow

HEADER = ("merchant_id", "date", "gross", "fee", "net", "txn_count")


def money(cents: int) -> str:
    """12345 -> '123.45', 5 -> '0.05', -5 -> '-0.05'."""
    units, rest = divmod(abs(cents), 100)
    return f"{'-' if cents < 0 else ''}{units}.{rest:02d}"


def write_csv(directory: Path, name: str, rows: Iterable[SettlementRow]) -> None:
    """Write `rows` (already sorted) to `directory/name` atomically: a reader sees the whole file
    or none of it, never a partial one (temp file in the same directory, fsync, rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(HEADER)
            writer.writerows(
                (merchant, day.isoformat(), money(gross), money(fee), money(gross - fee), count)
                for merchant, day, gross, fee, count in rows
            )
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)  # mkstemp creates it private
        os.replace(temp, directory / name)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
