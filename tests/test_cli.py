"""The `flashsale` command itself: what answering --help costs."""

from __future__ import annotations

import subprocess
import sys

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
