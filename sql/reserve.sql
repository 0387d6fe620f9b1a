-- credits_reserve: hold credits before an AI action.
--
-- Hot path: without an idempotency key, one UPDATE both takes the account
-- lock and adds the hold, guarded by the conditions under which nothing else
-- needs judging (no housekeeping due, no debt, not BYOK, enough in the live
-- buckets). Its WHERE clause is re-checked on the locked row's newest version
-- (and the clock re-read), so concurrent sessions cannot both pass. Anything
-- else takes the general path below.
CREATE FUNCTION public.credits_reserve(
    account_id      text,
    amount          numeric,
    product         text,
    action          text DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    ttl             interval DEFAULT '15 minutes',
    metadata        jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account  text    := credits._ident(credits_reserve.account_id, 'account_id', 255);
    v_amount   numeric := credits._amount(credits_reserve.amount, 'amount', false);
    v_product  text    := credits._ident(credits_reserve.product, 'product', 255);
    v_action   text    := CASE WHEN credits_reserve.action IS NULL THEN NULL
                               ELSE credits._ident(credits_reserve.action, 'action', 255) END;
    v_key      text    := CASE WHEN credits_reserve.idempotency_key IS NULL THEN NULL
                               ELSE credits._ident(credits_reserve.idempotency_key, 'idempotency_key', 255) END;
    v_ttl      interval := credits_reserve.ttl;
    v_metadata jsonb   := credits._metadata(credits_reserve.metadata);
    v_id       uuid    := gen_random_uuid();
    v_now      timestamptz := credits._now();
    v_period   timestamptz;
    v_request  jsonb;
    v_result   text;
    v_mode     text;
    v_soft     numeric;
    v_free     numeric;
    v_overage  numeric := 0;
    a          credits.accounts;
    d          record;
BEGIN
    PERFORM credits._required(v_ttl IS NULL, 'ttl');
    IF v_ttl <= interval '0' THEN
        PERFORM credits._raise('22023', 'ttl must be positive',
            format('ttl is %s.', v_ttl), 'Pass how long the hold may stay pending, such as ''15 minutes''.');
    END IF;

    IF v_key IS NULL THEN
        UPDATE credits.accounts
           SET held = held + v_amount, next_event = least(next_event, v_now + v_ttl)
         WHERE account_id = v_account AND balance - held >= v_amount AND debt = 0 AND NOT byok
           AND next_event > credits._now()
        RETURNING period_start INTO v_period;
        IF FOUND THEN
            SELECT * INTO d FROM credits._draw(v_account, v_amount, v_now, true);
            INSERT INTO credits.reservations (reservation_id, account_id, status, product, action, amount,
                                              draw_buckets, draw_amounts, period_start, expires_at, created_at, metadata)
            VALUES (v_id, v_account, 'pending', v_product, v_action, v_amount,
                    d.buckets, d.amounts, v_period, v_now + v_ttl, v_now, v_metadata);
            RETURN v_id;
        END IF;
    END IF;

    a := credits._lock_account(v_account);
    v_now := credits._now();
    v_request := jsonb_build_object('amount', v_amount, 'product', v_product, 'action', v_action,
                                    'ttl', extract(epoch FROM v_ttl), 'metadata', v_metadata);
    v_result := credits._idempotent_result(v_account, 'reserve', v_key, v_request);
    IF v_result IS NOT NULL THEN
        RETURN v_result::uuid;
    END IF;

    IF a.byok THEN
        -- Logged, never blocked, no balance effect.
        INSERT INTO credits.reservations (reservation_id, account_id, status, product, action, amount,
                                          draw_buckets, draw_amounts, byok, period_start, expires_at, created_at, metadata)
        VALUES (v_id, v_account, 'pending', v_product, v_action, v_amount,
                '{}', '{}', true, a.period_start, v_now + v_ttl, v_now, v_metadata);
        PERFORM credits._idempotent_store(v_account, 'reserve', v_key, v_request, v_id::text, v_now);
        RETURN v_id;
    END IF;
    IF a.debt > 0 THEN
        PERFORM credits._raise('CR008', format('account "%s" is in debt', v_account),
            format('The account owes %s credits from a forced commit.', a.debt),
            'Grant credits to pay the debt off (credits_grant), or wait for the next allocation.');
    END IF;

    v_free := a.balance - a.held;
    IF v_free < v_amount THEN
        SELECT coalesce(a.limit_mode, p.limit_mode), coalesce(a.soft_limit, p.soft_limit)
          INTO v_mode, v_soft
          FROM credits.plans p WHERE p.plan_id = a.plan_id;
        v_overage := v_amount - v_free;
        IF v_mode <> 'soft' OR a.period_overage + a.overage_held + v_overage > v_soft THEN
            PERFORM credits._raise('CR001',
                format('insufficient credits for account "%s"', v_account),
                format('needs %s, available %s', trim_scale(v_amount),
                       trim_scale(v_free + CASE WHEN v_mode = 'soft'
                                     THEN greatest(v_soft - a.period_overage - a.overage_held, 0) ELSE 0 END)),
                format('top up, or wait for the reset on %s', to_char(a.period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD')));
        END IF;
    END IF;

    SELECT * INTO d FROM credits._draw(v_account, v_amount - v_overage, v_now, true);
    UPDATE credits.accounts
       SET held = held + d.total, overage_held = overage_held + v_overage,
           next_event = least(next_event, v_now + v_ttl)
     WHERE account_id = v_account;
    INSERT INTO credits.reservations (reservation_id, account_id, status, product, action, amount,
                                      draw_buckets, draw_amounts, overage, period_start, expires_at, created_at, metadata)
    VALUES (v_id, v_account, 'pending', v_product, v_action, v_amount,
            d.buckets, d.amounts, v_overage, a.period_start, v_now + v_ttl, v_now, v_metadata);
    PERFORM credits._idempotent_store(v_account, 'reserve', v_key, v_request, v_id::text, v_now);
    RETURN v_id;
END
$$;

-- The account a reservation belongs to, for commit and refund: CR004 when
-- there is no such reservation, CR007 when the caller names another account.
CREATE FUNCTION credits._reservation_account(p_reservation uuid, p_account text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_account text;
BEGIN
    PERFORM credits._required(p_reservation IS NULL, 'reservation_id');
    SELECT account_id INTO v_account FROM credits.reservations WHERE reservation_id = p_reservation;
    IF NOT FOUND THEN
        PERFORM credits._raise('CR004', format('unknown reservation %s', p_reservation),
            'No reservation has this id.',
            'Pass the uuid that credits_reserve() returned.');
    END IF;
    IF p_account IS NOT NULL AND p_account <> v_account THEN
        PERFORM credits._raise('CR007',
            format('reservation %s does not belong to account "%s"', p_reservation, p_account),
            'The account_id given does not match the reservation''s account.',
            'Pass the account the reservation was made for, or leave account_id out.');
    END IF;
    RETURN v_account;
END
$$;
