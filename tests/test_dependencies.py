"""The package runs on its runtime dependencies alone: the Docker image installs no dev group.

Every third-party module that `src/flashsale` imports (at the top or inside a function, e.g.
`flashsale bench`'s httpx) must come from a distribution named in `[project].dependencies`."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from tests.support import ROOT


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        _canonical(re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0])
        for spec in project["dependencies"]
    }


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules() -> dict[str, str]:
    """Top-level module -> the first file importing it, for every absolute import in src."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "src" / "flashsale").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.partition(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_runtime_dependency() -> None:
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    undeclared = {}
    for module, where in _imported_modules().items():
        if module in sys.stdlib_module_names or module in ("flashsale", "__future__"):
            continue
        providers = {_canonical(name) for name in distributions.get(module, [])}
        if not providers & declared:
            undeclared[module] = (where, sorted(providers))

    assert undeclared == {}
    assert {"httpx", "asyncpg", "fastapi"} <= declared  # the check reads the real list
