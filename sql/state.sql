-- Read-side state: what an account looks like at a given moment, computed
-- without writing (so it works in read-only transactions and on standbys).
-- It is the end state of the same plan the write paths apply
-- (credits._roll_plan, src/roll.rs): holds past their ttl no longer count,
-- expired buckets hold nothing, and periods that ended are rolled over,
-- even before any write path or credits_maintenance has recorded it.

-- The account's buckets with credits in them, as they are at p_now: as
-- stored when nothing is due (0.3.5), else the end state of the plan.
CREATE FUNCTION credits._live_buckets(p_account text, p_now timestamptz)
RETURNS TABLE (bucket_id uuid, kind text, priority smallint, amount numeric, remaining numeric,
               held numeric, expires_at timestamptz, created_at timestamptz, metadata jsonb)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM credits.accounts a WHERE a.account_id = p_account AND a.next_event > p_now) THEN
        RETURN QUERY
        SELECT b.bucket_id, b.kind, b.priority, b.amount, b.balance - b.held, b.held, b.expires_at, b.created_at,
               b.metadata
          FROM credits.buckets b
         WHERE b.account_id = p_account AND (b.balance > 0 OR b.held > 0);
        RETURN;
    END IF;
    RETURN QUERY
    SELECT x.id, x.kind, x.priority, CASE WHEN x.new THEN x.amount ELSE b.amount END,
           x.balance - x.held, x.held, x.expires_at, x.created_at, coalesce(b.metadata, '{}')
      FROM jsonb_to_recordset(credits._roll_plan(credits._roll_input(p_account, p_now)) -> 'buckets')
           AS x(id uuid, kind text, priority smallint, amount numeric, balance numeric, held numeric,
                expires_at timestamptz, created_at timestamptz, new boolean)
      LEFT JOIN credits.buckets b ON b.account_id = p_account AND b.bucket_id = x.id
     WHERE x.balance > 0 OR x.held > 0;
END
$$;

-- credits._account_state's allocation column is the figure that
-- credits._period_allocation computes (sql/limits.sql: usage alerts and
-- credits_account_upsert), written out
-- here because this function runs as the reader, to whom the read-side
-- helpers are granted one by one; change both together.
CREATE FUNCTION credits._account_state(p_account text, p_now timestamptz)
RETURNS TABLE (account_id text, plan_id text, byok boolean, limit_mode text, soft_limit numeric,
               allocation numeric, used numeric, overage numeric, reserved numeric, available numeric,
               overage_available numeric, debt numeric, period_start timestamptz, period_end timestamptz,
               days_until_reset integer, override_until timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    a       credits.accounts;
    p       credits.plans;
    v       jsonb;
    v_mode  text;
    v_soft  numeric;
    v_roll  boolean;
    v_end   timestamptz;
    v_held  numeric;
    v_free  numeric;
    v_ov_held numeric;
    v_debt  numeric;
    v_start timestamptz;
BEGIN
    SELECT * INTO a FROM credits.accounts WHERE account_id = p_account;
    IF NOT FOUND THEN
        PERFORM credits._unknown_account(p_account);
    END IF;
    SELECT * INTO p FROM credits.plans WHERE plan_id = a.plan_id;
    IF a.next_event > p_now THEN
        -- Nothing is due (next_event is a lower bound of the period end
        -- and of every expiry, a credits_verify() invariant): the stored
        -- row is the state, and the plan would change nothing (0.3.5).
        v_roll := false;
        v_end := a.period_end;
        v_held := a.held;
        v_free := a.balance - a.held;
        v_ov_held := a.overage_held;
        v_debt := a.debt;
        v_start := a.period_start;
    ELSE
        v := credits._roll_plan(credits._roll_input(p_account, p_now));
        v_roll := (v->>'rolled')::integer > 0;
        v_end := (v->>'period_end')::timestamptz;
        SELECT coalesce(sum(x.held), 0), coalesce(sum(x.balance - x.held), 0) INTO v_held, v_free
          FROM jsonb_to_recordset(v->'buckets') AS x(balance numeric, held numeric);
        v_ov_held := a.overage_held - (v->>'overage_released')::numeric;
        v_debt := (v->>'debt')::numeric;
        v_start := (v->>'period_start')::timestamptz;
    END IF;
    SELECT l.mode, l.soft INTO v_mode, v_soft FROM credits._limit(a, p_now) l;
    RETURN QUERY
    SELECT a.account_id, a.plan_id, a.byok, v_mode, v_soft,
           CASE WHEN a.byok THEN 0
                WHEN v_roll THEN p.allocation
                ELSE coalesce((SELECT b.amount FROM credits.buckets b
                                WHERE b.account_id = p_account AND b.kind = 'allocation' AND b.expires_at = a.period_end
                                ORDER BY b.created_at DESC LIMIT 1), p.allocation) END,
           CASE WHEN v_roll THEN 0 ELSE a.period_used END,
           CASE WHEN v_roll THEN 0 ELSE a.period_overage END,
           v_held + v_ov_held,
           v_free,
           greatest(v_soft - CASE WHEN v_roll THEN 0 ELSE a.period_overage END - v_ov_held, 0),
           v_debt, v_start, v_end,
           greatest(ceil(extract(epoch FROM v_end - p_now) / 86400), 0)::integer,
           CASE WHEN a.override_until > p_now THEN a.override_until END;
END
$$;
