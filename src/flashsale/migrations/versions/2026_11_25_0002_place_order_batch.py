"""place_order_batch(): a batch of orders for one product in one statement (flash-sale mode).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- Places the orders of one batch, all for one product, in arrival order (entry i is the
        -- i-th element of every array) and returns one row per entry, in that order:
        --   CREATED | REPLAYED (with the order), or the refusal's code: OUT_OF_STOCK,
        --   PRODUCT_NOT_FOUND, IDEMPOTENCY_KEY_IN_USE, IDEMPOTENCY_KEY_REUSED.
        -- Called as one statement in autocommit: one round trip, one commit for the batch, and the
        -- product's row lock is held only inside this function. The caller sends each key at most
        -- once (repeats inside a batch are resolved by the caller).
        CREATE FUNCTION place_order_batch(
            p_product_id  bigint,
            p_quantities  integer[],
            p_buyer_ids   text[],
            p_keys        text[],     -- NULL where the request has no Idempotency-Key
            p_hashes      bytea[],    -- the request fingerprint, where there is a key
            p_ttl_s       double precision
        ) RETURNS TABLE (
            outcome text, id uuid, product_id bigint, buyer_id text, quantity integer,
            status text, total_cents bigint, created_at timestamptz, updated_at timestamptz
        )
        LANGUAGE plpgsql VOLATILE
        AS $fn$
        #variable_conflict use_column
        DECLARE
            n         constant integer := cardinality(p_quantities);
            outcomes  text[] := array_fill(NULL::text, ARRAY[n]);
            fresh     boolean[] := array_fill(false, ARRAY[n]);  -- decided here, not replayed
            -- Each entry's order: a new id, or for a replay the stored order's.
            order_ids uuid[] := ARRAY(SELECT gen_random_uuid() FROM generate_series(1, n));
            earlier   record;
            v_stock   bigint;
            v_price   bigint;
            v_left    bigint;
        BEGIN
            -- 1. Keys first, before the row lock: the same steps as a single keyed order. A key
            -- another transaction holds is IN_USE at once; each lookup is a new statement, so its
            -- snapshot sees a first request that committed just before we took the lock.
            FOR i IN 1..n LOOP
                CONTINUE WHEN p_keys[i] IS NULL;
                IF NOT pg_try_advisory_xact_lock(hashtextextended(p_keys[i], 7)) THEN
                    outcomes[i] := 'IDEMPOTENCY_KEY_IN_USE';
                    CONTINUE;
                END IF;
                SELECT k.request_hash, k.order_id, k.error_code INTO earlier
                FROM idempotency_keys k WHERE k.key = p_keys[i] AND k.expires_at > now();
                CONTINUE WHEN NOT FOUND;
                IF earlier.request_hash <> p_hashes[i] THEN
                    outcomes[i] := 'IDEMPOTENCY_KEY_REUSED';
                ELSIF earlier.error_code IS NOT NULL THEN
                    outcomes[i] := earlier.error_code;
                ELSE
                    outcomes[i] := 'REPLAYED';
                    order_ids[i] := earlier.order_id;
                END IF;
            END LOOP;

            -- 2. The product's row lock (waits for other batches and single orders, in any
            -- process), then first fit in arrival order: an order gets its full quantity if it
            -- still fits, otherwise OUT_OF_STOCK; a later, smaller order may still fit.
            SELECT p.stock, p.price INTO v_stock, v_price
            FROM products p WHERE p.id = p_product_id FOR UPDATE;
            v_left := v_stock;
            FOR i IN 1..n LOOP
                CONTINUE WHEN outcomes[i] IS NOT NULL;
                fresh[i] := true;
                IF v_stock IS NULL THEN
                    outcomes[i] := 'PRODUCT_NOT_FOUND';
                ELSIF p_quantities[i] <= v_left THEN
                    outcomes[i] := 'CREATED';
                    v_left := v_left - p_quantities[i];
                ELSE
                    outcomes[i] := 'OUT_OF_STOCK';
                END IF;
            END LOOP;

            -- 3. Every granted order in one INSERT, the stock decremented once (CHECK (stock >= 0)
            -- stays the last line of defence), and the fresh outcomes stored under their keys.
            INSERT INTO orders (id, product_id, buyer_id, quantity, total_cents)
            SELECT e.id, p_product_id, e.buyer_id, e.quantity, v_price * e.quantity
            FROM unnest(order_ids, p_buyer_ids, p_quantities, outcomes)
                AS e(id, buyer_id, quantity, outcome)
            WHERE e.outcome = 'CREATED';
            IF v_left < v_stock THEN
                UPDATE products
                SET stock = stock - (v_stock - v_left), version = version + 1, updated_at = now()
                WHERE id = p_product_id;
            END IF;
            INSERT INTO idempotency_keys (key, request_hash, order_id, error_code, expires_at)
            SELECT e.key, e.hash,
                   CASE WHEN e.outcome = 'CREATED' THEN e.id END,
                   NULLIF(e.outcome, 'CREATED'),
                   now() + make_interval(secs => p_ttl_s)
            FROM unnest(p_keys, p_hashes, order_ids, outcomes, fresh)
                AS e(key, hash, id, outcome, fresh)
            WHERE e.key IS NOT NULL AND e.fresh
            ON CONFLICT (key) DO UPDATE  -- only an expired record can be here: we hold the lock
            SET request_hash = excluded.request_hash, order_id = excluded.order_id,
                error_code = excluded.error_code, created_at = now(),
                expires_at = excluded.expires_at;

            -- 4. One row per entry, in arrival order, with the order where there is one.
            RETURN QUERY
            SELECT e.outcome, o.id, o.product_id, o.buyer_id, o.quantity, o.status,
                   o.total_cents, o.created_at, o.updated_at
            FROM unnest(outcomes, order_ids) WITH ORDINALITY AS e(outcome, order_id, i)
            LEFT JOIN LATERAL (
                SELECT * FROM orders WHERE orders.id = e.order_id
                  AND e.outcome IN ('CREATED', 'REPLAYED')
            ) o ON true
            ORDER BY e.i;
        END
        $fn$;
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION place_order_batch(bigint, integer[], text[], text[], bytea[], "
        "double precision)"
    )
