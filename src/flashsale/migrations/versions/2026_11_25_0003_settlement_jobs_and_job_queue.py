"""Settlement jobs, and procrastinate's job queue schema.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

PROCRASTINATE_SCHEMA = Path(__file__).parent.parent / "procrastinate-3.10.0.sql"


def upgrade() -> None:
    op.execute(
        """
        -- One row per settlement job: the source of truth for its status and progress.
        -- `attempt` counts the runs that claimed the job; a run's writes are guarded by its
        -- attempt number, so a run that was presumed dead can never overwrite a newer one.
        CREATE TABLE settlement_jobs (
            id           uuid        NOT NULL DEFAULT gen_random_uuid(),
            status       text        NOT NULL DEFAULT 'QUEUED',
            from_date    date        NOT NULL,
            to_date      date        NOT NULL,
            total        bigint,
            processed    bigint      NOT NULL DEFAULT 0,
            attempt      integer     NOT NULL DEFAULT 0,
            error        text,
            file_name    text,
            created_at   timestamptz NOT NULL DEFAULT now(),
            started_at   timestamptz,
            finished_at  timestamptz,
            CONSTRAINT pk_settlement_jobs PRIMARY KEY (id),
            CONSTRAINT ck_settlement_jobs_status
                CHECK (status IN ('QUEUED', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED')),
            CONSTRAINT ck_settlement_jobs_range
                CHECK (from_date <= to_date AND to_date - from_date < 366),
            CONSTRAINT ck_settlement_jobs_processed
                CHECK (processed >= 0 AND (total IS NULL OR processed <= total)),
            CONSTRAINT ck_settlement_jobs_file_when_completed
                CHECK ((status = 'COMPLETED') = (file_name IS NOT NULL))
        );
        CREATE INDEX ix_settlement_jobs_created_at ON settlement_jobs (created_at DESC, id DESC);
        CREATE INDEX ix_settlement_jobs_unfinished ON settlement_jobs (status)
            WHERE status IN ('QUEUED', 'RUNNING');
        """
    )
    op.execute(PROCRASTINATE_SCHEMA.read_text())


def downgrade() -> None:
    op.execute(
        """
        -- CASCADE: procrastinate_fetch_job_v2 returns the procrastinate_jobs row type.
        DROP TABLE procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs,
            procrastinate_workers CASCADE;
        DO $$
        DECLARE
            routine regprocedure;
        BEGIN
            FOR routine IN
                SELECT p.oid::regprocedure FROM pg_proc p
                WHERE p.pronamespace = current_schema()::regnamespace
                  AND p.proname LIKE 'procrastinate\\_%'
            LOOP
                EXECUTE 'DROP FUNCTION ' || routine;
            END LOOP;
        END
        $$;
        DROP TYPE procrastinate_job_to_defer_v1, procrastinate_job_event_type,
            procrastinate_job_status;
        DROP TABLE settlement_jobs;
        """
    )
