"""Rendering the metrics for a scrape, from one process or from all of them.

With one server process the values live in memory. With several (`WEB_CONCURRENCY` > 1),
`flashsale serve` hands the workers an empty PROMETHEUS_MULTIPROC_DIR (before they import
prometheus_client); every process writes its values to its own files there, and the worker that
answers a scrape merges them all (prometheus_client's multiprocess mode). Counters and histograms
add up over every process that ran; per-process gauges (pool, memory, fds) add up over the live
ones. Figures read from the database at scrape time (stock, jobs waiting) are never written to
those files: the one process that answers the scrape reports them, once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from flashsale.config import Settings
from flashsale.observability.metrics import MULTIPROC_DIR_VARIABLE, MULTIPROCESS, REGISTRY

log = structlog.get_logger()


@functools.cache
def scrape_registry() -> CollectorRegistry:
    """What this process renders: its own registry, or the merge of every process's files."""
    if not MULTIPROCESS:
        return REGISTRY
    merged = CollectorRegistry()
    MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
    return merged


class _Scrape:
    def __init__(self, extra: Iterable[Metric]) -> None:
        self.extra = extra

    def collect(self) -> Iterator[Metric]:
        yield from scrape_registry().collect()
        yield from self.extra


def render(extra: Iterable[Metric] = ()) -> bytes:
    """The Prometheus text exposition of every process's metrics plus `extra` families."""
    return generate_latest(_Scrape(extra))


def serve_worker_metrics(settings: Settings) -> WSGIServer | None:
    """`flashsale worker`: serve this process's metrics on METRICS_PORT from a daemon thread
    (`shutdown()` the returned server to stop it). A port already taken (another worker on the
    same host) costs the metrics endpoint, not the worker: it is logged and None is returned."""
    try:
        server, _ = start_http_server(
            settings.metrics_port, settings.server_host, registry=scrape_registry()
        )
    except OSError as exc:
        log.warning("metrics.port_unavailable", port=settings.metrics_port, error=str(exc))
        return None
    return server


@contextlib.contextmanager
def multiprocess_directory(workers: int) -> Iterator[None]:
    """`flashsale serve`: give the worker processes an empty PROMETHEUS_MULTIPROC_DIR.

    Set it before they start (they import prometheus_client fresh) and wipe what earlier runs
    left there, or dead processes' counters would be added to ours. Only this process's own
    files stay: with a directory named by the environment it already writes there. A directory
    we created is removed at exit; one the environment names is kept (and wiped at the next
    start). One process needs no directory unless the environment names one.
    """
    configured = os.environ.get(MULTIPROC_DIR_VARIABLE)
    if not configured and workers == 1:
        yield
        return
    path = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="flashsale-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    own = f"_{os.getpid()}.db"
    for leftover in path.iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover)
        elif not leftover.name.endswith(own):
            leftover.unlink()
    os.environ[MULTIPROC_DIR_VARIABLE] = str(path)
    try:
        yield
    finally:
        if not configured:
            shutil.rmtree(path, ignore_errors=True)
            del os.environ[MULTIPROC_DIR_VARIABLE]
