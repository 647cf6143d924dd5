"""Settlement reports stored in PostgreSQL, and a notification on every job change.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

- `settlement_report_chunks`: a COMPLETED job's CSV, cut into chunks of about 1 MiB, written in
  the transaction that writes its settlements and completes the job, so every server can serve
  every download (no shared volume). A download reads one chunk at a time, holding a connection
  for one short query per chunk, never for the whole transfer.
- `settlement_jobs.report_bytes`: the stored report's size; NULL once the sweep has deleted it
  after REPORT_RETENTION_DAYS (the download then answers 410), and for jobs completed before this
  revision, whose CSV files under DATA_DIR/downloads are no longer served.
- `settlement_jobs.updated_at`: when the row last changed (clock time, so it orders the changes
  of one row, which its row lock serializes); the event streams use it to never go backwards.
- A NOTIFY on `flashsale_job_changed` with the job id whenever a job row is inserted or changes
  (a progress write that stores the same numbers changes nothing and notifies nothing).
"""

from __future__ import annotations

from alembic import op

from flashsale.settlement.events import JOB_CHANGED_CHANNEL

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        f"""
        ALTER TABLE settlement_jobs
            ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN report_bytes bigint,
            ADD CONSTRAINT ck_settlement_jobs_report_when_completed
                CHECK (report_bytes IS NULL OR (status = 'COMPLETED' AND report_bytes > 0));
        -- The retention sweep's scan: completed jobs whose report is still stored.
        CREATE INDEX ix_settlement_jobs_stored_reports ON settlement_jobs (finished_at)
            WHERE report_bytes IS NOT NULL;

        CREATE TABLE settlement_report_chunks (
            job_id  uuid    NOT NULL,
            seq     integer NOT NULL,
            data    bytea   NOT NULL,
            CONSTRAINT pk_settlement_report_chunks PRIMARY KEY (job_id, seq),
            CONSTRAINT fk_settlement_report_chunks_job_id_settlement_jobs
                FOREIGN KEY (job_id) REFERENCES settlement_jobs (id) ON DELETE CASCADE,
            CONSTRAINT ck_settlement_report_chunks_seq CHECK (seq >= 0),
            CONSTRAINT ck_settlement_report_chunks_data CHECK (length(data) > 0)
        );

        CREATE FUNCTION settlement_job_touched() RETURNS trigger
        LANGUAGE plpgsql
        AS $$
        BEGIN
            NEW.updated_at := clock_timestamp();
            RETURN NEW;
        END
        $$;
        CREATE TRIGGER tr_settlement_jobs_touched
            BEFORE UPDATE ON settlement_jobs
            FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)
            EXECUTE FUNCTION settlement_job_touched();

        CREATE FUNCTION notify_settlement_job_changed() RETURNS trigger
        LANGUAGE plpgsql
        AS $$
        BEGIN
            PERFORM pg_notify('{JOB_CHANGED_CHANNEL}', NEW.id::text);
            RETURN NULL;
        END
        $$;
        CREATE TRIGGER tr_settlement_jobs_changed
            AFTER UPDATE ON settlement_jobs
            FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)
            EXECUTE FUNCTION notify_settlement_job_changed();
        CREATE TRIGGER tr_settlement_jobs_created
            AFTER INSERT ON settlement_jobs
            FOR EACH ROW EXECUTE FUNCTION notify_settlement_job_changed();
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TRIGGER tr_settlement_jobs_created ON settlement_jobs;
        DROP TRIGGER tr_settlement_jobs_changed ON settlement_jobs;
        DROP TRIGGER tr_settlement_jobs_touched ON settlement_jobs;
        DROP FUNCTION notify_settlement_job_changed();
        DROP FUNCTION settlement_job_touched();
        DROP TABLE settlement_report_chunks;
        DROP INDEX ix_settlement_jobs_stored_reports;
        ALTER TABLE settlement_jobs
            DROP CONSTRAINT ck_settlement_jobs_report_when_completed,
            DROP COLUMN report_bytes,
            DROP COLUMN updated_at;
        """
    )
