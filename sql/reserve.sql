-- credits_reserve: hold credits before an AI action.
--
-- credits_reserve is a SQL function that Postgres inlines into the caller's
-- query: it tries the Rust fast path (credits._reserve_fast,
-- src/fast_reserve.rs), which handles the common case in two statements and
-- returns NULL, having written nothing, for anything else; then the general
-- path below (credits._reserve) judges the call and raises the documented
-- errors. Both are SECURITY DEFINER with a pinned search_path; the wrapper
-- itself only names them, schema-qualified.
--
-- The fast paths (this one and credits._commit_fast) keep their statements'
-- plans for the session's life, made under two settings of their own, which
-- hold for everything they run: enable_seqscan = off, because a plan made
-- with the statistics of tables analyzed while empty would scan them
-- sequentially until autovacuum analyzed them again, and every statement
-- here finds its rows by key (pgTAP 14_kept_plans.sql); and plan_cache_mode
-- = force_generic_plan, so that each statement is planned once per session,
-- not again for each of its first five executions (custom plans) before the
-- plan cache settles on the generic plan (README, Profile: a new
-- connection's first actions).

CREATE FUNCTION credits._reserve_fast(
    account_id      text,
    amount          numeric,
    product         text,
    action          text,
    idempotency_key text,
    ttl             interval,
    metadata        jsonb)
RETURNS uuid
LANGUAGE c
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS 'MODULE_PATHNAME', 'credits_reserve_fast';

-- The general path: every case, with its errors. It locks the account
-- first (rolling it forward when something is due), then judges the call.
CREATE FUNCTION credits._reserve(
    account_id      text,
    amount          numeric,
    product         text,
    action          text,
    idempotency_key text,
    ttl             interval,
    metadata        jsonb)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account  text     := _reserve.account_id;
    v_amount   numeric  := _reserve.amount;
    v_product  text     := _reserve.product;
    v_action   text     := _reserve.action;
    v_key      text     := _reserve.idempotency_key;
    v_ttl      interval := _reserve.ttl;
    v_metadata jsonb    := _reserve.metadata;
    v_id       uuid     := gen_random_uuid();
    v_now      timestamptz := credits._now();
    v_request  jsonb;
    v_result   text;
    v_mode     text;
    v_soft     numeric;
    v_free     numeric;
    v_overage  numeric := 0;
    v_allowed  boolean;
    a          credits.accounts;
    d          record;
BEGIN
    -- Cheap checks first; the validators raise the precise error.
    IF v_account IS NULL OR length(v_account) NOT BETWEEN 1 AND 255 OR btrim(v_account) = '' THEN
        PERFORM credits._ident(v_account, 'account_id', 255);
    END IF;
    IF v_amount IS NULL OR NOT (v_amount > 0 AND v_amount < 1e14 AND scale(v_amount) <= 6) THEN
        v_amount := credits._amount(v_amount, 'amount', false);
    END IF;
    IF v_product IS NULL OR length(v_product) NOT BETWEEN 1 AND 255 OR btrim(v_product) = '' THEN
        PERFORM credits._ident(v_product, 'product', 255);
    END IF;
    IF v_action IS NOT NULL AND (length(v_action) NOT BETWEEN 1 AND 255 OR btrim(v_action) = '') THEN
        PERFORM credits._ident(v_action, 'action', 255);
    END IF;
    IF v_key IS NOT NULL AND (length(v_key) NOT BETWEEN 1 AND 255 OR btrim(v_key) = '') THEN
        PERFORM credits._ident(v_key, 'idempotency_key', 255);
    END IF;
    IF v_ttl IS NULL OR v_ttl <= interval '0' THEN
        PERFORM credits._required(v_ttl IS NULL, 'ttl');
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'ttl must be positive',
            DETAIL = format('ttl is %s.', v_ttl),
            HINT = 'Pass how long the hold may stay pending, such as ''15 minutes''.';
    END IF;
    -- A hold must end before the year 10000, as a promo grant must (and
    -- now + ttl must not overflow timestamptz: 22008 without a word of why).
    IF v_ttl >= interval '10000 years' OR extract(year FROM (v_now + v_ttl) AT TIME ZONE 'UTC') >= 10000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'ttl must end before the year 10000',
            DETAIL = format('ttl is %s, now is %s.', v_ttl, v_now),
            HINT = 'Pass how long the hold may stay pending, such as ''15 minutes''.';
    END IF;
    IF v_metadata IS NULL OR jsonb_typeof(v_metadata) <> 'object' THEN
        v_metadata := credits._metadata(v_metadata);
    END IF;

    IF NOT credits._may_touch(v_account) THEN
        PERFORM credits._unknown_account(v_account);
    END IF;
    a := credits._lock_account(v_account);
    v_now := credits._now();
    v_request := jsonb_build_object('amount', v_amount, 'product', v_product, 'action', v_action,
                                    'ttl', extract(epoch FROM v_ttl), 'metadata', v_metadata);
    v_result := credits._idempotent_result(v_account, 'reserve', v_key, v_request);
    IF v_result IS NOT NULL THEN
        RETURN v_result::uuid;
    END IF;
    -- Products are registered on first use and may be disabled (after the
    -- key's look-up: a replay returns its first result, also once the
    -- product has been disabled since).
    SELECT p.enabled AND coalesce(ap.enabled, true) INTO v_allowed
      FROM credits.products p
      LEFT JOIN credits.account_products ap ON ap.account_id = v_account AND ap.product = p.product
     WHERE p.product = v_product;
    IF v_allowed IS NOT TRUE THEN
        PERFORM credits._product_allowed(v_account, v_product, v_now);
    END IF;

    IF a.byok THEN
        -- Logged, never blocked, no balance effect.
        INSERT INTO credits.reservations (reservation_id, account_id, status, product, action, amount,
                                          draw_buckets, draw_amounts, byok, period_start, expires_at, created_at, metadata)
        VALUES (v_id, v_account, 'pending', v_product, v_action, v_amount,
                '{}', '{}', true, a.period_start, v_now + v_ttl, v_now, v_metadata);
        -- Its expiry is an event of the account, as any hold's is.
        UPDATE credits.accounts SET next_event = v_now + v_ttl
         WHERE account_id = v_account AND next_event > v_now + v_ttl;
        PERFORM credits._idempotent_store(v_account, 'reserve', v_key, v_request, v_id::text, v_now);
        RETURN v_id;
    END IF;
    IF a.debt > 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'CR008',
            MESSAGE = format('account "%s" is in debt', v_account),
            DETAIL = format('The account owes %s credits from a forced commit.', trim_scale(a.debt)),
            HINT = 'Grant credits to pay the debt off (credits_grant), or wait for the next allocation.';
    END IF;

    v_free := a.balance - a.held;
    IF v_free < v_amount THEN
        SELECT l.mode, l.soft INTO v_mode, v_soft FROM credits._limit(a, v_now) l;
        v_overage := v_amount - v_free;
        IF v_mode <> 'soft' OR a.period_overage + a.overage_held + v_overage > v_soft THEN
            RAISE EXCEPTION USING ERRCODE = 'CR001',
                MESSAGE = format('insufficient credits for account "%s"', v_account),
                DETAIL = format('It needs %s; the account has %s available.', trim_scale(v_amount),
                                trim_scale(v_free + CASE WHEN v_mode = 'soft'
                                              THEN greatest(v_soft - a.period_overage - a.overage_held, 0) ELSE 0 END)),
                HINT = format('Top up, or wait for the reset on %s.', to_char(a.period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD'));
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

CREATE FUNCTION public.credits_reserve(
    account_id      text,
    amount          numeric,
    product         text,
    action          text DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    ttl             interval DEFAULT '15 minutes',
    metadata        jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE sql
VOLATILE
AS $$
    SELECT coalesce(credits._reserve_fast($1, $2, $3, $4, $5, $6, $7),
                    credits._reserve($1, $2, $3, $4, $5, $6, $7))
$$;

-- The account a reservation belongs to, for commit and refund: CR004 when
-- there is no such reservation or the caller may not reach its account,
-- CR007 when the caller names another account.
CREATE FUNCTION credits._reservation_account(p_reservation uuid, p_account text) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_account text;
BEGIN
    PERFORM credits._required(p_reservation IS NULL, 'reservation_id');
    SELECT account_id INTO v_account FROM credits.reservations WHERE reservation_id = p_reservation;
    IF NOT FOUND OR NOT credits._may_touch(v_account) THEN
        RAISE EXCEPTION USING ERRCODE = 'CR004',
            MESSAGE = format('unknown reservation %s', p_reservation),
            DETAIL = 'No reservation has this id (among the accounts this role may reach).',
            HINT = 'Pass the uuid that credits_reserve() returned.';
    END IF;
    IF p_account IS NOT NULL AND p_account <> v_account THEN
        RAISE EXCEPTION USING ERRCODE = 'CR007',
            MESSAGE = format('reservation %s does not belong to account "%s"', p_reservation, p_account),
            DETAIL = 'The account_id given does not match the reservation''s account.',
            HINT = 'Pass the account the reservation was made for, or leave account_id out.';
    END IF;
    RETURN v_account;
END
$$;
