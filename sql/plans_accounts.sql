-- Plans and accounts: the admin calls that configure who gets what.

CREATE FUNCTION public.credits_plan_upsert(
    plan_id           text,
    allocation        numeric,
    reset             text DEFAULT 'billing_date',
    limit_mode        text DEFAULT 'hard',
    soft_limit        numeric DEFAULT 0,
    rollover_cap      numeric DEFAULT 0,
    overage_rate      numeric DEFAULT 1,
    purchases_allowed boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_plan  text    := credits._ident(credits_plan_upsert.plan_id, 'plan_id', 255);
    v_alloc numeric := credits._amount(credits_plan_upsert.allocation, 'allocation', true);
    v_reset text    := credits._choice(credits_plan_upsert.reset, 'reset', '{billing_date,calendar_month}');
    v_mode  text    := credits._choice(credits_plan_upsert.limit_mode, 'limit_mode', '{hard,soft}');
    v_soft  numeric := credits._amount(credits_plan_upsert.soft_limit, 'soft_limit', true);
    v_cap   numeric := credits._amount(credits_plan_upsert.rollover_cap, 'rollover_cap', true);
    v_rate  numeric := credits._amount(credits_plan_upsert.overage_rate, 'overage_rate', true);
    v_now   timestamptz := credits._now();
    v_max   CONSTANT numeric := 99999999999999.999999;
    v_account text;
BEGIN
    PERFORM credits._required(credits_plan_upsert.purchases_allowed IS NULL, 'purchases_allowed');
    PERFORM credits._require_unbound('credits_plan_upsert');
    -- A new account gets the allocation, and its first reset carries up to
    -- the rollover cap of it and grants it again: both must fit in an
    -- account (credits._room_check).
    IF v_alloc + least(v_cap, v_alloc) > v_max THEN
        RAISE EXCEPTION USING ERRCODE = '22003',
            MESSAGE = format('plan "%s" grants more than an account holds', v_plan),
            DETAIL = format('An allocation of %s with a rollover of up to %s would pass %s, the most an account holds.',
                            trim_scale(v_alloc), trim_scale(least(v_cap, v_alloc)), v_max),
            HINT = 'Pass a smaller allocation or rollover cap.';
    END IF;
    -- An edit applies from each account's next reset. An account whose
    -- period has ended but that nothing has rolled forward yet (no call,
    -- maintenance not yet run) is rolled first, with the plan as it was, as
    -- if on time (credits._lock_account rolls a due account as every write
    -- path does); otherwise its late reset would grant the new allocation
    -- for a period that began before the edit. In account_id order, as
    -- credits_reset() locks them.
    FOR v_account IN
        SELECT a.account_id FROM credits.accounts a
         WHERE a.plan_id = v_plan AND a.period_end <= v_now
         ORDER BY a.account_id
    LOOP
        PERFORM credits._lock_account(v_account);
    END LOOP;
    INSERT INTO credits.plans (plan_id, allocation, reset, limit_mode, soft_limit, rollover_cap,
                               overage_rate, purchases_allowed, created_at, updated_at)
    VALUES (v_plan, v_alloc, v_reset, v_mode, v_soft, v_cap, v_rate,
            credits_plan_upsert.purchases_allowed, v_now, v_now)
    ON CONFLICT (plan_id) DO UPDATE
       SET allocation = EXCLUDED.allocation, reset = EXCLUDED.reset,
           limit_mode = EXCLUDED.limit_mode, soft_limit = EXCLUDED.soft_limit,
           rollover_cap = EXCLUDED.rollover_cap, overage_rate = EXCLUDED.overage_rate,
           purchases_allowed = EXCLUDED.purchases_allowed, updated_at = EXCLUDED.updated_at;
    -- And each of the plan's accounts must still fit its next reset. What
    -- an account keeps and carries is part of its balance, so only accounts
    -- whose balance and the allocation pass the most an account holds need
    -- the exact check (one pass over the accounts: there is no index by plan).
    FOR v_account IN
        SELECT a.account_id FROM credits.accounts a
         WHERE a.plan_id = v_plan AND NOT a.byok AND a.balance + v_alloc > v_max
         ORDER BY a.account_id
    LOOP
        PERFORM credits._room_check(v_account, 0, false);
    END LOOP;
END
$$;

-- Sets the allocation bucket of the current period to p_target less what was
-- already used of it (never below zero, never below what holds keep), as one
-- plan_change ledger row. Returns the change of the account's balance and
-- the debt it paid off.
CREATE FUNCTION credits._retarget_allocation(p_account text, p_target numeric, p_period_end timestamptz,
                                             p_debt numeric, p_now timestamptz,
                                             OUT delta numeric, OUT settled numeric)
LANGUAGE plpgsql
AS $$
DECLARE
    b  credits.buckets;
    nb record;
BEGIN
    delta := 0;
    settled := 0;
    SELECT * INTO b FROM credits.buckets
     WHERE account_id = p_account AND kind = 'allocation' AND expires_at = p_period_end
     ORDER BY created_at DESC LIMIT 1;
    IF FOUND THEN
        delta := greatest(p_target - (b.amount - b.balance), b.held, 0) - b.balance;
        IF delta <> 0 THEN
            UPDATE credits.buckets SET balance = balance + delta, amount = greatest(amount + delta, 0)
             WHERE account_id = p_account AND bucket_id = b.bucket_id;
            INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, actor, created_at)
            VALUES (p_account, 'plan_change', delta, b.bucket_id, credits._actor(), p_now);
        END IF;
    ELSIF p_target > 0 THEN
        SELECT * INTO nb FROM credits._new_bucket(p_account, 'allocation', p_target, p_period_end, p_now,
                                                  p_debt, p_ledger_kind => 'plan_change');
        delta := p_target - nb.settled;
        settled := nb.settled;
    END IF;
END
$$;

CREATE FUNCTION public.credits_account_upsert(
    account_id     text,
    plan_id        text DEFAULT NULL,
    billing_anchor timestamptz DEFAULT NULL,
    byok           boolean DEFAULT NULL,
    limit_mode     text DEFAULT NULL,
    soft_limit     numeric DEFAULT NULL,
    override_until timestamptz DEFAULT NULL,
    alert_percents numeric[] DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits._ident(credits_account_upsert.account_id, 'account_id', 255);
    v_plan    text := CASE WHEN credits_account_upsert.plan_id IS NULL THEN NULL
                           ELSE credits._ident(credits_account_upsert.plan_id, 'plan_id', 255) END;
    v_anchor  timestamptz := credits_account_upsert.billing_anchor;
    v_byok    boolean := credits_account_upsert.byok;
    v_mode    text := CASE WHEN credits_account_upsert.limit_mode IS NULL THEN NULL
                           ELSE credits._choice(credits_account_upsert.limit_mode, 'limit_mode', '{hard,soft,plan}') END;
    v_soft    numeric := CASE WHEN credits_account_upsert.soft_limit IS NULL THEN NULL
                              ELSE credits._amount(credits_account_upsert.soft_limit, 'soft_limit', true) END;
    v_until   timestamptz := credits_account_upsert.override_until;
    v_alerts  numeric[] := credits_account_upsert.alert_percents;
    v_now     timestamptz;
    v_end     timestamptz;
    p         credits.plans;
    a         credits.accounts;
    rt        record;
    v_recheck boolean := false;
    v_moves   boolean;
BEGIN
    -- A role bound to accounts changes those accounts only, and creates
    -- none (whether another account exists, it does not learn).
    IF NOT credits._may_touch(v_account) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('account "%s" is not bound to role "%s"', v_account, credits._actor()),
            DETAIL = 'A role bound to accounts may change those accounts only; creating an account needs a role bound to no account.',
            HINT = 'Call it as a credits_admin role bound to no account, or as a superuser.';
    END IF;
    IF v_until IS NOT NULL AND NOT isfinite(v_until) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'override_until must be a finite timestamp',
            DETAIL = format('override_until is %s.', v_until),
            HINT = 'Leave it out for an override without end.';
    END IF;
    IF v_alerts IS NOT NULL AND (array_ndims(v_alerts) > 1
                                 OR EXISTS (SELECT 1 FROM unnest(v_alerts) x WHERE x IS NULL OR x <= 0 OR x > 1000)) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'alert_percents must be a list of percentages above 0 and at most 1000',
            DETAIL = format('alert_percents is %s.', v_alerts),
            HINT = 'Pass percentages of the period allocation, such as {50,80,100}.';
    END IF;
    IF v_anchor IS NOT NULL AND NOT isfinite(v_anchor) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'billing_anchor must be a finite timestamp',
            DETAIL = format('billing_anchor is %s.', v_anchor),
            HINT = 'Pass the date the account''s billing started.';
    END IF;
    IF v_plan IS NOT NULL THEN
        -- Held FOR KEY SHARE until this transaction ends, so that the plan
        -- is not deleted meanwhile (credits._plan_in_use, sql/guards.sql).
        SELECT * INTO p FROM credits.plans WHERE plan_id = v_plan FOR KEY SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'CR003',
                MESSAGE = format('unknown plan "%s"', v_plan),
                DETAIL = 'No plan has this plan_id.',
                HINT = 'Create it first with credits_plan_upsert().';
        END IF;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM credits.accounts WHERE account_id = v_account) THEN
        IF v_plan IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '22004',
                MESSAGE = 'plan_id must not be NULL for a new account',
                DETAIL = format('Account "%s" does not exist yet.', v_account),
                HINT = 'Pass plan_id to create the account.';
        END IF;
        v_now := credits._now();
        v_anchor := coalesce(v_anchor, v_now);
        v_byok := coalesce(v_byok, false);
        v_end := credits._period_after(v_anchor, p.reset, v_now);
        v_alerts := coalesce(v_alerts, '{80,100}');
        INSERT INTO credits.accounts (account_id, plan_id, billing_anchor, byok, limit_mode, soft_limit, override_until,
                                      period_start, period_end, balance, next_event, alert_percents, next_alert_at,
                                      created_at)
        VALUES (v_account, v_plan, v_anchor, v_byok, nullif(v_mode, 'plan'), v_soft, v_until,
                credits._period_start(v_anchor, p.reset, v_now), v_end,
                CASE WHEN v_byok THEN 0 ELSE p.allocation END, v_end, v_alerts,
                credits._next_alert_at(v_alerts, '{}', CASE WHEN v_byok THEN 0 ELSE p.allocation END), v_now)
        ON CONFLICT (account_id) DO NOTHING;
        IF FOUND THEN
            -- The full allocation for the first period, even a partial one.
            IF NOT v_byok AND p.allocation > 0 THEN
                PERFORM credits._new_bucket(v_account, 'allocation', p.allocation, v_end, v_now, 0);
            END IF;
            RETURN;
        END IF;
    END IF;

    a := credits._lock_account(v_account);
    v_now := credits._now();
    IF v_plan IS NULL THEN
        SELECT * INTO p FROM credits.plans WHERE plan_id = a.plan_id;
    END IF;
    -- An override that has ended is forgotten, so that the values given
    -- now start a new one (without end unless override_until is given).
    IF v_mode = 'plan' OR a.override_until <= v_now THEN
        a.limit_mode := NULL;
        a.soft_limit := NULL;
        a.override_until := NULL;
    END IF;
    IF v_mode IS NOT NULL AND v_mode <> 'plan' THEN
        a.limit_mode := v_mode;
    END IF;
    a.soft_limit := coalesce(v_soft, a.soft_limit);
    a.override_until := coalesce(v_until, a.override_until);
    a.alert_percents := coalesce(v_alerts, a.alert_percents);
    v_moves := p.plan_id <> a.plan_id OR v_anchor <> a.billing_anchor;
    a.billing_anchor := coalesce(v_anchor, a.billing_anchor);

    -- Another plan (with its reset rule) or a new anchor moves the end of
    -- the current period (and the expiry of what was due to expire with
    -- it). Nothing else does: an edit of the plan's own reset rule applies
    -- from the next reset (credits_plan_upsert), also for an account whose
    -- alerts or limits are changed meanwhile.
    v_end := credits._period_after(a.billing_anchor, p.reset, v_now);
    IF v_moves AND v_end <> a.period_end THEN
        UPDATE credits.buckets SET expires_at = v_end
         WHERE account_id = v_account AND expires_at = a.period_end;
        a.period_end := v_end;
    END IF;

    -- Plan and BYOK changes take effect at once on the current allocation.
    IF p.plan_id <> a.plan_id OR coalesce(v_byok, a.byok) <> a.byok THEN
        a.plan_id := p.plan_id;
        a.byok := coalesce(v_byok, a.byok);
        -- The new allocation must fit now (and its resets, checked below).
        PERFORM credits._room_check(v_account, CASE WHEN a.byok THEN 0 ELSE p.allocation END, false);
        SELECT * INTO rt FROM credits._retarget_allocation(
            v_account, CASE WHEN a.byok THEN 0 ELSE p.allocation END, a.period_end, a.debt, v_now);
        a.balance := a.balance + rt.delta;
        a.debt := a.debt - rt.settled;
        v_recheck := true;
    END IF;

    UPDATE credits.accounts
       SET plan_id = a.plan_id, billing_anchor = a.billing_anchor, byok = a.byok,
           limit_mode = a.limit_mode, soft_limit = a.soft_limit, override_until = a.override_until,
           period_end = a.period_end, balance = a.balance, debt = a.debt,
           alert_percents = a.alert_percents,
           next_alert_at = credits._next_alert_at(a.alert_percents, a.alerts_raised,
                                                  credits._period_allocation(v_account, a.period_end, a.byok,
                                                                             p.allocation)),
           next_event = credits._next_event(v_account, a.period_end, v_now)
     WHERE account_id = v_account;
    IF v_recheck THEN
        PERFORM credits._room_check(v_account, 0, false);
        -- A plan with a smaller allocation may leave the balance below the
        -- auto-recharge threshold.
        PERFORM credits._auto_recharge(v_account, v_now);
    END IF;
    -- A plan with a smaller allocation, a switch back from BYOK or new
    -- alert percentages may put the period's usage past an alert line:
    -- raised now, not at the next commit (no balance before: no recharge).
    PERFORM credits._after_usage(v_account, NULL, v_now);
END
$$;
