"""Pure pieces of a job: batch planning, money formatting, job ids."""

from __future__ import annotations

import itertools
import math
import uuid
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flashsale.settlement.aggregation import DAY, Batch, day_start, plan_batches
from flashsale.settlement.report import money
from flashsale.settlement.schemas import job_key, parse_job_key

days = st.lists(
    st.tuples(st.integers(0, 400), st.integers(0, 50_000)), max_size=30, unique_by=lambda t: t[0]
)


@given(days=days, batch_size=st.integers(100, 20_000))  # JOB_BATCH_SIZE >= 100
def test_batches_tile_each_non_empty_day_without_crossing_midnight(
    days: list[tuple[int, int]], batch_size: int
) -> None:
    counts = [(date(2024, 1, 1) + timedelta(days=offset), count) for offset, count in days]

    by_day: dict[date, list[Batch]] = {}
    for batch in plan_batches(counts, batch_size):
        by_day.setdefault(batch.day, []).append(batch)

    for day, count in counts:
        own = by_day.get(day, [])
        assert len(own) == math.ceil(count / batch_size)
        if own:
            assert own[0].start == day_start(day)
            assert own[-1].end == day_start(day) + DAY
            assert all(a.end == b.start for a, b in itertools.pairwise(own))
            assert all(batch.start < batch.end for batch in own)


@pytest.mark.parametrize(
    ("cents", "text"),
    [(0, "0.00"), (5, "0.05"), (100, "1.00"), (12345, "123.45"), (-5, "-0.05"),
     (4_500_000_000, "45000000.00"), (2**63 - 1, "92233720368547758.07")],
)  # fmt: skip
def test_money_has_exactly_two_decimals_from_integer_cents(cents: int, text: str) -> None:
    assert money(cents) == text


def test_job_keys_round_trip_and_only_the_canonical_form_parses() -> None:
    job_id = uuid.uuid4()

    assert parse_job_key(job_key(job_id)) == job_id
    for text in (str(job_id), job_key(job_id).upper(), f"job_{job_id.hex}", f"job_{{{job_id}}}",
                 f"{job_key(job_id)}.csv", f" {job_key(job_id)}"):  # fmt: skip
        assert parse_job_key(text) is None
