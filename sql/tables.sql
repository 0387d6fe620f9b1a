-- Tables. Every table that holds account data is keyed by account_id first
-- (so Citus can distribute it by that column); plans is a small reference
-- table. Balances are stored, and a write path locks the account row first,
-- then its buckets in consumption order; CHECK constraints and the triggers
-- of guards.sql refuse any new row version that breaks a limit.
--
-- The tables written on the hot path carry only the CHECK constraints that
-- enforce limits: Postgres re-reads every CHECK expression from the catalog
-- for each statement, which measurably slows reserve and commit. Every other
-- rule (valid kinds and states, non-negative figures, consistent draws) is
-- checked by credits_verify().

CREATE TABLE credits.plans (
    plan_id           text PRIMARY KEY CHECK (length(plan_id) BETWEEN 1 AND 255),
    allocation        numeric(20,6) NOT NULL CHECK (allocation >= 0),
    reset             text NOT NULL CHECK (reset IN ('billing_date', 'calendar_month')),
    limit_mode        text NOT NULL CHECK (limit_mode IN ('hard', 'soft')),
    soft_limit        numeric(20,6) NOT NULL CHECK (soft_limit >= 0),
    rollover_cap      numeric(20,6) NOT NULL CHECK (rollover_cap >= 0),
    overage_rate      numeric(20,6) NOT NULL CHECK (overage_rate >= 0),
    purchases_allowed boolean NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);

CREATE TABLE credits.accounts (
    account_id     text PRIMARY KEY,
    plan_id        text NOT NULL REFERENCES credits.plans (plan_id),
    billing_anchor timestamptz NOT NULL,
    byok           boolean NOT NULL,
    limit_mode     text,            -- override of the plan's, NULL: the plan's
    soft_limit     numeric(20,6),   -- override of the plan's, NULL: the plan's
    override_until timestamptz,     -- the overrides end then, NULL: never
    period_start   timestamptz NOT NULL,
    period_end     timestamptz NOT NULL,
    balance        numeric(20,6) NOT NULL DEFAULT 0,
    held           numeric(20,6) NOT NULL DEFAULT 0,
    overage_held   numeric(20,6) NOT NULL DEFAULT 0,
    period_used    numeric(20,6) NOT NULL DEFAULT 0,
    period_overage numeric(20,6) NOT NULL DEFAULT 0,
    debt           numeric(20,6) NOT NULL DEFAULT 0,
    next_event     timestamptz NOT NULL,
    -- Alerts: percentages of the period allocation that raise an event once
    -- per period; next_alert_at is the usage at which the next one is due.
    alert_percents numeric[] NOT NULL DEFAULT '{80,100}',
    alerts_raised  numeric[] NOT NULL DEFAULT '{}',
    next_alert_at  numeric(20,6),
    -- Auto-recharge threshold when enabled (credits_auto_recharge_set).
    recharge_below numeric(20,6),
    created_at     timestamptz NOT NULL,
    -- The products switched off for this account, sorted (NULL: none): a
    -- copy of its credits.account_products rows with enabled = false, kept
    -- by credits_account_product_set under the account's lock, so that the
    -- library's reserve fast path judges them on the locked row's newest
    -- version (since 0.3.5).
    products_off   text[],
    CONSTRAINT accounts_within_limits CHECK (held >= 0 AND held <= balance AND overage_held >= 0 AND debt >= 0)
) WITH (fillfactor = 70);

-- Due accounts for credits_maintenance(); next_event only changes when a
-- hold expires sooner than everything else, so reserves stay HOT updates.
CREATE INDEX accounts_next_event ON credits.accounts (next_event);

CREATE TABLE credits.buckets (
    account_id text NOT NULL REFERENCES credits.accounts (account_id),
    bucket_id  uuid NOT NULL DEFAULT gen_random_uuid(),
    kind       text NOT NULL,
    priority   smallint NOT NULL,
    amount     numeric(20,6) NOT NULL,
    balance    numeric(20,6) NOT NULL,
    held       numeric(20,6) NOT NULL DEFAULT 0,
    expires_at timestamptz,
    created_at timestamptz NOT NULL,
    metadata   jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (account_id, bucket_id),
    CONSTRAINT buckets_hold_within_balance CHECK (held >= 0 AND held <= balance)
) WITH (fillfactor = 70);
-- Consumption order; no balance column in it, so draws stay HOT updates.
-- kind settles the tie of a period's allocation and rollover, made at the
-- same instant with the same expiry: the allocation first (0.3.5; before,
-- their random ids did).
CREATE INDEX buckets_consumption_order
    ON credits.buckets (account_id, priority, expires_at, created_at, kind, bucket_id);

-- A reservation records its draws in its own row (bucket ids and amounts):
-- while pending, what it holds from each bucket; once committed, what it
-- charged to each. overage and debt are the parts taken beyond the buckets.
CREATE TABLE credits.reservations (
    reservation_id uuid NOT NULL,
    account_id     text NOT NULL,
    status         text NOT NULL,
    product        text NOT NULL,
    action         text,
    amount         numeric(20,6) NOT NULL,
    draw_buckets   uuid[] NOT NULL,
    draw_amounts   numeric[] NOT NULL,
    overage        numeric(20,6) NOT NULL DEFAULT 0,
    overage_rate   numeric(20,6),
    debt           numeric(20,6) NOT NULL DEFAULT 0,
    charged        numeric(20,6),
    refunded       numeric(20,6) NOT NULL DEFAULT 0,
    byok           boolean NOT NULL DEFAULT false,
    period_start   timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    created_at     timestamptz NOT NULL,
    resolved_at    timestamptz,
    metadata       jsonb NOT NULL DEFAULT '{}',
    -- Leading reservation_id: commit and refund find a reservation by id alone.
    PRIMARY KEY (reservation_id, account_id)
) WITH (fillfactor = 70);
CREATE INDEX reservations_pending_expiry
    ON credits.reservations (account_id, expires_at) WHERE status = 'pending';
CREATE INDEX reservations_by_account_time
    ON credits.reservations (account_id, created_at);

-- The append-only ledger: every change of a stored balance is a row here.
-- Rows with a bucket_id add up to that bucket's balance; overage and debt
-- rows have none.
CREATE TABLE credits.ledger (
    entry_id        bigint GENERATED BY DEFAULT AS IDENTITY,
    account_id      text NOT NULL,
    kind            text NOT NULL,
    amount          numeric(20,6) NOT NULL,
    bucket_id       uuid,
    reservation_id  uuid,
    product         text,
    action          text,
    rate            numeric(20,6),
    actor           text NOT NULL,
    idempotency_key text,
    metadata        jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL,
    -- The hash chain (sql/ledger_chain.sql), added in 0.2.0.
    seq             bigint NOT NULL,
    hash            text NOT NULL,
    PRIMARY KEY (account_id, entry_id)
);
CREATE INDEX ledger_by_account_time ON credits.ledger (account_id, created_at);

-- Idempotency keys, per account and function, kept forever. The request is
-- stored by value (jsonb compares numbers by value) to tell a replay from a
-- conflicting reuse of the key.
CREATE TABLE credits.idempotency_keys (
    account_id text NOT NULL,
    fn         text NOT NULL,
    key        text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request    jsonb NOT NULL,
    result     text NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (account_id, fn, key)
);

SELECT pg_catalog.pg_extension_config_dump('credits.plans', '');
SELECT pg_catalog.pg_extension_config_dump('credits.accounts', '');
SELECT pg_catalog.pg_extension_config_dump('credits.buckets', '');
SELECT pg_catalog.pg_extension_config_dump('credits.reservations', '');
SELECT pg_catalog.pg_extension_config_dump('credits.ledger', '');
SELECT pg_catalog.pg_extension_config_dump('credits.ledger_entry_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('credits.idempotency_keys', '');

-- Who did it: the role the caller acts as (SET ROLE counts), also inside
-- SECURITY DEFINER functions where current_user is the owner.
CREATE FUNCTION credits._actor() RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN pg_catalog.current_setting('role') = 'none'
                THEN session_user::text
                ELSE pg_catalog.current_setting('role') END
$$;
