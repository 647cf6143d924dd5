"""The settlement CSV: `merchant_id,date,gross,fee,net,txn_count`, amounts in units with exactly
two decimals (from integer cents, never via floats), one line per merchant and UTC day."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from flashsale.settlement.service import SettlementRow

HEADER = ("merchant_id", "date", "gross", "fee", "net", "txn_count")
# Stored in chunks of about this size: a download holds a connection for one chunk at a time.
CHUNK_BYTES = 1 << 20


def money(cents: int) -> str:
    """12345 -> '123.45', 5 -> '0.05', -5 -> '-0.05'."""
    units, rest = divmod(abs(cents), 100)
    return f"{'-' if cents < 0 else ''}{units}.{rest:02d}"


def csv_chunks(rows: Iterable[SettlementRow], chunk_bytes: int = CHUNK_BYTES) -> list[bytes]:
    """`rows` (already sorted) as UTF-8 CSV, cut at line ends into chunks of about
    `chunk_bytes` (a chunk exceeds it by less than one line)."""
    chunks: list[bytes] = []
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")

    def cut() -> None:
        chunks.append(text.getvalue().encode())
        text.seek(0)
        text.truncate()

    writer.writerow(HEADER)
    for merchant, day, gross, fee, count in rows:
        writer.writerow(
            (merchant, day.isoformat(), money(gross), money(fee), money(gross - fee), count)
        )
        if text.tell() >= chunk_bytes:  # characters, not bytes: close enough for a cut
            cut()
    if text.tell():
        cut()
    return chunks
