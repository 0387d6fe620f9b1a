-- credits_commit: charge a reservation once the AI action has run.
-- amount <= reserved charges that and releases the rest (0 releases it all);
-- more than reserved charges the excess as new usage, all or nothing, or as
-- debt with force. A hold that expired is judged as new usage the same way.
-- credits_commit is a SQL function that Postgres inlines into the caller's
-- query: it tries the Rust fast path (credits._commit_fast,
-- src/fast_commit.rs), which handles the common case (a pending hold on one
-- bucket, charged at most what was reserved) in two statements and returns
-- NULL, having written nothing, for anything else; then the general path
-- (credits._commit) judges the call and raises the documented errors.
-- Its settings are those of credits._reserve_fast (sql/reserve.sql).

CREATE FUNCTION credits._commit_fast(
    reservation_id uuid,
    amount         numeric,
    force          boolean,
    account_id     text)
RETURNS numeric
LANGUAGE c
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS 'MODULE_PATHNAME', 'credits_commit_fast';

CREATE FUNCTION credits._commit(
    reservation_id uuid,
    amount         numeric,
    force          boolean,
    account_id     text)
RETURNS numeric
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_id       uuid    := _commit.reservation_id;
    v_amount   numeric := _commit.amount;
    v_account  text    := _commit.account_id;
    v_now      timestamptz;
    v_charge   numeric;
    v_left     numeric;
    v_take     numeric;
    v_buckets  uuid[]    := '{}';
    v_amounts  numeric[] := '{}';
    v_charged  numeric := 0;   -- taken from bucket balances
    v_released numeric := 0;   -- hold given back to buckets
    v_overage  numeric := 0;
    v_debt     numeric := 0;
    v_ov_held  numeric := 0;
    v_mode     text;
    v_soft     numeric;
    v_rate     numeric;
    v_free_after     numeric;
    v_recharge_below numeric;
    v_next_alert     numeric;
    v_usage          numeric;
    a          credits.accounts;
    r          credits.reservations;
    d          record;
BEGIN
    IF v_amount IS NOT NULL AND NOT (v_amount >= 0 AND v_amount < 1e14 AND scale(v_amount) <= 6) THEN
        v_amount := credits._amount(v_amount, 'amount', true);
    END IF;
    IF _commit.force IS NULL THEN
        PERFORM credits._required(true, 'force');
    END IF;
    IF v_account IS NOT NULL AND (length(v_account) NOT BETWEEN 1 AND 255 OR btrim(v_account) = '') THEN
        PERFORM credits._ident(v_account, 'account_id', 255);
    END IF;
    -- Lock the reservation's account first (the reservation is only read
    -- after the lock, so its state is the latest).
    SELECT * INTO a FROM credits.accounts
     WHERE account_id = (SELECT x.account_id FROM credits.reservations x WHERE x.reservation_id = v_id)
       FOR NO KEY UPDATE;
    IF NOT FOUND OR a.account_id <> coalesce(v_account, a.account_id) OR NOT credits._may_touch(a.account_id) THEN
        PERFORM credits._reservation_account(v_id, v_account);
    END IF;
    v_account := a.account_id;
    v_now := credits._now();
    IF a.next_event <= v_now THEN
        PERFORM credits._housekeep(v_account, v_now);
        SELECT * INTO a FROM credits.accounts WHERE account_id = v_account;
    END IF;
    SELECT * INTO r FROM credits.reservations WHERE reservation_id = v_id AND account_id = v_account;
    v_charge := coalesce(v_amount, r.amount);

    IF r.status = 'committed' AND r.refunded = 0 AND r.charged = v_charge THEN
        RETURN trim_scale(r.charged);
    ELSIF r.status = 'committed' AND r.refunded = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'CR011',
            MESSAGE = format('reservation %s was already committed with another amount', v_id),
            DETAIL = format('It was committed for %s; this call asks for %s.', trim_scale(r.charged), trim_scale(v_charge)),
            HINT = 'Repeat the commit with the same amount, or refund the difference with credits_refund().';
    ELSIF r.status IN ('committed', 'released') THEN
        RAISE EXCEPTION USING ERRCODE = 'CR005',
            MESSAGE = format('reservation %s is not pending', v_id),
            DETAIL = format('It is %s.', CASE WHEN r.status = 'committed' THEN 'committed and refunded' ELSE r.status END),
            HINT = 'Only a pending (or expired) reservation can be committed; reserve again for a new action.';
    END IF;

    IF r.byok THEN
        UPDATE credits.reservations
           SET status = 'committed', charged = v_charge, period_start = a.period_start, resolved_at = v_now
         WHERE reservation_id = v_id AND account_id = v_account;
        PERFORM credits._rollup(v_account, v_now, r.product, 0, 0, 0, 0, 0, 1, v_charge);
        RETURN trim_scale(v_charge);
    END IF;

    IF r.status = 'pending' AND v_charge <= r.amount THEN
        IF r.overage > 0 THEN
            SELECT p.overage_rate INTO v_rate FROM credits.plans p WHERE p.plan_id = a.plan_id;
        END IF;
        -- The common case in one statement: charge the draws in order, give
        -- back the rest of each (written off if its bucket expired since),
        -- write the ledger rows, and update the account and the reservation.
        WITH draws AS (
            SELECT u.bucket_id, u.amount, u.n,
                   greatest(least(u.amount, v_charge - coalesce(sum(u.amount) OVER (ORDER BY u.n ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)), 0) AS take
              FROM unnest(r.draw_buckets, r.draw_amounts) WITH ORDINALITY AS u(bucket_id, amount, n)
        ), changed AS (
            UPDATE credits.buckets b
               SET held = b.held - d.amount,
                   balance = b.balance - d.take - CASE WHEN b.expires_at <= v_now THEN d.amount - d.take ELSE 0 END
              FROM draws d
             WHERE b.account_id = v_account AND b.bucket_id = d.bucket_id
            RETURNING d.bucket_id, d.n, d.amount, d.take,
                      CASE WHEN b.expires_at <= v_now THEN d.amount - d.take ELSE 0 END AS written
        ), totals AS (
            SELECT coalesce(sum(take), 0) AS charged, coalesce(sum(amount), 0) AS released,
                   coalesce(sum(written), 0) AS written,
                   coalesce(array_agg(bucket_id ORDER BY n) FILTER (WHERE take > 0), '{}') AS buckets,
                   coalesce(array_agg(take ORDER BY n) FILTER (WHERE take > 0), '{}') AS amounts
              FROM changed
        ), ledger AS (
            INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, reservation_id, product, action, rate, actor, created_at)
            SELECT v_account, x.kind, x.amount, x.bucket_id, v_id, x.product, x.action,
                   CASE WHEN x.kind = 'overage' THEN v_rate END, credits._actor(), v_now
              FROM (SELECT 'charge' AS kind, -c.take AS amount, c.bucket_id, r.product, r.action, c.n, 0 AS o
                      FROM changed c WHERE c.take > 0
                    UNION ALL
                    SELECT 'expire', -c.written, c.bucket_id, NULL, NULL, c.n, 1 FROM changed c WHERE c.written > 0
                    UNION ALL
                    SELECT 'overage', -(v_charge - t.charged), NULL, r.product, r.action, 0, 2
                      FROM totals t WHERE v_charge > t.charged) x
             ORDER BY x.o, x.n
        ), rollup AS (
            INSERT INTO credits.usage_rollup AS u (account_id, day, product, used, overage, billable_overage, actions)
            SELECT v_account, (v_now AT TIME ZONE 'UTC')::date, r.product, t.charged, v_charge - t.charged,
                   coalesce((v_charge - t.charged) * v_rate, 0), 1
              FROM totals t
            ON CONFLICT (account_id, day, product) DO UPDATE
               SET used = u.used + EXCLUDED.used, overage = u.overage + EXCLUDED.overage,
                   billable_overage = u.billable_overage + EXCLUDED.billable_overage, actions = u.actions + 1
        ), account AS (
            UPDATE credits.accounts
               SET held = held - t.released, balance = balance - t.charged - t.written,
                   overage_held = overage_held - r.overage,
                   period_overage = period_overage + (v_charge - t.charged),
                   period_used = period_used + t.charged
              FROM totals t
             WHERE account_id = v_account
            RETURNING balance AS free, recharge_below, next_alert_at, period_used + period_overage AS usage
        )
        UPDATE credits.reservations
           SET status = 'committed', charged = v_charge, draw_buckets = t.buckets, draw_amounts = t.amounts,
               overage = v_charge - t.charged,
               overage_rate = CASE WHEN v_charge > t.charged THEN v_rate END,
               period_start = a.period_start, resolved_at = v_now
          FROM totals t, account ac
         WHERE reservation_id = v_id AND account_id = v_account
        RETURNING ac.free, ac.recharge_below, ac.next_alert_at, ac.usage
             INTO v_free_after, v_recharge_below, v_next_alert, v_usage;
        IF v_usage >= v_next_alert
           OR (v_free_after < v_recharge_below AND a.balance >= v_recharge_below) THEN
            PERFORM credits._after_usage(v_account, a.balance, v_now);
        END IF;
        RETURN trim_scale(v_charge);
    END IF;

    v_left := v_charge;
    IF r.status = 'pending' THEN
        -- A commit of more than the hold (the statement above took every
        -- commit within it): each draw is charged whole, in order, even
        -- from a bucket that expired meanwhile (nothing of the hold is left
        -- to give back or write off), then the overage held; the excess is
        -- judged below as new usage.
        FOR d IN
            SELECT u.bucket_id, u.amount
              FROM unnest(r.draw_buckets, r.draw_amounts) WITH ORDINALITY AS u(bucket_id, amount, n)
             ORDER BY u.n
        LOOP
            UPDATE credits.buckets SET held = held - d.amount, balance = balance - d.amount
             WHERE account_id = v_account AND bucket_id = d.bucket_id;
            v_buckets := v_buckets || d.bucket_id;
            v_amounts := v_amounts || d.amount;
            v_left := v_left - d.amount;
            v_charged := v_charged + d.amount;
            v_released := v_released + d.amount;
        END LOOP;
        v_overage := r.overage;
        v_left := v_left - v_overage;
        v_ov_held := r.overage;
    END IF;

    IF v_left > 0 THEN
        -- Beyond the hold: new usage, judged now.
        SELECT * INTO d FROM credits._draw(v_account, v_left, v_now, false);
        v_buckets := v_buckets || d.buckets;
        v_amounts := v_amounts || d.amounts;
        v_charged := v_charged + d.total;
        v_left := v_left - d.total;
        IF v_left > 0 THEN
            SELECT l.mode, l.soft INTO v_mode, v_soft FROM credits._limit(a, v_now) l;
            v_take := CASE WHEN v_mode = 'soft'
                           THEN least(v_left, greatest(v_soft - a.period_overage - a.overage_held - v_overage + v_ov_held, 0))
                           ELSE 0 END;
            v_overage := v_overage + v_take;
            v_left := v_left - v_take;
            IF v_left > 0 AND NOT _commit.force THEN
                RAISE EXCEPTION USING ERRCODE = 'CR001',
                    MESSAGE = format('insufficient credits for account "%s"', v_account),
                    DETAIL = format('It needs %s; the account has %s available for it.',
                                    trim_scale(v_charge), trim_scale(v_charge - v_left)),
                    HINT = format('Commit at most %s, pass force => true to record the excess as debt, or top up first.',
                                  trim_scale(v_charge - v_left));
            END IF;
            v_debt := v_left;
        END IF;
    END IF;

    INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, reservation_id, product, action, actor, created_at)
    SELECT v_account, 'charge', -u.amount, u.bucket_id, v_id, r.product, r.action, credits._actor(), v_now
      FROM unnest(v_buckets, v_amounts) AS u(bucket_id, amount);
    IF v_overage > 0 THEN
        SELECT overage_rate INTO v_rate FROM credits.plans WHERE plan_id = a.plan_id;
        INSERT INTO credits.ledger (account_id, kind, amount, reservation_id, product, action, rate, actor, created_at)
        VALUES (v_account, 'overage', -v_overage, v_id, r.product, r.action, v_rate, credits._actor(), v_now);
    END IF;
    IF v_debt > 0 THEN
        INSERT INTO credits.ledger (account_id, kind, amount, reservation_id, product, action, actor, created_at)
        VALUES (v_account, 'debt', -v_debt, v_id, r.product, r.action, credits._actor(), v_now);
    END IF;

    PERFORM credits._rollup(v_account, v_now, r.product, v_charged + v_debt, v_overage, 0, 0,
                            coalesce(v_overage * v_rate, 0), 1, 0);
    UPDATE credits.accounts
       SET held = held - v_released, balance = balance - v_charged,
           overage_held = overage_held - v_ov_held, period_overage = period_overage + v_overage,
           period_used = period_used + v_charged + v_debt, debt = debt + v_debt
     WHERE account_id = v_account
    RETURNING balance, recharge_below, next_alert_at, period_used + period_overage
         INTO v_free_after, v_recharge_below, v_next_alert, v_usage;
    IF v_usage >= v_next_alert
       OR (v_free_after < v_recharge_below AND a.balance >= v_recharge_below) THEN
        PERFORM credits._after_usage(v_account, a.balance, v_now);
    END IF;
    UPDATE credits.reservations
       SET status = 'committed', charged = v_charge, draw_buckets = v_buckets, draw_amounts = v_amounts,
           overage = v_overage, overage_rate = v_rate, debt = v_debt, period_start = a.period_start,
           resolved_at = v_now
     WHERE reservation_id = v_id AND account_id = v_account;
    RETURN trim_scale(v_charge);
END
$$;

CREATE FUNCTION public.credits_commit(
    reservation_id uuid,
    amount         numeric DEFAULT NULL,
    force          boolean DEFAULT false,
    account_id     text DEFAULT NULL)
RETURNS numeric
LANGUAGE sql
VOLATILE
AS $$
    SELECT coalesce(credits._commit_fast($1, $2, $3, $4), credits._commit($1, $2, $3, $4))
$$;
