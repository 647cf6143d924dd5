"""Transactions recorded through the API and bulk-imported: external ids and the rules in SQL.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

- `transactions.external_id`: the payment processor's id, 1-128 visible ASCII characters,
  unique. Rows that exist before this revision get `legacy-<id>` (an UPDATE of every row: on a
  big table, expect it to take about as long as loading it did).
- Every rule of `POST /transactions` is a CHECK too, so neither the bulk import nor a manual
  INSERT can store what the API refuses: merchant ids of 1-64 printable characters
  (`flashsale_printable`, built from the API's own table), `fee_cents <= amount_cents`, amounts
  within BIGINT (the type) and non-negative (0001), `paid_at` within 1970-9999 UTC.
- An index for `GET /transactions`' (paid_at, id) order. Not one per merchant: measured on 1M
  rows, a (merchant_id, paid_at) index adds about 4 s to loading them (random insertion) where
  this one adds about 1 s; a merchant filter reads this index in order and skips the others.
"""

from __future__ import annotations

from alembic import op

from flashsale.schemas import sql_printable_function

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sql_printable_function())
    op.execute(
        """
        ALTER TABLE transactions ADD COLUMN external_id text;
        UPDATE transactions SET external_id = 'legacy-' || id;
        ALTER TABLE transactions
            ALTER COLUMN external_id SET NOT NULL,
            ADD CONSTRAINT ck_transactions_external_id
                CHECK (octet_length(external_id) BETWEEN 1 AND 128 AND external_id !~ '[^!-~]'),
            ADD CONSTRAINT ck_transactions_merchant_id
                CHECK (char_length(merchant_id) BETWEEN 1 AND 64
                       AND flashsale_printable(merchant_id)),
            ADD CONSTRAINT ck_transactions_fee_within_amount CHECK (fee_cents <= amount_cents),
            ADD CONSTRAINT ck_transactions_paid_at_years
                CHECK (paid_at >= '1970-01-01T00:00:00Z' AND paid_at < '10000-01-01T00:00:00Z');
        CREATE UNIQUE INDEX ux_transactions_external_id ON transactions (external_id);
        CREATE INDEX ix_transactions_paid_at_id ON transactions (paid_at, id);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX ix_transactions_paid_at_id, ux_transactions_external_id;
        ALTER TABLE transactions
            DROP CONSTRAINT ck_transactions_paid_at_years,
            DROP CONSTRAINT ck_transactions_fee_within_amount,
            DROP CONSTRAINT ck_transactions_merchant_id,
            DROP CONSTRAINT ck_transactions_external_id,
            DROP COLUMN external_id;
        DROP FUNCTION flashsale_printable(text);
        """
    )
