-- Tables. Every table that holds account data has account_id in its primary
-- key and in every unique index (so Citus can distribute it by that column;
-- README, Beyond one machine); plans is a small reference table. Balances
-- are stored, and a write path locks the account row first, then its
-- buckets in consumption order; CHECK constraints and the triggers of
-- guards.sql refuse any new row version that breaks a limit.
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

COMMENT ON TABLE credits.plans IS 'Plans: monthly allocation, reset rule, limit mode and overage terms.';
COMMENT ON COLUMN credits.plans.plan_id IS 'The plan''s name, as given to credits_plan_upsert.';
COMMENT ON COLUMN credits.plans.allocation IS 'Credits granted to each account on the plan at the start of every period.';
COMMENT ON COLUMN credits.plans.reset IS 'billing_date: periods start on the account''s anchor day; calendar_month: on the 1st (UTC).';
COMMENT ON COLUMN credits.plans.limit_mode IS 'hard: reserves fail once the buckets are empty; soft: overage up to soft_limit per period.';
COMMENT ON COLUMN credits.plans.soft_limit IS 'Overage allowed per period once every bucket is empty (soft limit_mode).';
COMMENT ON COLUMN credits.plans.rollover_cap IS 'At most this much unused allocation (and rollover) is carried into the next period.';
COMMENT ON COLUMN credits.plans.overage_rate IS 'Price multiplier stored on overage ledger rows (billable overage = overage x rate).';
COMMENT ON COLUMN credits.plans.purchases_allowed IS 'false: credits_purchase and auto-recharge are refused (CR010) for the plan''s accounts.';
COMMENT ON COLUMN credits.plans.created_at IS 'When the plan was created.';
COMMENT ON COLUMN credits.plans.updated_at IS 'When the plan was last changed.';

-- An account's plan_id names a row of credits.plans, but not as a foreign
-- key: Postgres checks a foreign key again, by locking the plan's row FOR
-- KEY SHARE, on every update of an account row that its own transaction
-- has already written, so that a reserve and its commit in one transaction
-- would lock the row that all of the plan's accounts share, and each two
-- such transactions that overlap would need a new MultiXact. The reference
-- is kept by credits_account_upsert (it locks the plan's row, as the
-- foreign key did), by the guards of sql/guards.sql (a plan in use is not
-- deleted, renamed or truncated; plan_id changes only to a plan that
-- exists) and checked by credits_verify().
CREATE TABLE credits.accounts (
    account_id     text PRIMARY KEY,
    plan_id        text NOT NULL,
    billing_anchor timestamptz NOT NULL,
    byok           boolean NOT NULL,
    limit_mode     text,
    soft_limit     numeric(20,6),
    override_until timestamptz,
    period_start   timestamptz NOT NULL,
    period_end     timestamptz NOT NULL,
    balance        numeric(20,6) NOT NULL DEFAULT 0,
    held           numeric(20,6) NOT NULL DEFAULT 0,
    overage_held   numeric(20,6) NOT NULL DEFAULT 0,
    period_used    numeric(20,6) NOT NULL DEFAULT 0,
    period_overage numeric(20,6) NOT NULL DEFAULT 0,
    debt           numeric(20,6) NOT NULL DEFAULT 0,
    next_event     timestamptz NOT NULL,
    alert_percents numeric[] NOT NULL DEFAULT '{80,100}',
    alerts_raised  numeric[] NOT NULL DEFAULT '{}',
    next_alert_at  numeric(20,6),
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
COMMENT ON TABLE credits.accounts IS 'Accounts with their stored balance row: locked first by every write path.';
COMMENT ON COLUMN credits.accounts.account_id IS 'The account, as the application names it.';
COMMENT ON COLUMN credits.accounts.plan_id IS 'The account''s plan (a plan_id of credits.plans; kept by triggers, not a foreign key).';
COMMENT ON COLUMN credits.accounts.billing_anchor IS 'Billing date: a billing_date plan''s periods start on its day of the month (UTC; the 29th-31st fall on the last day of shorter months).';
COMMENT ON COLUMN credits.accounts.byok IS 'Bring-your-own-key account: no allocation or buckets; usage logged, never metered.';
COMMENT ON COLUMN credits.accounts.limit_mode IS 'The account''s override of its plan''s limit_mode; NULL: the plan''s.';
COMMENT ON COLUMN credits.accounts.soft_limit IS 'The account''s override of its plan''s soft_limit; NULL: the plan''s.';
COMMENT ON COLUMN credits.accounts.override_until IS 'The overrides end then; NULL: never.';
COMMENT ON COLUMN credits.accounts.period_start IS 'Start of the period the account was last rolled to (credits.account_summary shows the rolled-forward one).';
COMMENT ON COLUMN credits.accounts.period_end IS 'End of that period (exclusive): the next reset.';
COMMENT ON COLUMN credits.accounts.balance IS 'What the account''s buckets hold: the sum of their balance, pending holds included.';
COMMENT ON COLUMN credits.accounts.held IS 'What pending reservations hold of the buckets: the sum of their held; never above balance.';
COMMENT ON COLUMN credits.accounts.overage_held IS 'Overage held by pending reservations (soft limit).';
COMMENT ON COLUMN credits.accounts.period_used IS 'Charged to buckets and as debt in the stored period, net of that period''s refunds.';
COMMENT ON COLUMN credits.accounts.period_overage IS 'Charged past the buckets in the stored period, net of that period''s refunds.';
COMMENT ON COLUMN credits.accounts.debt IS 'Owed from commits forced past the limit; reserves fail (CR008) while it is above 0, and new credit pays it first.';
COMMENT ON COLUMN credits.accounts.next_event IS 'No later than anything due (the period end, a live bucket''s or a pending hold''s expiry): write paths roll the account forward from then, and credits_maintenance() finds due accounts by it.';
COMMENT ON COLUMN credits.accounts.alert_percents IS 'Percentages of the period allocation (used + overage) that each raise a usage_alert event once per period.';
COMMENT ON COLUMN credits.accounts.alerts_raised IS 'The alert_percents already raised this period.';
COMMENT ON COLUMN credits.accounts.next_alert_at IS 'The usage (used + overage) at which the next alert is due; NULL: none left this period.';
COMMENT ON COLUMN credits.accounts.recharge_below IS 'The auto-recharge threshold while auto-recharge is on (a copy of credits.auto_recharge''s); NULL: off.';
COMMENT ON COLUMN credits.accounts.created_at IS 'When the account was created.';
COMMENT ON COLUMN credits.accounts.products_off IS 'The products switched off for this account, sorted (a copy of its credits.account_products rows with enabled = false); NULL: none.';

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
COMMENT ON TABLE credits.buckets IS 'Credit buckets (allocation, rollover, topup, promo, pack, adjustment) with stored balance and holds.';
COMMENT ON COLUMN credits.buckets.account_id IS 'The account.';
COMMENT ON COLUMN credits.buckets.bucket_id IS 'The bucket (what credits_grant returned).';
COMMENT ON COLUMN credits.buckets.kind IS 'allocation, rollover, topup, promo, pack or adjustment.';
COMMENT ON COLUMN credits.buckets.priority IS 'Consumption order by kind: 0 allocation and rollover, 1 topup and promo, 2 pack and adjustment.';
COMMENT ON COLUMN credits.buckets.amount IS 'The amount granted.';
COMMENT ON COLUMN credits.buckets.balance IS 'What the bucket holds now, pending holds included: the sum of its ledger rows.';
COMMENT ON COLUMN credits.buckets.held IS 'What pending reservations hold of it; never above balance.';
COMMENT ON COLUMN credits.buckets.expires_at IS 'When what is left expires (written off with an expire ledger row); NULL: never.';
COMMENT ON COLUMN credits.buckets.created_at IS 'When it was granted.';
COMMENT ON COLUMN credits.buckets.metadata IS 'The metadata given to credits_grant (a purchase''s pack and payment reference).';

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
COMMENT ON TABLE credits.reservations IS 'Reservations (holds) and what each drew from or charged to each bucket.';
COMMENT ON COLUMN credits.reservations.reservation_id IS 'The reservation (what credits_reserve returned).';
COMMENT ON COLUMN credits.reservations.account_id IS 'The account.';
COMMENT ON COLUMN credits.reservations.status IS 'pending, committed, released (refunded while pending) or expired.';
COMMENT ON COLUMN credits.reservations.product IS 'The AI product.';
COMMENT ON COLUMN credits.reservations.action IS 'The action label given to credits_reserve.';
COMMENT ON COLUMN credits.reservations.amount IS 'The amount reserved.';
COMMENT ON COLUMN credits.reservations.draw_buckets IS 'The buckets drawn from, in consumption order, with draw_amounts.';
COMMENT ON COLUMN credits.reservations.draw_amounts IS 'Per bucket of draw_buckets: what the hold holds (pending), held (released, expired) or what the commit charged (committed).';
COMMENT ON COLUMN credits.reservations.overage IS 'Past the buckets: the overage held (pending) or charged (committed).';
COMMENT ON COLUMN credits.reservations.overage_rate IS 'The plan''s overage_rate when the overage was charged; NULL without overage.';
COMMENT ON COLUMN credits.reservations.debt IS 'What a forced commit recorded as debt.';
COMMENT ON COLUMN credits.reservations.charged IS 'The amount committed; NULL until then.';
COMMENT ON COLUMN credits.reservations.refunded IS 'The amount refunded of the charge.';
COMMENT ON COLUMN credits.reservations.byok IS 'Reserved on a BYOK account (no balance effect).';
COMMENT ON COLUMN credits.reservations.period_start IS 'The account''s period when reserved, then when committed: a refund in another period leaves the current period''s figures alone.';
COMMENT ON COLUMN credits.reservations.expires_at IS 'When the hold stops counting if not committed (created_at + ttl).';
COMMENT ON COLUMN credits.reservations.created_at IS 'When it was reserved.';
COMMENT ON COLUMN credits.reservations.resolved_at IS 'When it was committed, released or marked expired; NULL while pending.';
COMMENT ON COLUMN credits.reservations.metadata IS 'The metadata given to credits_reserve, with a refund''s reason added.';

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
COMMENT ON TABLE credits.ledger IS 'Append-only ledger: every change of a stored balance.';
COMMENT ON COLUMN credits.ledger.entry_id IS 'The row''s id, increasing.';
COMMENT ON COLUMN credits.ledger.account_id IS 'The account.';
COMMENT ON COLUMN credits.ledger.kind IS 'Credit added (allocation, rollover, topup, promo, pack, adjustment, purchase; plan_change, negative when the allocation shrinks), usage (charge, overage, debt), given back (refund, overage_refund, debt_refund), debt_payment (new credit paying off debt) or expire (written off).';
COMMENT ON COLUMN credits.ledger.amount IS 'The change of the balance: positive adds credits, negative takes them.';
COMMENT ON COLUMN credits.ledger.bucket_id IS 'The bucket whose balance the row changes; NULL on overage and debt rows.';
COMMENT ON COLUMN credits.ledger.reservation_id IS 'The reservation of the action the row belongs to.';
COMMENT ON COLUMN credits.ledger.product IS 'The AI product, on the rows of an action.';
COMMENT ON COLUMN credits.ledger.action IS 'The action label given to credits_reserve, on the rows of an action.';
COMMENT ON COLUMN credits.ledger.rate IS 'On overage and overage_refund rows: the plan''s overage_rate when the overage was charged (billable overage = overage x rate).';
COMMENT ON COLUMN credits.ledger.actor IS 'The role that made the call (SET ROLE counts).';
COMMENT ON COLUMN credits.ledger.idempotency_key IS 'The idempotency key of the call, if any (a purchase''s payment reference).';
COMMENT ON COLUMN credits.ledger.metadata IS 'The row''s metadata: a grant''s, or a refund''s reason.';
COMMENT ON COLUMN credits.ledger.created_at IS 'When the row was written (the extension''s clock).';
COMMENT ON COLUMN credits.ledger.seq IS 'The row''s number in its account''s hash chain, from 1.';
COMMENT ON COLUMN credits.ledger.hash IS 'SHA-256 (hex) of the previous row''s hash and this row''s content: credits_verify() recomputes the chain.';

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
COMMENT ON TABLE credits.idempotency_keys IS 'Idempotency keys per account and function, kept forever.';
COMMENT ON COLUMN credits.idempotency_keys.account_id IS 'The account.';
COMMENT ON COLUMN credits.idempotency_keys.fn IS 'The function the key belongs to: reserve, grant or refund.';
COMMENT ON COLUMN credits.idempotency_keys.key IS 'The idempotency key, as given.';
COMMENT ON COLUMN credits.idempotency_keys.request IS 'The first call''s arguments, compared by value with a replay''s.';
COMMENT ON COLUMN credits.idempotency_keys.result IS 'The first call''s result, as text, returned to a replay.';
COMMENT ON COLUMN credits.idempotency_keys.created_at IS 'When the first call stored it.';

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
