"""Alembic environment: plain SQL revisions, run under an advisory lock so that several
instances starting at once migrate one after another instead of racing."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

# Any constant; it only has to differ from the application's other advisory locks.
MIGRATION_LOCK_ID = 7_346_512_001
# Revision ids that were renamed (every id is now the 4-digit number of its file), so that a
# database stamped with an old id still finds its place in the history.
RENAMED_REVISIONS = {"0002_place_order_batch": "0002"}


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set; run migrations with `flashsale migrate`"
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=False)
        with context.begin_transaction():
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            if connection.execute(text("SELECT to_regclass('alembic_version')")).scalar():
                for old, new in RENAMED_REVISIONS.items():
                    connection.execute(
                        text(
                            "UPDATE alembic_version SET version_num = :new WHERE version_num = :old"
                        ),
                        {"old": old, "new": new},
                    )
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported")
run_migrations_online()
