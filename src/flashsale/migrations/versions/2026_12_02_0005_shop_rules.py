"""Shop rules: per-buyer limits, sale windows, order cancellation.

- products gain `max_per_buyer`, `sale_starts_at`, `sale_ends_at`;
- orders gain `cancelled_at` and the status CANCELLED;
- `buyer_holdings`: the units each buyer holds of each product that has a limit, so the limit
  is checked by primary key, never by summing a buyer's orders;
- `place_order_batch()` enforces the rules and also answers whether a refusal was replayed;
- `cancel_order()` cancels once and puts the units back.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

from flashsale.migrations import revision_module

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

PLACE_ORDER_BATCH_ARGS = "bigint, integer[], text[], text[], bytea[], double precision"


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE products
            ADD COLUMN max_per_buyer  integer,
            ADD COLUMN sale_starts_at timestamptz,
            ADD COLUMN sale_ends_at   timestamptz,
            ADD CONSTRAINT ck_products_max_per_buyer CHECK (max_per_buyer BETWEEN 1 AND 1000000),
            ADD CONSTRAINT ck_products_sale_window CHECK (sale_ends_at > sale_starts_at);

        ALTER TABLE orders
            ADD COLUMN cancelled_at timestamptz,
            DROP CONSTRAINT ck_orders_status,
            ADD CONSTRAINT ck_orders_status CHECK (status IN ('CONFIRMED', 'CANCELLED')),
            ADD CONSTRAINT ck_orders_cancelled_at
                CHECK ((status = 'CANCELLED') = (cancelled_at IS NOT NULL));

        -- The per-buyer limit's counters: for every product with a max_per_buyer (and only
        -- those), the units of its CONFIRMED orders per buyer. Read and written only under the
        -- product's row lock (placements, cancellations, and the trigger below all hold it),
        -- so they are exact.
        CREATE TABLE buyer_holdings (
            product_id  bigint NOT NULL,
            buyer_id    text   NOT NULL,
            units       bigint NOT NULL,
            CONSTRAINT pk_buyer_holdings PRIMARY KEY (product_id, buyer_id),
            CONSTRAINT fk_buyer_holdings_product_id_products
                FOREIGN KEY (product_id) REFERENCES products (id) ON DELETE CASCADE,
            CONSTRAINT ck_buyer_holdings_units_nonnegative CHECK (units >= 0)
        );

        -- A limit set on a product that had none counts the buyers' confirmed orders once (one
        -- pass over that product's orders, inside the UPDATE that set it); a limit cleared drops
        -- the counters. Changing one limit to another keeps them.
        CREATE FUNCTION rebuild_buyer_holdings() RETURNS trigger
        LANGUAGE plpgsql
        AS $$
        BEGIN
            DELETE FROM buyer_holdings WHERE product_id = NEW.id;
            IF NEW.max_per_buyer IS NOT NULL THEN
                INSERT INTO buyer_holdings (product_id, buyer_id, units)
                SELECT o.product_id, o.buyer_id, sum(o.quantity)
                FROM orders o
                WHERE o.product_id = NEW.id AND o.status = 'CONFIRMED'
                GROUP BY o.product_id, o.buyer_id;
            END IF;
            RETURN NULL;
        END
        $$;
        CREATE TRIGGER tr_products_max_per_buyer
            AFTER UPDATE OF max_per_buyer ON products
            FOR EACH ROW WHEN ((OLD.max_per_buyer IS NULL) <> (NEW.max_per_buyer IS NULL))
            EXECUTE FUNCTION rebuild_buyer_holdings();
        """
    )
    op.execute(
        f"""
        DROP FUNCTION place_order_batch({PLACE_ORDER_BATCH_ARGS});

        -- Places the orders of one batch, all for one product, in arrival order (entry i is the
        -- i-th element of every array) and returns one row per entry, in that order:
        --   CREATED | REPLAYED (with the order), or the refusal's code: OUT_OF_STOCK,
        --   PRODUCT_NOT_FOUND, SALE_NOT_STARTED, SALE_ENDED, PURCHASE_LIMIT_EXCEEDED,
        --   IDEMPOTENCY_KEY_IN_USE, IDEMPOTENCY_KEY_REUSED;
        -- `replayed`: the outcome is one stored under the entry's Idempotency-Key;
        -- and on every row, of the product after the batch: `sold_out` (on sale with no stock
        -- left: every order without a key would be refused OUT_OF_STOCK until stock goes up)
        -- and `sale_opens_in_s` (whole seconds until its sale starts, at least 1; NULL once
        -- started or without a start).
        -- Called as one statement in autocommit: one round trip, one commit for the batch, and the
        -- product's row lock is held only inside this function. The caller sends each key at most
        -- once (repeats inside a batch are resolved by the caller).
        --
        -- Rules, for each entry not answered from its key, in this order: the product exists;
        -- its sale window is open (on this database's clock: now(), the transaction's start, so
        -- every order created has created_at inside the window); first fit: the full quantity
        -- still fits in the stock left; the buyer's confirmed units (buyer_holdings, plus what
        -- earlier entries of this batch were granted) plus this quantity stay within
        -- max_per_buyer. Stock comes before the limit so that a sold-out product refuses every
        -- order OUT_OF_STOCK, as the servers' sold-out cache answers.
        --
        -- No statement here may cost more as tables grow: created orders come back from their
        -- INSERT ... RETURNING, and the only reads are by primary key (a product, a key, a
        -- replayed order, the batch's buyers' counters). PL/pgSQL keeps each statement's plan
        -- for the life of the connection, and a plan made while a table was small or never
        -- analyzed can be a sequential scan that stays one as the table grows. With sequential
        -- scans disabled inside the function, the planner takes the primary key whatever the
        -- statistics say.
        CREATE FUNCTION place_order_batch(
            p_product_id  bigint,
            p_quantities  integer[],
            p_buyer_ids   text[],
            p_keys        text[],     -- NULL where the request has no Idempotency-Key
            p_hashes      bytea[],    -- the request fingerprint, where there is a key
            p_ttl_s       double precision
        ) RETURNS TABLE (
            outcome text, replayed boolean, id uuid, product_id bigint, buyer_id text,
            quantity integer, status text, total_cents bigint, created_at timestamptz,
            updated_at timestamptz, cancelled_at timestamptz,
            sold_out boolean, sale_opens_in_s bigint
        )
        LANGUAGE plpgsql VOLATILE
        SET enable_seqscan = off
        AS $fn$
        #variable_conflict use_column
        DECLARE
            n         constant integer := cardinality(p_quantities);
            outcomes  text[] := array_fill(NULL::text, ARRAY[n]);
            replays   boolean[] := array_fill(false, ARRAY[n]);
            fresh     boolean[] := array_fill(false, ARRAY[n]);  -- decided here, not replayed
            order_ids uuid[] := array_fill(NULL::uuid, ARRAY[n]);
            known     orders[] := '{{}}';  -- the orders this batch answers with
            keyed     boolean := false;
            earlier   record;
            v_order   orders;
            v_product products;
            v_found   boolean;
            v_closed  text;     -- the window's answer to every entry, while it is not open
            v_opens   bigint;
            v_left    bigint;
            slots     integer[];  -- entry i's buyer, as the index of its first entry
            held      bigint[];   -- at a buyer's first entry: their units, growing with grants
            counted   boolean[];  -- the buyer already has a counter row
            raised    boolean := false;  -- an existing counter row must change
        BEGIN
            -- 1. Keys first, before the row lock: a key another transaction holds is IN_USE at
            -- once; each lookup is a new statement, so its snapshot sees a first request that
            -- committed just before we took the lock.
            FOR i IN 1..n LOOP
                CONTINUE WHEN p_keys[i] IS NULL;
                keyed := true;
                IF NOT pg_try_advisory_xact_lock(hashtextextended(p_keys[i], 7)) THEN
                    outcomes[i] := 'IDEMPOTENCY_KEY_IN_USE';
                    CONTINUE;
                END IF;
                SELECT k.request_hash, k.order_id, k.error_code INTO earlier
                FROM idempotency_keys k WHERE k.key = p_keys[i] AND k.expires_at > now();
                CONTINUE WHEN NOT FOUND;
                IF earlier.request_hash <> p_hashes[i] THEN
                    outcomes[i] := 'IDEMPOTENCY_KEY_REUSED';
                    CONTINUE;
                END IF;
                replays[i] := true;
                IF earlier.error_code IS NOT NULL THEN
                    outcomes[i] := earlier.error_code;
                ELSE
                    -- The response as it was first given, even if the order was cancelled
                    -- since (GET /orders/{{id}} shows it as it is now).
                    SELECT o.* INTO v_order FROM orders o WHERE o.id = earlier.order_id;
                    v_order.status := 'CONFIRMED';
                    v_order.cancelled_at := NULL;
                    v_order.updated_at := v_order.created_at;
                    outcomes[i] := 'REPLAYED';
                    order_ids[i] := v_order.id;
                    known := known || v_order;
                END IF;
            END LOOP;

            -- 2. The product's row lock (waits for other batches, cancellations and product
            -- updates, in any process), then the rules above, entry by entry.
            SELECT p.* INTO v_product FROM products p WHERE p.id = p_product_id FOR UPDATE;
            v_found := FOUND;
            v_left := v_product.stock;
            IF v_product.sale_starts_at > now() THEN
                v_closed := 'SALE_NOT_STARTED';
                v_opens := greatest(1, ceil(extract(epoch FROM v_product.sale_starts_at - now())));
            ELSIF v_product.sale_ends_at <= now() THEN
                v_closed := 'SALE_ENDED';
            END IF;
            IF v_product.max_per_buyer IS NOT NULL AND v_closed IS NULL THEN
                -- What each entry's buyer holds (one primary-key probe each; the lock keeps it
                -- current), and `slots`: the entry where that buyer first appears, whose
                -- `held` element counts for all of the buyer's entries as the batch grants more.
                SELECT array_agg(coalesce(h.units, 0) ORDER BY e.i),
                       array_agg(e.first ORDER BY e.i),
                       array_agg(h.units IS NOT NULL ORDER BY e.i)
                INTO held, slots, counted
                FROM (SELECT b.buyer_id, b.i, min(b.i) OVER (PARTITION BY b.buyer_id) AS first
                      FROM unnest(p_buyer_ids) WITH ORDINALITY AS b(buyer_id, i)) e
                LEFT JOIN buyer_holdings h
                    ON h.product_id = p_product_id AND h.buyer_id = e.buyer_id;
            END IF;
            FOR i IN 1..n LOOP
                CONTINUE WHEN outcomes[i] IS NOT NULL;
                fresh[i] := true;
                IF NOT v_found THEN
                    outcomes[i] := 'PRODUCT_NOT_FOUND';
                ELSIF v_closed IS NOT NULL THEN
                    outcomes[i] := v_closed;
                ELSIF p_quantities[i] > v_left THEN
                    outcomes[i] := 'OUT_OF_STOCK';
                ELSIF v_product.max_per_buyer IS NOT NULL
                      AND held[slots[i]] + p_quantities[i] > v_product.max_per_buyer THEN
                    outcomes[i] := 'PURCHASE_LIMIT_EXCEEDED';
                ELSE
                    outcomes[i] := 'CREATED';
                    order_ids[i] := uuid_v7();
                    v_left := v_left - p_quantities[i];
                    IF v_product.max_per_buyer IS NOT NULL THEN
                        held[slots[i]] := held[slots[i]] + p_quantities[i];
                        raised := raised OR counted[i];
                    END IF;
                END IF;
            END LOOP;

            -- 3. Every granted order in one INSERT (read back from its RETURNING), the stock
            -- decremented once (CHECK (stock >= 0) stays the last line of defence), the buyers'
            -- counters raised once each, and the fresh outcomes stored under their keys.
            IF v_left < v_product.stock THEN
                WITH created AS (
                    INSERT INTO orders (id, product_id, buyer_id, quantity, total_cents)
                    SELECT e.id, p_product_id, e.buyer_id, e.quantity, v_product.price * e.quantity
                    FROM unnest(order_ids, p_buyer_ids, p_quantities, outcomes)
                        AS e(id, buyer_id, quantity, outcome)
                    WHERE e.outcome = 'CREATED'
                    RETURNING orders
                )
                SELECT known || array_agg(created.orders) INTO known FROM created;
                UPDATE products
                SET stock = stock - (v_product.stock - v_left), version = version + 1,
                    updated_at = now()
                WHERE id = p_product_id;
                IF v_product.max_per_buyer IS NOT NULL THEN
                    -- Plain INSERTs for new buyers (no ON CONFLICT: under the lock nobody else
                    -- writes this product's counters) and an UPDATE only if a known one bought.
                    INSERT INTO buyer_holdings (product_id, buyer_id, units)
                    SELECT p_product_id, e.buyer_id, e.units
                    FROM unnest(p_buyer_ids, slots, held, counted) WITH ORDINALITY
                        AS e(buyer_id, slot, units, counted, i)
                    WHERE e.slot = e.i AND NOT e.counted AND e.units > 0;
                    IF raised THEN
                        UPDATE buyer_holdings h SET units = e.units
                        FROM unnest(p_buyer_ids, slots, held, counted) WITH ORDINALITY
                            AS e(buyer_id, slot, units, counted, i)
                        WHERE e.slot = e.i AND e.counted AND h.units <> e.units
                          AND h.product_id = p_product_id AND h.buyer_id = e.buyer_id;
                    END IF;
                END IF;
            END IF;
            IF keyed THEN  -- a statement fewer for orders without keys
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
            END IF;

            -- 4. One row per entry, in arrival order, with its order where there is one: matched
            -- in memory against what this function already holds, never read from the table.
            RETURN QUERY
            SELECT e.outcome, e.replayed, o.id, o.product_id, o.buyer_id, o.quantity, o.status,
                   o.total_cents, o.created_at, o.updated_at, o.cancelled_at,
                   v_found AND v_closed IS NULL AND v_left = 0, v_opens
            FROM unnest(outcomes, replays, order_ids) WITH ORDINALITY
                AS e(outcome, replayed, order_id, i)
            LEFT JOIN unnest(known) AS o ON o.id = e.order_id
            ORDER BY e.i;
        END
        $fn$;

        -- Cancels a CONFIRMED order: its status, its units back into the product's stock
        -- (version bumped; the stock trigger tells every server the product sells again), and
        -- out of the buyer's counter. Returns the order with `cancelled_now` (false: it was
        -- already cancelled, and nothing changed), or no row for an unknown order. The product's
        -- row lock comes first, as in every placement, so concurrent cancellations of one order
        -- queue on it and the later ones find the order already CANCELLED.
        CREATE FUNCTION cancel_order(p_order_id uuid)
        RETURNS TABLE (
            cancelled_now boolean, id uuid, product_id bigint, buyer_id text, quantity integer,
            status text, total_cents bigint, created_at timestamptz, updated_at timestamptz,
            cancelled_at timestamptz
        )
        LANGUAGE plpgsql VOLATILE
        SET enable_seqscan = off
        AS $fn$
        #variable_conflict use_column
        DECLARE
            v_product_id bigint;
            v_limit      integer;
            v_order      orders;
            v_now        boolean := false;
        BEGIN
            SELECT o.product_id INTO v_product_id FROM orders o WHERE o.id = p_order_id;
            IF NOT FOUND THEN
                RETURN;
            END IF;
            SELECT p.max_per_buyer INTO v_limit FROM products p WHERE p.id = v_product_id
            FOR UPDATE;
            UPDATE orders o SET status = 'CANCELLED', cancelled_at = now(), updated_at = now()
            WHERE o.id = p_order_id AND o.status = 'CONFIRMED'
            RETURNING o.* INTO v_order;
            IF FOUND THEN
                v_now := true;
                UPDATE products p
                SET stock = p.stock + v_order.quantity, version = p.version + 1,
                    updated_at = now()
                WHERE p.id = v_product_id;
                IF v_limit IS NOT NULL THEN
                    UPDATE buyer_holdings h SET units = h.units - v_order.quantity
                    WHERE h.product_id = v_product_id AND h.buyer_id = v_order.buyer_id;
                END IF;
            ELSE
                SELECT o.* INTO v_order FROM orders o WHERE o.id = p_order_id;
            END IF;
            RETURN QUERY SELECT v_now, v_order.id, v_order.product_id, v_order.buyer_id,
                v_order.quantity, v_order.status, v_order.total_cents, v_order.created_at,
                v_order.updated_at, v_order.cancelled_at;
        END
        $fn$;
        """
    )


def downgrade() -> None:
    # Fails (and changes nothing) while there are cancelled orders: their status has no place
    # in the older schema.
    op.execute(
        f"""
        DROP FUNCTION cancel_order(uuid);
        DROP FUNCTION place_order_batch({PLACE_ORDER_BATCH_ARGS});
        DROP TRIGGER tr_products_max_per_buyer ON products;
        DROP FUNCTION rebuild_buyer_holdings();
        DROP TABLE buyer_holdings;
        ALTER TABLE orders
            DROP CONSTRAINT ck_orders_cancelled_at,
            DROP CONSTRAINT ck_orders_status,
            ADD CONSTRAINT ck_orders_status CHECK (status IN ('CONFIRMED')),
            DROP COLUMN cancelled_at;
        ALTER TABLE products
            DROP COLUMN max_per_buyer,
            DROP COLUMN sale_starts_at,
            DROP COLUMN sale_ends_at;
        """
    )
    # place_order_batch() as revision 0004 made it.
    revision_module("2026_12_01_0004_orders_at_scale.py").create_place_order_batch()
