"""Orders at scale: time-ordered order ids, place_order_batch() without table-size-dependent plans,
and a notification whenever a product's stock goes up.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

from flashsale.migrations import revision_module

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

STOCK_INCREASED_CHANNEL = "flashsale_stock_increased"


def upgrade() -> None:
    op.execute(
        """
        -- RFC 9562 UUIDv7: 48 bits of Unix time in milliseconds, the version (7), then random
        -- bits (and the variant) from gen_random_uuid(). Ids made later sort later, so new orders
        -- append to the right edge of the primary-key index instead of dirtying random pages.
        CREATE FUNCTION uuid_v7() RETURNS uuid
        LANGUAGE sql VOLATILE PARALLEL SAFE
        AS $$
            SELECT encode(
                set_bit(set_bit(
                    overlay(uuid_send(gen_random_uuid()) PLACING
                        substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)
                            ::bigint) FROM 3)
                        FROM 1 FOR 6),
                    52, 1), 53, 1),
                'hex')::uuid
        $$;
        ALTER TABLE orders ALTER COLUMN id SET DEFAULT uuid_v7();
        """
    )
    op.execute(
        "DROP FUNCTION place_order_batch(bigint, integer[], text[], text[], bytea[],"
        " double precision)"
    )
    create_place_order_batch()
    op.execute(
        f"""
        -- Every stock increase (a restock, later a cancellation), whatever made it, tells the
        -- servers listening on this channel to forget that the product was sold out; so does a
        -- new product (its id may have been used before, e.g. after TRUNCATE ... RESTART IDENTITY).
        CREATE FUNCTION notify_stock_increased() RETURNS trigger
        LANGUAGE plpgsql
        AS $$
        BEGIN
            PERFORM pg_notify('{STOCK_INCREASED_CHANNEL}', NEW.id::text);
            RETURN NULL;
        END
        $$;
        CREATE TRIGGER tr_products_stock_increased
            AFTER UPDATE OF stock ON products
            FOR EACH ROW WHEN (NEW.stock > OLD.stock)
            EXECUTE FUNCTION notify_stock_increased();
        CREATE TRIGGER tr_products_created
            AFTER INSERT ON products
            FOR EACH ROW EXECUTE FUNCTION notify_stock_increased();
        """
    )


def create_place_order_batch() -> None:
    """The function as this revision makes it (revision 0005's downgrade makes it again)."""
    op.execute(
        """
        -- Places the orders of one batch, all for one product, in arrival order (entry i is the
        -- i-th element of every array) and returns one row per entry, in that order:
        --   CREATED | REPLAYED (with the order), or the refusal's code: OUT_OF_STOCK,
        --   PRODUCT_NOT_FOUND, IDEMPOTENCY_KEY_IN_USE, IDEMPOTENCY_KEY_REUSED;
        -- and on every row `stock_left`, the product's stock after the batch (NULL: no product).
        -- Called as one statement in autocommit: one round trip, one commit for the batch, and the
        -- product's row lock is held only inside this function. The caller sends each key at most
        -- once (repeats inside a batch are resolved by the caller).
        --
        -- No statement here may cost more as tables grow: created orders come back from their
        -- INSERT ... RETURNING, and the only reads are by primary key (a product, a key, a
        -- replayed order). PL/pgSQL keeps each statement's plan for the life of the connection,
        -- and a plan made while a table was small or never analyzed can be a sequential scan
        -- that stays one as the table grows. With sequential scans disabled inside the function,
        -- the planner takes the primary key whatever the statistics say.
        CREATE FUNCTION place_order_batch(
            p_product_id  bigint,
            p_quantities  integer[],
            p_buyer_ids   text[],
            p_keys        text[],     -- NULL where the request has no Idempotency-Key
            p_hashes      bytea[],    -- the request fingerprint, where there is a key
            p_ttl_s       double precision
        ) RETURNS TABLE (
            outcome text, id uuid, product_id bigint, buyer_id text, quantity integer,
            status text, total_cents bigint, created_at timestamptz, updated_at timestamptz,
            stock_left bigint
        )
        LANGUAGE plpgsql VOLATILE
        SET enable_seqscan = off
        AS $fn$
        #variable_conflict use_column
        DECLARE
            n         constant integer := cardinality(p_quantities);
            outcomes  text[] := array_fill(NULL::text, ARRAY[n]);
            fresh     boolean[] := array_fill(false, ARRAY[n]);  -- decided here, not replayed
            order_ids uuid[] := array_fill(NULL::uuid, ARRAY[n]);
            known     orders[] := '{}';  -- the orders this batch answers with
            earlier   record;
            v_order   orders;
            v_stock   bigint;
            v_price   bigint;
            v_left    bigint;
        BEGIN
            -- 1. Keys first, before the row lock: a key another transaction holds is IN_USE at
            -- once; each lookup is a new statement, so its snapshot sees a first request that
            -- committed just before we took the lock.
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
                    SELECT o.* INTO v_order FROM orders o WHERE o.id = earlier.order_id;
                    outcomes[i] := 'REPLAYED';
                    order_ids[i] := v_order.id;
                    known := known || v_order;
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
                    order_ids[i] := uuid_v7();
                    v_left := v_left - p_quantities[i];
                ELSE
                    outcomes[i] := 'OUT_OF_STOCK';
                END IF;
            END LOOP;

            -- 3. Every granted order in one INSERT (read back from its RETURNING), the stock
            -- decremented once (CHECK (stock >= 0) stays the last line of defence), and the fresh
            -- outcomes stored under their keys.
            IF v_left < v_stock THEN
                WITH created AS (
                    INSERT INTO orders (id, product_id, buyer_id, quantity, total_cents)
                    SELECT e.id, p_product_id, e.buyer_id, e.quantity, v_price * e.quantity
                    FROM unnest(order_ids, p_buyer_ids, p_quantities, outcomes)
                        AS e(id, buyer_id, quantity, outcome)
                    WHERE e.outcome = 'CREATED'
                    RETURNING orders
                )
                SELECT known || array_agg(created.orders) INTO known FROM created;
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

            -- 4. One row per entry, in arrival order, with its order where there is one: matched
            -- in memory against what this function already holds, never read from the table.
            RETURN QUERY
            SELECT e.outcome, o.id, o.product_id, o.buyer_id, o.quantity, o.status,
                   o.total_cents, o.created_at, o.updated_at, v_left
            FROM unnest(outcomes, order_ids) WITH ORDINALITY AS e(outcome, order_id, i)
            LEFT JOIN unnest(known) AS o ON o.id = e.order_id
            ORDER BY e.i;
        END
        $fn$;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TRIGGER tr_products_created ON products;
        DROP TRIGGER tr_products_stock_increased ON products;
        DROP FUNCTION notify_stock_increased();
        DROP FUNCTION place_order_batch(bigint, integer[], text[], text[], bytea[],
                                        double precision);
        ALTER TABLE orders ALTER COLUMN id SET DEFAULT gen_random_uuid();
        DROP FUNCTION uuid_v7();
        """
    )
    # The function as revision 0002 made it.
    revision_module("2026_11_25_0002_place_order_batch.py").upgrade()
