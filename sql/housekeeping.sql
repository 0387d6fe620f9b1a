-- Housekeeping that write paths run on an account they have locked, when its
-- next_event (the earliest period end, bucket expiry or hold expiry; a lower
-- bound) has come: holds past their ttl are released, periods are rolled in
-- order (rollover, expiry, new allocation), expired buckets are written off.
-- The rules live in src/roll.rs; every step is a ledger row dated when it
-- logically happened.

-- A new bucket and its grant row; new credit first pays off any debt.
CREATE FUNCTION credits._new_bucket(
    p_account text, p_kind text, p_amount numeric, p_expires_at timestamptz,
    p_at timestamptz, p_debt numeric, p_key text DEFAULT NULL, p_metadata jsonb DEFAULT '{}',
    p_ledger_kind text DEFAULT NULL, p_reservation uuid DEFAULT NULL,
    OUT bucket_id uuid, OUT settled numeric)
LANGUAGE plpgsql
AS $$
BEGIN
    bucket_id := gen_random_uuid();
    settled := least(p_debt, p_amount);
    INSERT INTO credits.buckets (account_id, bucket_id, kind, priority, amount, balance, expires_at, created_at, metadata)
    VALUES (p_account, bucket_id, p_kind,
            CASE p_kind WHEN 'allocation' THEN 0 WHEN 'rollover' THEN 0
                        WHEN 'topup' THEN 1 WHEN 'promo' THEN 1 ELSE 2 END,
            p_amount, p_amount - settled, p_expires_at, p_at, p_metadata);
    INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, reservation_id, actor, idempotency_key, metadata, created_at)
    VALUES (p_account, coalesce(p_ledger_kind, p_kind), p_amount, bucket_id, p_reservation, credits._actor(), p_key, p_metadata, p_at);
    IF settled > 0 THEN
        INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, actor, created_at)
        VALUES (p_account, 'debt_payment', -settled, bucket_id, credits._actor(), p_at);
    END IF;
END
$$;

-- Gives back what a hold still holds in buckets, judged at p_at: a share
-- drawn from a bucket that had expired by then is written off at once,
-- never resurrected.
CREATE FUNCTION credits._release_draws(
    p_account text, p_reservation uuid, p_buckets uuid[], p_amounts numeric[], p_at timestamptz,
    OUT released numeric, OUT written_off numeric)
LANGUAGE plpgsql
AS $$
DECLARE
    d record;
BEGIN
    released := 0;
    written_off := 0;
    FOR d IN
        SELECT u.bucket_id, u.amount, b.expires_at <= p_at AS expired
          FROM unnest(p_buckets, p_amounts) WITH ORDINALITY AS u(bucket_id, amount, n)
          JOIN credits.buckets b ON b.account_id = p_account AND b.bucket_id = u.bucket_id
         WHERE u.amount > 0
         ORDER BY u.n
    LOOP
        IF d.expired THEN
            UPDATE credits.buckets SET held = held - d.amount, balance = balance - d.amount
             WHERE account_id = p_account AND bucket_id = d.bucket_id;
            INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, reservation_id, actor, created_at)
            VALUES (p_account, 'expire', -d.amount, d.bucket_id, p_reservation, credits._actor(), p_at);
            written_off := written_off + d.amount;
        ELSE
            UPDATE credits.buckets SET held = held - d.amount
             WHERE account_id = p_account AND bucket_id = d.bucket_id;
        END IF;
        released := released + d.amount;
    END LOOP;
END
$$;

-- What bringing the account up to p_now involves, as the jsonb input of
-- credits._roll_plan() (src/roll.rs): the account, its plan, its buckets
-- with credits in them and its pending holds whose ttl has passed.
-- PL/pgSQL (since 0.3.5), so that its plan is kept for the session.
CREATE FUNCTION credits._roll_input(p_account text, p_now timestamptz) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (SELECT jsonb_build_object(
            'now', p_now, 'period_start', a.period_start, 'period_end', a.period_end,
            'anchor', a.billing_anchor, 'reset', p.reset, 'allocation', p.allocation,
            'rollover_cap', p.rollover_cap, 'byok', a.byok, 'debt', a.debt,
            'buckets', coalesce((
                SELECT jsonb_agg(jsonb_build_object(
                           'id', b.bucket_id, 'kind', b.kind, 'priority', b.priority, 'balance', b.balance,
                           'held', b.held, 'expires_at', b.expires_at, 'created_at', b.created_at)
                       ORDER BY b.priority, b.expires_at, b.created_at, b.kind, b.bucket_id)
                  FROM credits.buckets b
                 WHERE b.account_id = p_account AND (b.balance > 0 OR b.held > 0)), '[]'),
            'holds', coalesce((
                SELECT jsonb_agg(jsonb_build_object(
                           'id', r.reservation_id, 'expires_at', r.expires_at, 'overage', r.overage,
                           'buckets', r.draw_buckets, 'amounts', r.draw_amounts))
                  FROM credits.reservations r
                 WHERE r.account_id = p_account AND r.status = 'pending' AND r.expires_at <= p_now), '[]'))
          FROM credits.accounts a
          JOIN credits.plans p ON p.plan_id = a.plan_id
         WHERE a.account_id = p_account);
END
$$;

-- The common case of a due account is a false alarm: next_event is a lower
-- bound that reserves lower (to their hold's expiry) and that commits and
-- refunds leave alone, so an account whose last hold was resolved comes due
-- at that hold's expiry with nothing to do. This locks the account and, when
-- nothing is due by p_now (the period has not ended, no pending hold has
-- expired, no bucket with free credits has expired: exactly when the plan of
-- credits._roll_plan() would be empty), moves next_event to the true next
-- event and returns true; otherwise it writes nothing and returns false.
-- The lock comes first, in its own statement, so the checks see every change
-- committed before it. Used by credits._housekeep and by the fast paths
-- (src/fast_path.rs), so that a reserve after a quiet spell longer than the
-- last hold's ttl stays on the fast path.
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

-- Brings a locked account up to p_now by applying the plan of
-- credits._roll_plan(): new buckets, bucket balances, ledger rows, expired
-- holds, the new period. Returns how many periods were rolled. A false
-- alarm (nothing due) only moves next_event, without building the plan.
CREATE FUNCTION credits._housekeep(p_account text, p_now timestamptz) RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    v       jsonb;
    v_actor text;
    v_end   timestamptz;
    v_reset boolean;
    v_balance numeric;
    v_below numeric;
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
     WHERE account_id = p_account
    RETURNING balance, recharge_below INTO v_balance, v_below;
    -- Expiries that took the balance below the auto-recharge threshold, or
    -- a reset that left it below (the month's cap may have room again, a
    -- failed payment is tried again), ask for a recharge.
    IF v_balance < v_below AND (v_reset OR v_balance - (v->>'balance_delta')::numeric >= v_below) THEN
        PERFORM credits._auto_recharge(p_account, p_now);
    END IF;
    RETURN (v->>'rolled')::integer;
END
$$;

-- The earliest moment something changes by itself: the period end, a live
-- bucket's expiry or a pending hold's expiry. Every live bucket's expiry,
-- also of one whose credits are all held or spent: a release or a refund
-- gives credits back to it without touching next_event, and they must
-- expire on time (until 0.3.5 such a bucket was left out, and its credits
-- stayed available past its expiry). At worst a false alarm. PL/pgSQL (since 0.3.2), so
-- that its plan is kept for the session: as a SQL function it could not be
-- inlined (it has sub-selects) and was planned anew on every call, about
-- 200 µs of each false alarm's 260.
CREATE FUNCTION credits._next_event(p_account text, p_period_end timestamptz, p_now timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN least(p_period_end,
                 (SELECT min(expires_at) FROM credits.buckets
                   WHERE account_id = p_account AND expires_at > p_now),
                 (SELECT min(expires_at) FROM credits.reservations
                   WHERE account_id = p_account AND status = 'pending'));
END
$$;

-- Locks an account row (the first lock of every write path), raising CR002
-- for an unknown account (or one the caller is not bound to), and brings it
-- up to the clock read after the lock.
CREATE FUNCTION credits._lock_account(p_account text) RETURNS credits.accounts
LANGUAGE plpgsql
AS $$
DECLARE
    a     credits.accounts;
    v_now timestamptz;
BEGIN
    IF NOT credits._may_touch(p_account) THEN
        PERFORM credits._unknown_account(p_account);
    END IF;
    SELECT * INTO a FROM credits.accounts WHERE account_id = p_account FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        PERFORM credits._unknown_account(p_account);
    END IF;
    v_now := credits._now();
    IF a.next_event <= v_now THEN
        PERFORM credits._housekeep(p_account, v_now);
        SELECT * INTO a FROM credits.accounts WHERE account_id = p_account;
    END IF;
    RETURN a;
END
$$;
