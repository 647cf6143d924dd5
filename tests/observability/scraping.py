"""Reading /metrics in tests: parsed samples, and promtool's verdict on the raw text."""

from __future__ import annotations

import subprocess

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support import require_tool

# One sample: its name and its labels.
SampleKey = tuple[str, frozenset[tuple[str, str]]]


class Scrape:
    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.samples: dict[SampleKey, float] = {
            (s.name, frozenset(s.labels.items())): s.value for f in self.families for s in f.samples
        }

    def value(self, name: str, **labels: str) -> float:
        """A sample's value; 0 when absent (a labelled series appears on first use)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: value for (n, labels), value in self.samples.items() if n == name}

    def exported_names(self) -> set[str]:
        """Every sample name a query can use, including families that have no sample yet."""
        names = {name for name, _ in self.samples}
        for family in self.families:
            suffixes = {
                "counter": ["_total"],
                "histogram": ["_bucket", "_sum", "_count"],
                "summary": ["_sum", "_count"],
            }.get(family.type, [""])
            names.update(family.name + suffix for suffix in suffixes)
        return names


async def scrape(client: httpx.AsyncClient) -> Scrape:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(response.text)


def promtool() -> str:
    """promtool's path; the test is skipped without it (failed under CI, which installs it)."""
    return require_tool("promtool", "prometheus")


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
