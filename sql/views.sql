-- Usage views for dashboards and BI tools. All are security_invoker: the
-- row-level security of the tables underneath decides what a reader sees.
-- Their columns are stable; new columns are only ever added at the end.

-- The views' clock: credits._now(), declared STABLE. Postgres does not
-- merge a view whose columns call a VOLATILE function into the query that
-- reads it, so "the last 20 actions of an account" would read and sort
-- every reservation of the account instead of 20 rows of
-- reservations_by_account_time, and a page of the usage ring would compute
-- every account's state. A read needs no more than STABLE: nothing here
-- writes, and whether a hold shows as expired may use any moment of the
-- query. Every view reads the clock through it, never credits._now().
CREATE FUNCTION credits._now_stable() RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN credits._now();
END
$$;

-- The usage ring: one row per account, in its rolled-forward state. (The
-- account columns come from the table so that a WHERE on them reaches the
-- index before the per-account function runs.)
CREATE VIEW credits.account_summary WITH (security_invoker = true) AS
SELECT a.account_id, a.plan_id, a.byok, s.limit_mode, s.soft_limit AS soft_allowance,
       trim_scale(s.allocation) AS allocation, trim_scale(s.used) AS used,
       CASE WHEN s.allocation > 0 THEN round(100 * s.used / s.allocation, 2) END AS percent_used,
       trim_scale(s.reserved) AS reserved, trim_scale(s.available) AS available,
       trim_scale(s.overage) AS overage, trim_scale(s.overage_available) AS overage_available,
       trim_scale(s.debt) AS debt, s.period_start, s.period_end, s.period_end AS next_reset,
       s.days_until_reset, s.override_until
  FROM credits.accounts a,
       LATERAL credits._account_state(a.account_id, credits._now_stable()) s;

-- Daily usage per account and product (UTC days), from the roll-up.
CREATE VIEW credits.usage_daily WITH (security_invoker = true) AS
SELECT account_id, day, product, trim_scale(used) AS used, trim_scale(overage) AS overage,
       trim_scale(refunded) AS refunded, trim_scale(used + overage - refunded) AS net_used,
       trim_scale(billable_overage) AS billable_overage, actions, trim_scale(byok_used) AS byok_used
  FROM credits.usage_rollup;

-- Monthly usage per account and product (UTC calendar months).
CREATE VIEW credits.usage_monthly WITH (security_invoker = true) AS
SELECT account_id, date_trunc('month', day::timestamp)::date AS month, product,
       trim_scale(sum(used)) AS used, trim_scale(sum(overage)) AS overage, trim_scale(sum(refunded)) AS refunded,
       trim_scale(sum(used + overage - refunded)) AS net_used, trim_scale(sum(billable_overage)) AS billable_overage,
       sum(actions)::bigint AS actions, trim_scale(sum(byok_used)) AS byok_used
  FROM credits.usage_rollup
 GROUP BY account_id, date_trunc('month', day::timestamp)::date, product;

-- The transaction history: every ledger row, with its category.
CREATE VIEW credits.transactions WITH (security_invoker = true) AS
SELECT l.entry_id, l.account_id, l.created_at,
       CASE WHEN l.kind = 'purchase' THEN 'purchase'
            WHEN l.kind IN ('allocation', 'rollover') THEN 'reset'
            WHEN l.kind IN ('topup', 'promo', 'pack', 'adjustment', 'plan_change') THEN 'grant'
            WHEN l.kind IN ('charge', 'overage', 'debt') THEN 'deduction'
            WHEN l.kind IN ('refund', 'overage_refund', 'debt_refund') THEN 'refund'
            WHEN l.kind IN ('expire', 'hold_expired') THEN 'expiry'
            ELSE l.kind END AS category,
       l.kind, trim_scale(l.amount) AS amount, l.product, l.action, l.reservation_id, l.bucket_id,
       r.metadata->>'project' AS project, r.metadata->>'session' AS session,
       l.actor, l.idempotency_key, l.metadata
  FROM credits.ledger l
  LEFT JOIN credits.reservations r ON r.reservation_id = l.reservation_id AND r.account_id = l.account_id;

-- The per-action log: one row per reservation. Failed actions show as refunded.
CREATE VIEW credits.actions WITH (security_invoker = true) AS
SELECT r.reservation_id, r.account_id, r.created_at, r.resolved_at, r.product, r.action,
       CASE WHEN r.status = 'released' THEN 'refunded'
            WHEN r.status = 'committed' AND r.refunded > 0 AND r.refunded = r.charged THEN 'refunded'
            WHEN r.status = 'committed' AND r.refunded > 0 THEN 'partially_refunded'
            WHEN r.status = 'pending' AND r.expires_at <= credits._now_stable() THEN 'expired'
            ELSE r.status END AS status,
       trim_scale(r.amount) AS reserved, trim_scale(coalesce(r.charged, 0)) AS charged,
       trim_scale(r.refunded) AS refunded, trim_scale(coalesce(r.charged, 0) - r.refunded) AS net,
       -- What a pending hold holds past the buckets, what a commit charged
       -- past them; nothing for a hold released or expired uncommitted.
       trim_scale(CASE WHEN r.status = 'committed' OR (r.status = 'pending' AND r.expires_at > credits._now_stable())
                       THEN r.overage ELSE 0 END) AS overage, r.byok, r.expires_at,
       r.metadata->>'project' AS project, r.metadata->>'session' AS session, r.metadata
  FROM credits.reservations r;

-- Counters for scraping (Prometheus exporters, Grafana): totals per account
-- and product since the beginning, with the time of the scrape.
CREATE VIEW credits.metrics WITH (security_invoker = true) AS
SELECT account_id, product, sum(actions)::bigint AS actions_total,
       trim_scale(sum(used)) AS used_total, trim_scale(sum(overage)) AS overage_total,
       trim_scale(sum(refunded)) AS refunded_total, trim_scale(sum(billable_overage)) AS billable_overage_total,
       trim_scale(sum(byok_used)) AS byok_used_total, credits._now_stable() AS scrape_time
  FROM credits.usage_rollup
 GROUP BY account_id, product;

-- Day-over-day usage for a graph: every day of [from_day, to_day] and every
-- product the account used in it, zeros included (an inverted range: no
-- rows). The range must be finite and at most 3,660 days: it makes a row
-- per day and product, and until 0.3.5 an open range ('infinity') made
-- them until the statement was cancelled, spilling them to temporary
-- files (any reader could fill the disk), while NULL arguments returned
-- nothing instead of 22004.
CREATE FUNCTION public.credits_usage_daily(account_id text, from_day date, to_day date)
RETURNS TABLE (day date, product text, used numeric, overage numeric, refunded numeric, net_used numeric,
               actions integer)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits_usage_daily.account_id;
BEGIN
    PERFORM credits._required(v_account IS NULL, 'account_id');
    PERFORM credits._required(from_day IS NULL, 'from_day');
    PERFORM credits._required(to_day IS NULL, 'to_day');
    IF NOT (isfinite(from_day) AND isfinite(to_day)) OR to_day - from_day >= 3660 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'the range of days must be finite and at most 3660 days',
            DETAIL = format('from_day is %s, to_day is %s.', from_day, to_day),
            HINT = 'Ask for at most 3660 days (about ten years) at a time, or read months from credits.usage_monthly.';
    END IF;
    RETURN QUERY
    WITH products AS (
        SELECT DISTINCT u.product FROM credits.usage_rollup u
         WHERE u.account_id = v_account AND u.day BETWEEN from_day AND to_day
    )
    SELECT d.d::date, p.product, trim_scale(coalesce(u.used, 0)), trim_scale(coalesce(u.overage, 0)),
           trim_scale(coalesce(u.refunded, 0)), trim_scale(coalesce(u.used + u.overage - u.refunded, 0)),
           coalesce(u.actions, 0)
      FROM generate_series(from_day, to_day, interval '1 day') d(d)
     CROSS JOIN products p
      LEFT JOIN credits.usage_rollup u
             ON u.account_id = v_account AND u.day = d.d::date AND u.product = p.product
     ORDER BY 1, 2;
END
$$;

-- Usage broken down by any tag of the reservations' metadata (subject,
-- team, project, ...), for committed actions created in the UTC days
-- [from_day, to_day] (NULL: open). The account and the tag are required
-- (22004; until 0.3.5 NULL returned nothing, or one row of untagged
-- usage), and the days are UTC whatever the session's TimeZone (until
-- 0.3.5 they were the session's days, unlike every other figure).
CREATE FUNCTION public.credits_usage_by_tag(account_id text, tag text, from_day date DEFAULT NULL,
                                            to_day date DEFAULT NULL)
RETURNS TABLE (tag_value text, product text, actions bigint, charged numeric, refunded numeric, net numeric)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits_usage_by_tag.account_id;
    v_tag     text := credits_usage_by_tag.tag;
    -- The range as instants: a day's UTC midnight; days past what a
    -- timestamptz holds (dates reach further) are the infinities.
    v_from timestamptz := CASE WHEN from_day IS NULL OR from_day = '-infinity' THEN '-infinity'
                               WHEN from_day > '294276-12-30' THEN 'infinity'
                               ELSE from_day::timestamp AT TIME ZONE 'UTC' END;
    v_to   timestamptz := CASE WHEN to_day IS NULL OR to_day > '294276-12-30' THEN 'infinity'
                               WHEN to_day = '-infinity' THEN '-infinity'
                               ELSE (to_day + 1)::timestamp AT TIME ZONE 'UTC' END;
BEGIN
    PERFORM credits._required(v_account IS NULL, 'account_id');
    PERFORM credits._required(v_tag IS NULL, 'tag');
    RETURN QUERY
    SELECT r.metadata->>v_tag, r.product, count(*), trim_scale(sum(r.charged)), trim_scale(sum(r.refunded)),
           trim_scale(sum(r.charged - r.refunded))
      FROM credits.reservations r
     WHERE r.account_id = v_account AND r.status = 'committed'
       AND r.created_at >= v_from AND r.created_at < v_to
     GROUP BY 1, 2
     ORDER BY 1, 2;
END
$$;

COMMENT ON VIEW credits.account_summary IS 'Usage ring per account: allocation, used, percent, reserved, available, overage, limit, next reset.';
COMMENT ON VIEW credits.usage_daily IS 'Usage per account, UTC day and product.';
COMMENT ON VIEW credits.usage_monthly IS 'Usage per account, UTC calendar month and product.';
COMMENT ON VIEW credits.transactions IS 'Transaction history: purchases, grants, resets, deductions, refunds, expiries.';
COMMENT ON VIEW credits.actions IS 'Per-action log: reserved, charged, refunded, status (failed actions show as refunded).';
COMMENT ON VIEW credits.metrics IS 'Totals per account and product since the start, with the scrape time.';

-- What each column of the usage views means, for \d+ and for BI tools that
-- show column descriptions (Metabase, Superset, Grafana).
COMMENT ON COLUMN credits.account_summary.account_id IS 'The account.';
COMMENT ON COLUMN credits.account_summary.plan_id IS 'The account''s plan.';
COMMENT ON COLUMN credits.account_summary.byok IS 'Bring-your-own-key account: usage logged, never metered.';
COMMENT ON COLUMN credits.account_summary.limit_mode IS 'The limit in force: hard or soft (the plan''s, or the account''s override).';
COMMENT ON COLUMN credits.account_summary.soft_allowance IS 'The soft limit in force: overage allowed per period once every bucket is empty (used when limit_mode is soft).';
COMMENT ON COLUMN credits.account_summary.allocation IS 'The current period''s allocation.';
COMMENT ON COLUMN credits.account_summary.used IS 'Charged to buckets this period (allocation, rollover, top-ups, promos, packs) and as debt, less what refunds gave back of it.';
COMMENT ON COLUMN credits.account_summary.percent_used IS '100 x used / allocation, 2 decimals; NULL when the allocation is 0.';
COMMENT ON COLUMN credits.account_summary.reserved IS 'Held by pending reservations (overage held included).';
COMMENT ON COLUMN credits.account_summary.available IS 'What the live buckets hold beyond the pending holds.';
COMMENT ON COLUMN credits.account_summary.overage IS 'Charged past the buckets this period (soft limit), less what refunds gave back of it.';
COMMENT ON COLUMN credits.account_summary.overage_available IS 'What the soft allowance still allows this period, after the overage charged and held.';
COMMENT ON COLUMN credits.account_summary.debt IS 'Owed from commits forced past the limit; reserves fail while it is above 0.';
COMMENT ON COLUMN credits.account_summary.period_start IS 'Start of the current billing period.';
COMMENT ON COLUMN credits.account_summary.period_end IS 'End of the current billing period (exclusive).';
COMMENT ON COLUMN credits.account_summary.next_reset IS 'When the next period starts (the period end).';
COMMENT ON COLUMN credits.account_summary.days_until_reset IS 'Days until the next reset, rounded up.';
COMMENT ON COLUMN credits.account_summary.override_until IS 'End of the account''s limit override; NULL when none is in force or it has no end.';

COMMENT ON COLUMN credits.usage_daily.account_id IS 'The account.';
COMMENT ON COLUMN credits.usage_daily.day IS 'The UTC day.';
COMMENT ON COLUMN credits.usage_daily.product IS 'The AI product.';
COMMENT ON COLUMN credits.usage_daily.used IS 'Charged to buckets (and as debt) on the day.';
COMMENT ON COLUMN credits.usage_daily.overage IS 'Charged past the buckets on the day (soft limit).';
COMMENT ON COLUMN credits.usage_daily.refunded IS 'Given back on the day (overage first), whatever day the charge was.';
COMMENT ON COLUMN credits.usage_daily.net_used IS 'used + overage - refunded (negative on a day that gave back more than it used).';
COMMENT ON COLUMN credits.usage_daily.billable_overage IS 'Overage x the plan''s overage rate, net of refunds.';
COMMENT ON COLUMN credits.usage_daily.actions IS 'Actions committed on the day.';
COMMENT ON COLUMN credits.usage_daily.byok_used IS 'Usage of BYOK accounts (never metered).';

COMMENT ON COLUMN credits.usage_monthly.account_id IS 'The account.';
COMMENT ON COLUMN credits.usage_monthly.month IS 'The first day of the UTC calendar month.';
COMMENT ON COLUMN credits.usage_monthly.product IS 'The AI product.';
COMMENT ON COLUMN credits.usage_monthly.used IS 'Charged to buckets (and as debt) in the month.';
COMMENT ON COLUMN credits.usage_monthly.overage IS 'Charged past the buckets in the month (soft limit).';
COMMENT ON COLUMN credits.usage_monthly.refunded IS 'Given back in the month (overage first), whatever month the charge was.';
COMMENT ON COLUMN credits.usage_monthly.net_used IS 'used + overage - refunded.';
COMMENT ON COLUMN credits.usage_monthly.billable_overage IS 'Overage x the plan''s overage rate, net of refunds.';
COMMENT ON COLUMN credits.usage_monthly.actions IS 'Actions committed in the month.';
COMMENT ON COLUMN credits.usage_monthly.byok_used IS 'Usage of BYOK accounts (never metered).';

COMMENT ON COLUMN credits.transactions.entry_id IS 'The ledger row''s id, increasing.';
COMMENT ON COLUMN credits.transactions.account_id IS 'The account.';
COMMENT ON COLUMN credits.transactions.created_at IS 'When the row was written.';
COMMENT ON COLUMN credits.transactions.category IS 'purchase, grant, reset, deduction, refund, expiry or debt_payment.';
COMMENT ON COLUMN credits.transactions.kind IS 'The ledger row''s kind (charge, overage, refund, allocation, rollover, topup, pack, expire, ...).';
COMMENT ON COLUMN credits.transactions.amount IS 'The change of the balance: positive adds credits, negative takes them.';
COMMENT ON COLUMN credits.transactions.product IS 'The AI product, on the rows of an action that carry it (charges, overage, refunds).';
COMMENT ON COLUMN credits.transactions.action IS 'The action label given to credits_reserve, on rows of an action.';
COMMENT ON COLUMN credits.transactions.reservation_id IS 'The reservation the row belongs to, on rows of an action.';
COMMENT ON COLUMN credits.transactions.bucket_id IS 'The credit bucket the row changed.';
COMMENT ON COLUMN credits.transactions.project IS 'The reservation''s metadata->>''project''.';
COMMENT ON COLUMN credits.transactions.session IS 'The reservation''s metadata->>''session''.';
COMMENT ON COLUMN credits.transactions.actor IS 'The role that made the call.';
COMMENT ON COLUMN credits.transactions.idempotency_key IS 'The idempotency key of the call, if any.';
COMMENT ON COLUMN credits.transactions.metadata IS 'The row''s metadata: a grant''s, or a refund''s reason.';

COMMENT ON COLUMN credits.actions.reservation_id IS 'The reservation (what credits_reserve returned).';
COMMENT ON COLUMN credits.actions.account_id IS 'The account.';
COMMENT ON COLUMN credits.actions.created_at IS 'When it was reserved.';
COMMENT ON COLUMN credits.actions.resolved_at IS 'When it was committed, released or marked expired; NULL before (a hold past its ttl shows as expired before a write marks it).';
COMMENT ON COLUMN credits.actions.product IS 'The AI product.';
COMMENT ON COLUMN credits.actions.action IS 'The action label given to credits_reserve.';
COMMENT ON COLUMN credits.actions.status IS 'pending, committed, refunded (failed actions show so), partially_refunded or expired.';
COMMENT ON COLUMN credits.actions.reserved IS 'The amount reserved.';
COMMENT ON COLUMN credits.actions.charged IS 'The amount committed; 0 until then.';
COMMENT ON COLUMN credits.actions.refunded IS 'The amount refunded of the charge.';
COMMENT ON COLUMN credits.actions.net IS 'charged - refunded.';
COMMENT ON COLUMN credits.actions.overage IS 'What a pending hold holds, or a commit charged, past the buckets; 0 for a hold released or expired.';
COMMENT ON COLUMN credits.actions.byok IS 'Reserved on a BYOK account (not metered).';
COMMENT ON COLUMN credits.actions.expires_at IS 'When the hold stops counting if not committed (created_at + ttl).';
COMMENT ON COLUMN credits.actions.project IS 'metadata->>''project''.';
COMMENT ON COLUMN credits.actions.session IS 'metadata->>''session''.';
COMMENT ON COLUMN credits.actions.metadata IS 'The metadata given to credits_reserve, with a refund''s reason added.';

COMMENT ON COLUMN credits.metrics.account_id IS 'The account.';
COMMENT ON COLUMN credits.metrics.product IS 'The AI product.';
COMMENT ON COLUMN credits.metrics.actions_total IS 'Actions committed since the start (a counter).';
COMMENT ON COLUMN credits.metrics.used_total IS 'Charged to buckets (and as debt) since the start.';
COMMENT ON COLUMN credits.metrics.overage_total IS 'Charged past the buckets since the start.';
COMMENT ON COLUMN credits.metrics.refunded_total IS 'Given back since the start.';
COMMENT ON COLUMN credits.metrics.billable_overage_total IS 'Overage x rate, net of refunds, since the start.';
COMMENT ON COLUMN credits.metrics.byok_used_total IS 'Usage of BYOK accounts since the start.';
COMMENT ON COLUMN credits.metrics.scrape_time IS 'The time of the read (the extension''s clock).';

COMMENT ON FUNCTION public.credits_usage_daily(text, date, date) IS
    'Day-over-day usage per product for one account, every day of the range included (zeros too).';
COMMENT ON FUNCTION public.credits_usage_by_tag(text, text, date, date) IS
    'Usage of one account broken down by a tag of the reservation metadata (e.g. subject, team, project).';
