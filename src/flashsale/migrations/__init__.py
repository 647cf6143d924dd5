"""Alembic migrations, run programmatically: `flashsale migrate` and the server's start-up."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError as AlembicCommandError

from flashsale.db import sqlalchemy_url
from flashsale.errors import CommandError


class MigrationError(CommandError):
    """Alembic refused (an unknown revision, say); the message is Alembic's."""


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    # configparser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    try:
        command.upgrade(alembic_config(url), revision)
    except AlembicCommandError as exc:
        raise MigrationError(f"cannot upgrade to {revision!r}: {exc}") from exc


def downgrade(url: str, revision: str) -> None:
    try:
        command.downgrade(alembic_config(url), revision)
    except AlembicCommandError as exc:
        raise MigrationError(f"cannot downgrade to {revision!r}: {exc}") from exc


def current(url: str) -> None:
    command.current(alembic_config(url), verbose=False)


def revision_module(filename: str) -> ModuleType:
    """An earlier revision's module (a downgrade re-runs what it made)."""
    path = Path(__file__).parent / "versions" / filename
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
