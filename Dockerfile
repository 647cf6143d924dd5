# syntax=docker/dockerfile:1
# flashsale: `docker compose up -d` (see compose.yaml), or
#   docker build -t flashsale . && docker run -e DATABASE_URL=postgresql://... \
#     -e API_KEYS=<entries of `flashsale keys new`> -p 8080:8080 flashsale
# It listens on 0.0.0.0, so it refuses to start without operator keys (README: Who may do what).

# Build stage: the locked dependencies, then the project, into /app/.venv with uv.
FROM python:3.11-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11
WORKDIR /app
# Dependencies first: this layer is rebuilt only when the lock file changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-project
COPY README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable

# Runtime stage: the virtualenv only (no uv, no sources, no build cache), as a non-root user.
FROM python:3.11-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 flashsale \
    && useradd --system --uid 10001 --gid flashsale --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin flashsale \
    && install -d -o flashsale -g flashsale /data
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SERVER_HOST=0.0.0.0 \
    SERVER_PORT=8080 \
    METRICS_PORT=9091 \
    DATA_DIR=/data
WORKDIR /app
USER flashsale
EXPOSE 8080 9091
# No volume: settlement reports are stored in PostgreSQL. /data (DATA_DIR) is only used by an
# embedded PostgreSQL, when no database is configured.
# The image has no curl: ask /health with the standard library (a 503 is an HTTPError: unhealthy).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SERVER_PORT', '8080'), timeout=4)"]
# Exec form: `flashsale` is PID 1 and gets SIGTERM itself; uvicorn drains in-flight requests,
# the pool closes, the process exits 0 (compose also sets `init: true` to reap any orphan).
STOPSIGNAL SIGTERM
CMD ["flashsale", "serve"]
