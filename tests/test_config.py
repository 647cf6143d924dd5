"""Configuration: seed defaults, database precedence, and one-line errors naming the variable."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from flashsale.bench.harness import with_database
from flashsale.config import ConfigError, load_settings
from tests.support import ROOT


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("DB_", "SERVER_", "JOB_", "LOG_", "WEB_", "ORDER_")) or name in (
            "DATABASE_URL",
            "API_KEY",
        ):
            monkeypatch.delenv(name)


def test_defaults_are_the_seeds() -> None:
    settings = load_settings()

    assert (settings.server_host, settings.server_port) == ("127.0.0.1", 8080)
    assert (settings.web_concurrency, settings.db_pool_size) == (2, 8)
    assert (settings.log_level, settings.log_format) == ("info", "json")
    assert (settings.job_workers, settings.job_batch_size, settings.job_queue_size) == (
        8,
        10_000,
        100,
    )
    assert settings.configured_database_url is None  # embedded PostgreSQL


def test_database_url_wins_over_db_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db.example/shop")
    monkeypatch.setenv("DB_HOST", "elsewhere")

    assert load_settings().configured_database_url == "postgresql://app@db.example/shop"


def test_db_variables_are_used_when_db_host_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_HOST", "pg.internal")
    monkeypatch.setenv("DB_PASSWORD", "p@ss:word")

    assert load_settings().configured_database_url == (
        "postgresql://postgres:p%40ss%3Aword@pg.internal:5432/indico"
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SERVER_PORT", "70000"),
        ("SERVER_PORT", "eighty"),
        ("JOB_WORKERS", "0"),
        ("LOG_LEVEL", "loud"),
        ("LOG_FORMAT", "xml"),
        ("DB_POOL_SIZE", "-1"),
        ("WEB_CONCURRENCY", "many"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigError, match=f"^invalid configuration: {variable}: "):
        load_settings()


def test_serve_with_invalid_config_exits_with_one_line() -> None:
    env = {**os.environ, "SERVER_PORT": "not-a-port"}

    result = subprocess.run(
        [sys.executable, "-m", "flashsale", "serve"], env=env, capture_output=True, text=True,
        cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "SERVER_PORT" in lines[0]


def _flashsale(*args: str, **env: str) -> tuple[int, list[str]]:
    """Run `flashsale ARGS` with `env` on top of ours: its exit code and stderr lines."""
    result = subprocess.run(
        [sys.executable, "-m", "flashsale", *args], env={**os.environ, **env},
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    return result.returncode, result.stderr.strip().splitlines()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DATABASE_URL": "notaurl"}, "DATABASE_URL: must be a PostgreSQL URL"),
        ({"DATABASE_URL": "mysql://user@host/db"}, "DATABASE_URL: must be a PostgreSQL URL"),
        ({"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"}, "(DATABASE_URL): cannot connect"),
    ],
)
def test_a_bad_database_url_is_one_line_naming_it(env: dict[str, str], expected: str) -> None:
    code, lines = _flashsale("migrate", **env)

    assert code == 1
    assert len(lines) == 1, lines
    assert expected in lines[0]


async def test_a_database_that_does_not_exist_is_one_line_naming_the_variables(
    admin_url: str,
) -> None:
    parts = urlsplit(admin_url)
    env = {
        "DB_HOST": parts.hostname or "", "DB_PORT": str(parts.port or 5432),
        "DB_USER": parts.username or "postgres", "DB_PASSWORD": parts.password or "",
        "DB_NAME": "flashsale_no_such_database",
    }  # fmt: skip
    if not parts.hostname:  # the embedded server listens on a socket: say so in the URL
        env = {"DATABASE_URL": with_database(admin_url, "flashsale_no_such_database")}

    code, lines = await asyncio.to_thread(_flashsale, "migrate", **env)

    assert code == 1
    assert len(lines) == 1, lines
    assert 'database "flashsale_no_such_database" does not exist' in lines[0]
    assert ("(DATABASE_URL)" if "DATABASE_URL" in env else "DB_NAME") in lines[0]


async def test_an_unknown_revision_is_one_line(database_url: str) -> None:
    code, lines = await asyncio.to_thread(
        _flashsale, "migrate", "upgrade", "bogus", DATABASE_URL=database_url, LOG_LEVEL="error"
    )

    assert code == 1
    assert lines == [
        "Error: cannot upgrade to 'bogus': Can't locate revision identified by 'bogus'"
    ]
