-- Housekeeping that write paths run on an account they have locked, when its
-- next_event (the earliest period end, bucket expiry or hold expiry; a lower
-- bound) has come: holds past their ttl are released, periods are rolled in
-- order (rollover, expiry, new allocation), expired buckets are written off.
-- Every step is a ledger row dated when it logically happened.

-- A new bucket and its grant row; new credit first pays off any debt.
CREATE FUNCTION credits._new_bucket(
    p_account text, p_kind text, p_amount numeric, p_expires_at timestamptz,
    p_at timestamptz, p_debt numeric, p_key text DEFAULT NULL, p_metadata jsonb DEFAULT '{}',
    p_ledger_kind text DEFAULT NULL, p_reservation uuid DEFAULT NULL,
    OUT bucket_id uuid, OUT settled numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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
SET search_path = pg_catalog, pg_temp
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

-- Writes off the free part of every bucket that expired by p_at.
CREATE FUNCTION credits._expire_buckets(p_account text, p_at timestamptz) RETURNS numeric
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH due AS (
        SELECT bucket_id, balance - held AS free, expires_at
          FROM credits.buckets
         WHERE account_id = p_account AND expires_at <= p_at AND balance > held
         ORDER BY priority, expires_at, created_at, bucket_id
    ), written AS (
        UPDATE credits.buckets b SET balance = b.held
          FROM due
         WHERE b.account_id = p_account AND b.bucket_id = due.bucket_id
        RETURNING due.bucket_id, due.free, due.expires_at
    ), logged AS (
        INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, actor, created_at)
        SELECT p_account, 'expire', -free, bucket_id, credits._actor(), expires_at FROM written
        RETURNING amount
    )
    SELECT coalesce(-sum(amount), 0) FROM logged
$$;

-- Brings a locked account up to p_now. Events are applied in time order:
-- holds that expired before a period boundary are released before the
-- period rolls, so a late run gives exactly what on-time runs would have.
CREATE FUNCTION credits._housekeep(p_account text, p_now timestamptz) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a          credits.accounts;
    p          credits.plans;
    r          record;
    rel        record;
    nb         record;
    v_boundary timestamptz;
    v_carry    numeric;
BEGIN
    SELECT * INTO a FROM credits.accounts WHERE account_id = p_account;
    SELECT * INTO p FROM credits.plans WHERE plan_id = a.plan_id;
    LOOP
        FOR r IN
            SELECT reservation_id, draw_buckets, draw_amounts, overage, expires_at
              FROM credits.reservations
             WHERE account_id = p_account AND status = 'pending'
               AND expires_at <= least(a.period_end, p_now)
             ORDER BY expires_at, reservation_id
        LOOP
            SELECT * INTO rel FROM credits._release_draws(p_account, r.reservation_id, r.draw_buckets, r.draw_amounts, r.expires_at);
            a.held := a.held - rel.released;
            a.balance := a.balance - rel.written_off;
            a.overage_held := a.overage_held - r.overage;
            UPDATE credits.reservations SET status = 'expired', resolved_at = r.expires_at
             WHERE reservation_id = r.reservation_id AND account_id = p_account;
            INSERT INTO credits.ledger (account_id, kind, amount, reservation_id, actor, created_at)
            VALUES (p_account, 'hold_expired', 0, r.reservation_id, credits._actor(), r.expires_at);
        END LOOP;
        EXIT WHEN a.period_end > p_now;

        -- Roll the period at its boundary.
        v_boundary := a.period_end;
        SELECT least(coalesce(sum(balance - held), 0), p.rollover_cap) INTO v_carry
          FROM credits.buckets
         WHERE account_id = p_account AND kind IN ('allocation', 'rollover') AND expires_at <= v_boundary;
        a.balance := a.balance - credits._expire_buckets(p_account, v_boundary);
        a.period_start := v_boundary;
        a.period_end := credits._period_after(a.billing_anchor, p.reset, v_boundary);
        a.period_used := 0;
        a.period_overage := 0;
        IF v_carry > 0 AND NOT a.byok THEN
            SELECT * INTO nb FROM credits._new_bucket(p_account, 'rollover', v_carry, a.period_end, v_boundary, a.debt);
            a.balance := a.balance + v_carry - nb.settled;
            a.debt := a.debt - nb.settled;
        END IF;
        IF p.allocation > 0 AND NOT a.byok THEN
            SELECT * INTO nb FROM credits._new_bucket(p_account, 'allocation', p.allocation, a.period_end, v_boundary, a.debt);
            a.balance := a.balance + p.allocation - nb.settled;
            a.debt := a.debt - nb.settled;
        END IF;
    END LOOP;
    a.balance := a.balance - credits._expire_buckets(p_account, p_now);

    UPDATE credits.accounts
       SET balance = a.balance, held = a.held, overage_held = a.overage_held,
           period_start = a.period_start, period_end = a.period_end,
           period_used = a.period_used, period_overage = a.period_overage, debt = a.debt,
           next_event = credits._next_event(p_account, a.period_end, p_now)
     WHERE account_id = p_account;
END
$$;

-- The earliest moment something changes by itself: the period end, a live
-- bucket's expiry or a pending hold's expiry.
CREATE FUNCTION credits._next_event(p_account text, p_period_end timestamptz, p_now timestamptz)
RETURNS timestamptz
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT least(p_period_end,
                 (SELECT min(expires_at) FROM credits.buckets
                   WHERE account_id = p_account AND expires_at > p_now AND balance > held),
                 (SELECT min(expires_at) FROM credits.reservations
                   WHERE account_id = p_account AND status = 'pending'))
$$;

-- Locks an account row (the first lock of every write path), raising CR002
-- for an unknown account, and brings it up to the clock read after the lock.
CREATE FUNCTION credits._lock_account(p_account text) RETURNS credits.accounts
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a     credits.accounts;
    v_now timestamptz;
BEGIN
    SELECT * INTO a FROM credits.accounts WHERE account_id = p_account FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        PERFORM credits._raise('CR002',
            format('unknown account "%s"', p_account),
            'No credits account has this account_id.',
            'Create it first with credits_account_upsert(account_id => ..., plan_id => ...).');
    END IF;
    v_now := credits._now();
    IF a.next_event <= v_now THEN
        PERFORM credits._housekeep(p_account, v_now);
        SELECT * INTO a FROM credits.accounts WHERE account_id = p_account;
    END IF;
    RETURN a;
END
$$;
