-- The limit in force for an account at a moment: its own override (mode and
-- soft allowance, possibly temporary) or else its plan's. The soft
-- allowance is 0 in hard mode.
CREATE FUNCTION credits._limit(a credits.accounts, p_now timestamptz, OUT mode text, OUT soft numeric)
LANGUAGE sql STABLE
AS $$
    SELECT m, CASE WHEN m = 'soft' THEN s ELSE 0 END
      FROM (SELECT CASE WHEN live THEN coalesce(a.limit_mode, p.limit_mode) ELSE p.limit_mode END AS m,
                   CASE WHEN live THEN coalesce(a.soft_limit, p.soft_limit) ELSE p.soft_limit END AS s
              FROM credits.plans p,
                   LATERAL (SELECT a.override_until IS NULL OR a.override_until > p_now AS live) l
             WHERE p.plan_id = a.plan_id) x
$$;

-- The usage (used + overage of the period) at which the next alert is due,
-- NULL when every alert of the period was raised or there is no allocation.
-- PL/pgSQL (since 0.3.5), so that its plan is kept for the session: as a SQL
-- function with a FROM clause it cannot be inlined, and was parsed and
-- planned again by every statement that called it (about 60 µs of each
-- account's roll-forward at a reset).
CREATE FUNCTION credits._next_alert_at(p_percents numeric[], p_raised numeric[], p_allocation numeric)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    RETURN (SELECT ceil(min(x) * p_allocation * 10000) * 0.000001
              FROM unnest(p_percents) x
             WHERE p_allocation > 0 AND NOT x = ANY (p_raised));
END
$$;

-- The allocation of an account's current period, which usage alerts are
-- percentages of: its allocation bucket's amount (an edit of the plan's
-- allocation applies from the next reset; a change of plan retargets the
-- bucket), or the plan's allocation when the period has none; 0 for BYOK.
-- The figure credits_balance and credits.account_summary show
-- (credits._account_state writes the same lookup out: sql/state.sql).
CREATE FUNCTION credits._period_allocation(p_account text, p_period_end timestamptz, p_byok boolean,
                                           p_plan_allocation numeric)
RETURNS numeric
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF p_byok THEN
        RETURN 0;
    END IF;
    RETURN coalesce((SELECT b.amount FROM credits.buckets b
                      WHERE b.account_id = p_account AND b.kind = 'allocation' AND b.expires_at = p_period_end
                      ORDER BY b.created_at DESC LIMIT 1), p_plan_allocation);
END
$$;

-- The most an account holds: its stored figures are numeric(20,6). A write
-- that adds credits (a grant, a purchase) or raises what a reset grants (a
-- plan's allocation or rollover cap, a change of plan) is refused (22003)
-- when the account could then not be rolled forward: its next reset keeps
-- the buckets that outlive the period, carries up to the rollover cap of
-- what is left of the allocation and rollover, and grants the allocation,
-- and the sum must fit. Until 0.3.5 nothing checked it: the reset failed
-- with 22003, and so did every write path on the account, each of which
-- rolls it forward first (and, until credits_maintenance learned to set
-- such accounts aside, every maintenance run). p_add: the credits the write
-- adds; p_outlives: whether they outlive the current period. The plan row
-- is read FOR SHARE, so that a credits_plan_upsert raising it waits for
-- this write, and then finds its buckets.
CREATE FUNCTION credits._room_check(p_account text, p_add numeric, p_outlives boolean)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_max CONSTANT numeric := 99999999999999.999999;
    a credits.accounts;
    p credits.plans;
    v_outliving numeric;
    v_unused numeric;
BEGIN
    SELECT * INTO a FROM credits.accounts WHERE account_id = p_account;
    SELECT * INTO p FROM credits.plans WHERE plan_id = a.plan_id FOR SHARE;
    IF a.balance + p_add > v_max THEN
        RAISE EXCEPTION USING ERRCODE = '22003',
            MESSAGE = format('account "%s" cannot hold more credits', p_account),
            DETAIL = format('Its balance of %s and the %s added would pass %s, the most an account holds.',
                            trim_scale(a.balance), trim_scale(p_add), v_max),
            HINT = 'Add fewer credits.';
    END IF;
    IF a.byok THEN
        RETURN;
    END IF;
    SELECT coalesce(sum(b.balance) FILTER (WHERE b.expires_at IS NULL OR b.expires_at > a.period_end), 0),
           coalesce(sum(b.balance) FILTER (WHERE b.kind IN ('allocation', 'rollover') AND b.expires_at <= a.period_end), 0)
      INTO v_outliving, v_unused
      FROM credits.buckets b
     WHERE b.account_id = p_account;
    IF p_outlives THEN
        v_outliving := v_outliving + p_add;
    END IF;
    IF v_outliving + least(p.rollover_cap, v_unused) + p.allocation > v_max THEN
        RAISE EXCEPTION USING ERRCODE = '22003',
            MESSAGE = format('account "%s" would not fit its next reset', p_account),
            DETAIL = format('At the reset on %s it would keep %s that outlive the period, carry up to %s and get the %s of plan "%s": '
                            'more than %s, the most an account holds.',
                            to_char(a.period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD'), trim_scale(v_outliving),
                            trim_scale(least(p.rollover_cap, v_unused)), trim_scale(p.allocation), p.plan_id, v_max),
            HINT = 'Add fewer credits, or put the account on a plan with a smaller allocation or rollover cap.';
    END IF;
END
$$;
