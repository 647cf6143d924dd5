"""Structured logs: one JSON object per line (or readable text), context bound per request/job.

Our own events go straight from structlog to stderr; standard-library loggers (uvicorn, alembic,
procrastinate) are rendered by the same processors, so every line has the same fields:
`timestamp`, `level`, `event` (and `logger` on library lines), plus whatever is bound in the
context (`request_id` during a request, `job_id` inside a job). Events below the level cost one
method call.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog
import structlog.tracebacks

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
]


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Idempotent: safe to call in every process (server workers, job workers, CLI)."""
    tail: list[Any]  # for the standard library's loggers: they need text
    logger_factory: Any
    if fmt == "json":
        # Tracebacks without the frames' local variables: those hold request headers, the
        # API key among them, and database URLs with passwords.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        tail = [tracebacks, structlog.processors.JSONRenderer()]
        # Our own events (one per request) are rendered to bytes by orjson and written as they
        # are, without the standard library's json and a text layer: less work per line.
        own_tail = [tail[0], structlog.processors.JSONRenderer(serializer=orjson.dumps)]
        logger_factory = structlog.BytesLoggerFactory(file=sys.stderr.buffer)
    else:
        tail = own_tail = [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
        logger_factory = structlog.WriteLoggerFactory(file=sys.stderr)
    structlog.configure(
        processors=[*_SHARED_PROCESSORS, *own_tail],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_SHARED_PROCESSORS, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # uvicorn installs its own handlers; route its loggers through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # we log each request ourselves
    logging.getLogger("pgserver").setLevel(max(logging.WARNING, _LEVELS[level]))
