"""The `flashsale` command itself: what answering --help costs, and `flashsale db`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

# What `flashsale --help` may not import: the service's weight (seconds of imports in all).
HEAVY = ("sqlalchemy", "alembic", "asyncpg", "fastapi", "procrastinate", "pydantic", "uvicorn")

_PROBE = """
import sys
from flashsale.cli import main
for args in (["--help"], ["--version"], ["serve", "--help"], ["bench", "orders", "--help"],
             ["migrate", "--help"], ["seed", "--help"]):
    try:
        main(args, standalone_mode=False)
    except SystemExit:
        pass
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_help_and_version_import_none_of_the_service() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=ROOT, check=True
    )

    imported = set(done.stdout.splitlines()[-1].split())
    assert "click" in imported  # the probe did run the commands
    assert imported.isdisjoint(HEAVY), imported & set(HEAVY)


def _flashsale(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flashsale", *args], env={**os.environ, **env},
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip


def test_db_url_and_psql_reach_the_configured_database(database_url: str) -> None:
    printed = _flashsale("db", "url", DATABASE_URL=database_url)
    queried = _flashsale(
        "db", "psql", "-tAc", "SELECT count(*) FROM settlement_jobs", DATABASE_URL=database_url
    )

    assert printed.returncode == 0
    assert printed.stdout == f"{database_url}\n"
    assert queried.returncode == 0, queried.stderr
    assert queried.stdout == "0\n"


def test_db_psql_reaches_the_embedded_database_without_a_psql_on_path(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path), "DATABASE_URL": "", "DB_HOST": "", "PATH": "/usr/bin:/bin"}
    if any((Path(directory) / "psql").exists() for directory in ("/usr/bin", "/bin")):
        env["PATH"] = str(tmp_path / "no-tools")  # hide the system's psql: the bundled one runs

    printed = _flashsale("db", "url", **env)
    queried = _flashsale("db", "psql", "-tAc", "SELECT current_database()", **env)

    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("postgresql://")
    assert f"host={tmp_path / 'pgdata'}" in printed.stdout
    assert "the embedded PostgreSQL is not running" in printed.stderr
    assert queried.returncode == 0, queried.stderr
    assert queried.stdout == "flashsale\n"
