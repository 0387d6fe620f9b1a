-- credits 0.3.1 -> 0.3.2
-- A false alarm no longer costs a roll-forward (issue 5). next_event is a
-- lower bound that every reserve lowers to its hold's expiry and that commits
-- and refunds leave alone, so the next reserve of an account quiet for longer
-- than its last hold's ttl found it due with nothing to do: it left the fast
-- path and built and applied an empty roll-forward plan (about 0.8 ms instead
-- of 0.1 ms here), and credits_maintenance did the same for every such
-- account. New: credits._refresh_next_event(), which only moves next_event
-- on when nothing is due; credits._housekeep() calls it first, and the new
-- library's fast paths call it and stay on the fast path. credits._next_event()
-- becomes PL/pgSQL, so that its plan is kept. Install the new library, then
-- run this update.
-- Released upgrade scripts are never edited: a fix ships in the next one.
\echo Use "ALTER EXTENSION credits UPDATE TO '0.3.2'" to load this file. \quit

CREATE FUNCTION credits._refresh_next_event(p_account text, p_now timestamptz) RETURNS boolean
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM 1 FROM credits.accounts WHERE account_id = p_account FOR NO KEY UPDATE;
    UPDATE credits.accounts a
       SET next_event = credits._next_event(a.account_id, a.period_end, p_now)
     WHERE a.account_id = p_account AND a.next_event <= p_now AND a.period_end > p_now
       AND NOT EXISTS (SELECT 1 FROM credits.reservations r
                        WHERE r.account_id = p_account AND r.status = 'pending' AND r.expires_at <= p_now)
       AND NOT EXISTS (SELECT 1 FROM credits.buckets b
                        WHERE b.account_id = p_account AND b.expires_at <= p_now AND b.balance > b.held);
    RETURN FOUND;
END
$$;
REVOKE ALL ON FUNCTION credits._refresh_next_event(text, timestamptz) FROM PUBLIC;

CREATE OR REPLACE FUNCTION credits._housekeep(p_account text, p_now timestamptz) RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    v       jsonb;
    v_actor text;
    v_end   timestamptz;
    v_reset boolean;
BEGIN
    IF credits._refresh_next_event(p_account, p_now) THEN
        RETURN 0;
    END IF;
    v := credits._roll_plan(credits._roll_input(p_account, p_now));
    v_actor := credits._actor();
    v_end := (v->>'period_end')::timestamptz;
    v_reset := (v->>'rolled')::integer > 0;
    INSERT INTO credits.buckets (account_id, bucket_id, kind, priority, amount, balance, held, expires_at, created_at)
    SELECT p_account, x.id, x.kind, x.priority, x.amount, x.balance, x.held, x.expires_at, x.created_at
      FROM jsonb_to_recordset(v->'buckets') AS x(id uuid, kind text, priority smallint, amount numeric, balance numeric,
                                                 held numeric, expires_at timestamptz, created_at timestamptz, new boolean)
     WHERE x.new;
    UPDATE credits.buckets b SET balance = x.balance, held = x.held
      FROM jsonb_to_recordset(v->'buckets') AS x(id uuid, balance numeric, held numeric, new boolean, changed boolean)
     WHERE b.account_id = p_account AND b.bucket_id = x.id AND x.changed AND NOT x.new;
    INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, reservation_id, actor, created_at)
    SELECT p_account, x.kind, x.amount, x.bucket_id, x.reservation_id, v_actor, x.at
      FROM jsonb_to_recordset(v->'ledger') AS x(kind text, amount numeric, bucket_id uuid, reservation_id uuid, at timestamptz);
    UPDATE credits.reservations r SET status = 'expired', resolved_at = x.at
      FROM jsonb_to_recordset(v->'expired_holds') AS x(id uuid, at timestamptz)
     WHERE r.reservation_id = x.id AND r.account_id = p_account;
    UPDATE credits.accounts
       SET balance = balance + (v->>'balance_delta')::numeric,
           held = held + (v->>'held_delta')::numeric,
           overage_held = overage_held - (v->>'overage_released')::numeric,
           debt = (v->>'debt')::numeric,
           period_start = (v->>'period_start')::timestamptz,
           period_end = v_end,
           period_used = CASE WHEN v_reset THEN 0 ELSE period_used END,
           period_overage = CASE WHEN v_reset THEN 0 ELSE period_overage END,
           alerts_raised = CASE WHEN v_reset THEN '{}' ELSE alerts_raised END,
           next_alert_at = CASE WHEN v_reset
                                THEN credits._next_alert_at(alert_percents, '{}',
                                         (SELECT CASE WHEN byok THEN 0 ELSE p.allocation END
                                            FROM credits.plans p WHERE p.plan_id = credits.accounts.plan_id))
                                ELSE next_alert_at END,
           next_event = credits._next_event(p_account, v_end, p_now)
     WHERE account_id = p_account;
    RETURN (v->>'rolled')::integer;
END
$$;

CREATE OR REPLACE FUNCTION credits._next_event(p_account text, p_period_end timestamptz, p_now timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN least(p_period_end,
                 (SELECT min(expires_at) FROM credits.buckets
                   WHERE account_id = p_account AND expires_at > p_now AND balance > held),
                 (SELECT min(expires_at) FROM credits.reservations
                   WHERE account_id = p_account AND status = 'pending'));
END
$$;
