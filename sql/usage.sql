-- The usage roll-up: per account, UTC day and product, what was used,
-- refunded and taken as overage, and how many actions were committed.
-- credits_commit and credits_refund maintain it in the same transaction as
-- their ledger rows (one upsert each), so daily and monthly figures stay
-- fast however long the ledger grows; credits_verify() checks it against
-- the ledger and the reservations.
CREATE TABLE credits.usage_rollup (
    account_id       text NOT NULL,
    day              date NOT NULL,
    product          text NOT NULL,
    used             numeric(20,6) NOT NULL DEFAULT 0,
    overage          numeric(20,6) NOT NULL DEFAULT 0,
    refunded         numeric(20,6) NOT NULL DEFAULT 0,
    overage_refunded numeric(20,6) NOT NULL DEFAULT 0,
    billable_overage numeric(20,6) NOT NULL DEFAULT 0,
    actions          integer NOT NULL DEFAULT 0,
    byok_used        numeric(20,6) NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day, product)
) WITH (fillfactor = 70);
-- The all-accounts monthly report reads one month of every account.
CREATE INDEX usage_rollup_by_month ON credits.usage_rollup ((date_trunc('month', day::timestamp)::date));
SELECT pg_catalog.pg_extension_config_dump('credits.usage_rollup', '');
COMMENT ON TABLE credits.usage_rollup IS 'Usage per account, UTC day and product, maintained with every commit and refund.';
COMMENT ON COLUMN credits.usage_rollup.account_id IS 'The account.';
COMMENT ON COLUMN credits.usage_rollup.day IS 'The UTC day of the commits and refunds.';
COMMENT ON COLUMN credits.usage_rollup.product IS 'The AI product.';
COMMENT ON COLUMN credits.usage_rollup.used IS 'Charged to buckets and as debt (refunds are in refunded).';
COMMENT ON COLUMN credits.usage_rollup.overage IS 'Charged past every bucket.';
COMMENT ON COLUMN credits.usage_rollup.refunded IS 'Given back by refunds (overage refunds included).';
COMMENT ON COLUMN credits.usage_rollup.overage_refunded IS 'The part of refunded that was overage.';
COMMENT ON COLUMN credits.usage_rollup.billable_overage IS 'Overage x rate, net of refunds.';
COMMENT ON COLUMN credits.usage_rollup.actions IS 'Commits.';
COMMENT ON COLUMN credits.usage_rollup.byok_used IS 'BYOK usage, net of refunds.';

-- Adds to the usage roll-up row of an account, UTC day and product (the
-- general commit and refund paths; the commit fast path writes its own).
-- PL/pgSQL (since 0.3.5), so that its plan is kept for the session: as a
-- SQL function its INSERT was parsed and planned on every call.
CREATE FUNCTION credits._rollup(p_account text, p_at timestamptz, p_product text, p_used numeric, p_overage numeric,
                                p_refunded numeric, p_overage_refunded numeric, p_billable numeric,
                                p_actions integer, p_byok numeric)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO credits.usage_rollup AS u (account_id, day, product, used, overage, refunded, overage_refunded,
                                           billable_overage, actions, byok_used)
    VALUES (p_account, (p_at AT TIME ZONE 'UTC')::date, p_product, p_used, p_overage, p_refunded, p_overage_refunded,
            p_billable, p_actions, p_byok)
    ON CONFLICT (account_id, day, product) DO UPDATE
       SET used = u.used + EXCLUDED.used, overage = u.overage + EXCLUDED.overage,
           refunded = u.refunded + EXCLUDED.refunded, overage_refunded = u.overage_refunded + EXCLUDED.overage_refunded,
           billable_overage = u.billable_overage + EXCLUDED.billable_overage,
           actions = u.actions + EXCLUDED.actions, byok_used = u.byok_used + EXCLUDED.byok_used;
END
$$;
