-- Read-side state: what an account looks like at a given moment, computed
-- without writing (so it works in read-only transactions and on standbys).
-- Holds past their ttl no longer count and buckets past their expiry hold
-- nothing, even before a write path has recorded it.

CREATE FUNCTION credits._live_buckets(p_account text, p_now timestamptz)
RETURNS TABLE (bucket_id uuid, kind text, priority smallint, amount numeric, remaining numeric,
               held numeric, expires_at timestamptz, created_at timestamptz, metadata jsonb)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH lapsed AS (
        SELECT u.bucket_id, sum(u.amount) AS amount
          FROM credits.reservations r,
               unnest(r.draw_buckets, r.draw_amounts) AS u(bucket_id, amount)
         WHERE r.account_id = p_account AND r.status = 'pending' AND r.expires_at <= p_now
         GROUP BY u.bucket_id
    )
    SELECT b.bucket_id, b.kind, b.priority, b.amount,
           CASE WHEN b.expires_at <= p_now THEN 0
                ELSE b.balance - b.held + coalesce(l.amount, 0) END,
           b.held - coalesce(l.amount, 0),
           b.expires_at, b.created_at, b.metadata
      FROM credits.buckets b
      LEFT JOIN lapsed l ON l.bucket_id = b.bucket_id
     WHERE b.account_id = p_account
$$;

CREATE FUNCTION credits._account_state(p_account text, p_now timestamptz)
RETURNS TABLE (account_id text, plan_id text, byok boolean, limit_mode text, soft_limit numeric,
               allocation numeric, used numeric, overage numeric, reserved numeric, available numeric,
               overage_available numeric, debt numeric, period_start timestamptz, period_end timestamptz,
               days_until_reset integer)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    a credits.accounts;
    p credits.plans;
    v_mode text;
    v_soft numeric;
    v_lapsed_overage numeric;
BEGIN
    SELECT * INTO a FROM credits.accounts WHERE account_id = p_account;
    IF NOT FOUND THEN
        PERFORM credits._raise('CR002',
            format('unknown account "%s"', p_account),
            'No credits account has this account_id.',
            'Create it first with credits_account_upsert(account_id => ..., plan_id => ...).');
    END IF;
    SELECT * INTO p FROM credits.plans WHERE plan_id = a.plan_id;
    v_mode := coalesce(a.limit_mode, p.limit_mode);
    v_soft := CASE WHEN v_mode = 'soft' THEN coalesce(a.soft_limit, p.soft_limit) ELSE 0 END;
    SELECT coalesce(sum(r.overage), 0) INTO v_lapsed_overage
      FROM credits.reservations r
     WHERE r.account_id = p_account AND r.status = 'pending' AND r.expires_at <= p_now;
    RETURN QUERY
    SELECT a.account_id, a.plan_id, a.byok, v_mode, v_soft,
           coalesce((SELECT b.amount FROM credits.buckets b
                      WHERE b.account_id = p_account AND b.kind = 'allocation' AND b.expires_at = a.period_end
                      ORDER BY b.created_at DESC LIMIT 1),
                    CASE WHEN a.byok THEN 0 ELSE p.allocation END),
           a.period_used, a.period_overage,
           lb.held + a.overage_held - v_lapsed_overage,
           lb.remaining,
           greatest(v_soft - a.period_overage - a.overage_held + v_lapsed_overage, 0),
           a.debt, a.period_start, a.period_end,
           greatest(ceil(extract(epoch FROM a.period_end - p_now) / 86400), 0)::integer
      FROM (SELECT coalesce(sum(l.held), 0) AS held, coalesce(sum(l.remaining), 0) AS remaining
              FROM credits._live_buckets(p_account, p_now) l) lb;
END
$$;
