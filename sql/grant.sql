-- Granting credits: top-ups, packs, promotional credits and adjustments.
CREATE FUNCTION public.credits_grant(
    account_id      text,
    amount          numeric,
    kind            text DEFAULT 'topup',
    expires_at      timestamptz DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    metadata        jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account  text    := credits._ident(credits_grant.account_id, 'account_id', 255);
    v_amount   numeric := credits._amount(credits_grant.amount, 'amount', false);
    v_kind     text    := credits._choice(credits_grant.kind, 'kind', '{topup,pack,promo,adjustment}');
    v_expires  timestamptz := credits_grant.expires_at;
    v_key      text := CASE WHEN credits_grant.idempotency_key IS NULL THEN NULL
                            ELSE credits._ident(credits_grant.idempotency_key, 'idempotency_key', 255) END;
    v_metadata jsonb := credits._metadata(credits_grant.metadata);
    v_request  jsonb;
    v_result   text;
    v_now      timestamptz;
    a          credits.accounts;
    nb         record;
BEGIN
    IF v_expires IS NOT NULL AND v_kind <> 'promo' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('expires_at is only for promo grants, not %s', v_kind),
            DETAIL = 'Top-ups expire at the next reset; packs and adjustments never expire.',
            HINT = 'Leave expires_at out, or grant kind => ''promo''.';
    END IF;
    v_request := jsonb_build_object('amount', v_amount, 'kind', v_kind, 'expires_at', v_expires, 'metadata', v_metadata);
    a := credits._lock_account(v_account);
    v_now := credits._now();
    v_result := credits._idempotent_result(v_account, 'grant', v_key, v_request);
    IF v_result IS NOT NULL THEN
        RETURN v_result::uuid;
    END IF;
    IF a.byok THEN
        RAISE EXCEPTION USING ERRCODE = 'CR014',
            MESSAGE = format('account "%s" is BYOK', v_account),
            DETAIL = 'BYOK accounts bring their own keys: they have no allocation and no buckets.',
            HINT = 'Switch the account off BYOK with credits_account_upsert(byok => false) to give it credits.';
    END IF;
    IF v_kind = 'topup' OR (v_kind = 'promo' AND v_expires IS NULL) THEN
        v_expires := a.period_end;
    ELSIF v_kind = 'promo' AND (NOT isfinite(v_expires) OR v_expires <= v_now) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'expires_at must be a finite time in the future',
            DETAIL = format('expires_at is %s, now is %s.', v_expires, v_now),
            HINT = 'Pass a later expires_at, or leave it out to expire at the next reset.';
    ELSIF v_kind = 'promo' AND extract(year FROM v_expires AT TIME ZONE 'UTC') >= 10000 THEN
        -- The reset planner reads bucket expiries back as ISO 8601 text,
        -- four-digit years: a bucket expiring in year 10000 or later left
        -- its account unable to roll forward (0.3.5).
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'expires_at must be before the year 10000',
            DETAIL = format('expires_at is %s.', v_expires),
            HINT = 'Pass an expiry before 10000-01-01, or grant kind => ''pack'' for credits that never expire.';
    END IF;

    PERFORM credits._room_check(v_account, v_amount, v_kind IN ('pack', 'adjustment') OR v_expires > a.period_end);
    SELECT * INTO nb FROM credits._new_bucket(v_account, v_kind, v_amount, v_expires, v_now, a.debt, v_key, v_metadata);
    UPDATE credits.accounts
       SET balance = balance + v_amount - nb.settled, debt = debt - nb.settled,
           next_event = least(next_event, v_expires)
     WHERE account_id = v_account;
    PERFORM credits._idempotent_store(v_account, 'grant', v_key, v_request, nb.bucket_id::text, v_now);
    RETURN nb.bucket_id;
END
$$;
