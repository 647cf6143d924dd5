"""Idempotency keys belong to their buyer.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

A key is now stored as `<buyer_id> U+001F <Idempotency-Key>` (`orders.service.buyer_scoped_key`;
no buyer id contains a control character), so two buyers using one key get their own orders, and
nobody can replay or pre-claim another buyer's key. Stored keys that recorded an order get their
order's buyer; stored refusals cannot be given one (the refused request's buyer was not kept) and
are deleted: a retry of a refused request is decided afresh.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        DELETE FROM idempotency_keys WHERE order_id IS NULL;
        UPDATE idempotency_keys k SET key = o.buyer_id || chr(31) || k.key
        FROM orders o WHERE o.id = k.order_id;
        """
    )


def downgrade() -> None:
    # One record per unscoped key (the newest) survives: the older schema knows no buyers.
    op.execute(
        """
        DELETE FROM idempotency_keys WHERE key IN (
            SELECT key FROM (
                SELECT key, row_number() OVER (
                    PARTITION BY split_part(key, chr(31), 2) ORDER BY created_at DESC, key DESC
                ) AS newest
                FROM idempotency_keys
            ) ranked
            WHERE newest > 1
        );
        UPDATE idempotency_keys SET key = split_part(key, chr(31), 2);
        """
    )
