"""Import files for the tests: CSV and NDJSON bodies of generated transactions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from flashsale.transactions.schemas import FIELDS

HEADER = ",".join(FIELDS)
START = datetime(2025, 3, 1, tzinfo=UTC)


def rows(count: int, *, first: int = 1, prefix: str = "ext") -> list[list[str]]:
    """`count` valid rows as text, ids `<prefix>-<n>`, paid over March 2025."""
    statuses = ("COMPLETED", "COMPLETED", "COMPLETED", "PENDING", "FAILED", "REFUNDED")
    out = []
    for n in range(first, first + count):
        amount = 100 + n * 7 % 49_900
        paid_at = START + timedelta(seconds=n * 7919 % (31 * 86400))
        out.append(
            [f"{prefix}-{n}", f"merchant_{n % 9:02d}", str(amount), str(amount * 29 // 1000 + 30),
             statuses[n % len(statuses)], paid_at.strftime("%Y-%m-%dT%H:%M:%SZ")]
        )  # fmt: skip
    return out


def csv_body(lines: Sequence[Sequence[str]], *, header: str = HEADER, end: str = "\n") -> bytes:
    return (end.join([header, *(",".join(line) for line in lines)]) + end).encode()


def ndjson_body(lines: Sequence[Sequence[str]]) -> bytes:
    def document(line: Sequence[str]) -> dict[str, object]:
        values: dict[str, object] = dict(zip(FIELDS, line, strict=True))
        values["amount_cents"] = int(line[2])
        values["fee_cents"] = int(line[3])
        return values

    return "".join(json.dumps(document(line)) + "\n" for line in lines).encode()
