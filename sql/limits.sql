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
    RETURN (SELECT ceil(min(x) * p_allocation / 100 * 1000000) / 1000000
              FROM unnest(p_percents) x
             WHERE p_allocation > 0 AND NOT x = ANY (p_raised));
END
$$;
