-- Credit packs, purchases and auto-recharge. A purchase is a pack bucket
-- (never expires, used after the allocation, top-ups and promos),
-- idempotent on the payment reference, refused (CR010) when the account's
-- plan does not allow purchases, unless it completes a recharge request
-- made while it did. Auto-recharge writes a recharge request
-- (and a recharge_requested event) when the account's balance is below its
-- threshold (credits._auto_recharge, below, says when it looks), one at a
-- time, within a monthly spending cap; the application's payment worker
-- completes it with credits_purchase(payment_ref => the request id) or
-- fails it with credits_recharge_fail().

CREATE TABLE credits.packs (
    pack_id    text PRIMARY KEY,
    credits    numeric(20,6) NOT NULL CHECK (credits > 0),
    price      numeric(20,6) NOT NULL CHECK (price >= 0),
    currency   text NOT NULL,
    active     boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL
);
CREATE TABLE credits.purchases (
    account_id    text NOT NULL,
    purchase_id   uuid NOT NULL DEFAULT gen_random_uuid(),
    pack_id       text NOT NULL,
    credits       numeric(20,6) NOT NULL,
    price         numeric(20,6) NOT NULL,
    currency      text NOT NULL,
    payment_ref   text NOT NULL,
    bucket_id     uuid NOT NULL,
    auto_recharge boolean NOT NULL,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (account_id, purchase_id),
    UNIQUE (account_id, payment_ref)
);
CREATE TABLE credits.auto_recharge (
    account_id  text PRIMARY KEY REFERENCES credits.accounts (account_id),
    enabled     boolean NOT NULL,
    pack_id     text NOT NULL REFERENCES credits.packs (pack_id),
    threshold   numeric(20,6) NOT NULL,
    monthly_cap numeric(20,6) NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE TABLE credits.recharge_requests (
    account_id  text NOT NULL,
    request_id  uuid NOT NULL DEFAULT gen_random_uuid(),
    pack_id     text NOT NULL,
    credits     numeric(20,6) NOT NULL,
    price       numeric(20,6) NOT NULL,
    currency    text NOT NULL,
    status      text NOT NULL,
    reason      text,
    created_at  timestamptz NOT NULL,
    resolved_at timestamptz,
    PRIMARY KEY (account_id, request_id)
);
CREATE INDEX recharge_requests_by_id ON credits.recharge_requests (request_id);
SELECT pg_catalog.pg_extension_config_dump('credits.packs', '');
SELECT pg_catalog.pg_extension_config_dump('credits.purchases', '');
SELECT pg_catalog.pg_extension_config_dump('credits.auto_recharge', '');
SELECT pg_catalog.pg_extension_config_dump('credits.recharge_requests', '');
COMMENT ON TABLE credits.packs IS 'Credit packs for sale: credits, price and currency.';
COMMENT ON TABLE credits.purchases IS 'Purchased packs, one per payment reference and account.';
COMMENT ON TABLE credits.auto_recharge IS 'Auto-recharge per account: pack, threshold and monthly spending cap.';
COMMENT ON TABLE credits.recharge_requests IS 'Recharge requests written by auto-recharge: pending, completed or failed.';
COMMENT ON COLUMN credits.packs.pack_id IS 'The pack''s name.';
COMMENT ON COLUMN credits.packs.credits IS 'Credits a purchase of the pack grants (a pack bucket, never expiring).';
COMMENT ON COLUMN credits.packs.price IS 'Its price, in currency.';
COMMENT ON COLUMN credits.packs.currency IS 'The currency of price.';
COMMENT ON COLUMN credits.packs.active IS 'false: no longer for sale (purchases and auto-recharge refuse it).';
COMMENT ON COLUMN credits.packs.updated_at IS 'When it was last changed.';
COMMENT ON COLUMN credits.purchases.account_id IS 'The account.';
COMMENT ON COLUMN credits.purchases.purchase_id IS 'The purchase.';
COMMENT ON COLUMN credits.purchases.pack_id IS 'The pack bought.';
COMMENT ON COLUMN credits.purchases.credits IS 'Credits granted (the pack''s at the time).';
COMMENT ON COLUMN credits.purchases.price IS 'Price paid (the pack''s at the time).';
COMMENT ON COLUMN credits.purchases.currency IS 'The currency of price.';
COMMENT ON COLUMN credits.purchases.payment_ref IS 'The payment''s reference (a recharge request''s id for auto-recharge): one purchase per reference and account.';
COMMENT ON COLUMN credits.purchases.bucket_id IS 'The pack bucket it granted.';
COMMENT ON COLUMN credits.purchases.auto_recharge IS 'It completed a recharge request.';
COMMENT ON COLUMN credits.purchases.created_at IS 'When it was recorded.';
COMMENT ON COLUMN credits.auto_recharge.account_id IS 'The account.';
COMMENT ON COLUMN credits.auto_recharge.enabled IS 'Whether auto-recharge is on.';
COMMENT ON COLUMN credits.auto_recharge.pack_id IS 'The pack it requests.';
COMMENT ON COLUMN credits.auto_recharge.threshold IS 'It requests the pack when the balance (pending holds included) falls below this.';
COMMENT ON COLUMN credits.auto_recharge.monthly_cap IS 'At most this much (in the pack''s currency) requested or bought by auto-recharge per calendar month (UTC; failed requests do not count).';
COMMENT ON COLUMN credits.auto_recharge.updated_at IS 'When it was last set.';
COMMENT ON COLUMN credits.recharge_requests.account_id IS 'The account.';
COMMENT ON COLUMN credits.recharge_requests.request_id IS 'The request: pass it as credits_purchase''s payment_ref to complete it.';
COMMENT ON COLUMN credits.recharge_requests.pack_id IS 'The pack requested.';
COMMENT ON COLUMN credits.recharge_requests.credits IS 'Its credits at the time.';
COMMENT ON COLUMN credits.recharge_requests.price IS 'Its price at the time (counted against the monthly cap).';
COMMENT ON COLUMN credits.recharge_requests.currency IS 'The currency of price.';
COMMENT ON COLUMN credits.recharge_requests.status IS 'pending, failed (credits_recharge_fail) or completed (credits_purchase with the request''s id, also after it failed).';
COMMENT ON COLUMN credits.recharge_requests.reason IS 'Why it failed, as given to credits_recharge_fail.';
COMMENT ON COLUMN credits.recharge_requests.created_at IS 'When auto-recharge wrote it.';
COMMENT ON COLUMN credits.recharge_requests.resolved_at IS 'When it completed or failed; NULL while pending.';

CREATE FUNCTION public.credits_pack_upsert(pack_id text, credits numeric, price numeric,
                                           currency text DEFAULT 'USD', active boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_pack     text    := credits._ident(credits_pack_upsert.pack_id, 'pack_id', 255);
    v_credits  numeric := credits._amount(credits_pack_upsert.credits, 'credits', false);
    v_price    numeric := credits._amount(credits_pack_upsert.price, 'price', true);
    v_currency text    := upper(credits._ident(credits_pack_upsert.currency, 'currency', 16));
BEGIN
    PERFORM credits._required(credits_pack_upsert.active IS NULL, 'active');
    PERFORM credits._require_unbound('credits_pack_upsert');
    INSERT INTO credits.packs (pack_id, credits, price, currency, active, updated_at)
    VALUES (v_pack, v_credits, v_price, v_currency, credits_pack_upsert.active, credits._now())
    ON CONFLICT (pack_id) DO UPDATE
       SET credits = EXCLUDED.credits, price = EXCLUDED.price, currency = EXCLUDED.currency,
           active = EXCLUDED.active, updated_at = EXCLUDED.updated_at;
END
$$;

CREATE FUNCTION public.credits_purchase(account_id text, pack text, payment_ref text) RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits._ident(credits_purchase.account_id, 'account_id', 255);
    v_pack    text := credits._ident(credits_purchase.pack, 'pack', 255);
    v_ref     text := credits._ident(credits_purchase.payment_ref, 'payment_ref', 255);
    v_now     timestamptz;
    v_auto    boolean;
    a         credits.accounts;
    pk        credits.packs;
    pu        credits.purchases;
    rq        credits.recharge_requests;
    nb        record;
BEGIN
    a := credits._lock_account(v_account);
    v_now := credits._now();
    SELECT * INTO pu FROM credits.purchases WHERE account_id = v_account AND payment_ref = v_ref;
    IF FOUND THEN
        IF pu.pack_id <> v_pack THEN
            RAISE EXCEPTION USING ERRCODE = 'CR006',
                MESSAGE = format('payment_ref "%s" was already used for pack "%s"', v_ref, pu.pack_id),
                DETAIL = format('Account "%s" bought pack "%s" with it; this call asks for pack "%s".', v_account, pu.pack_id, v_pack),
                HINT = 'Each payment buys one pack: use the payment''s own reference.';
        END IF;
        RETURN pu.bucket_id;
    END IF;
    -- A payment_ref equal to a recharge request's id completes it (also a
    -- failed one: the payment went through after all), with the pack, the
    -- credits and the price that its event asked the payment worker for,
    -- whatever became of the pack, the plan or the account's BYOK switch
    -- since (a BYOK account keeps its packs for when it is switched back):
    -- the payment may already have been taken.
    SELECT * INTO rq FROM credits.recharge_requests r
     WHERE r.account_id = v_account AND r.request_id::text = v_ref AND r.status IN ('pending', 'failed');
    IF FOUND AND rq.pack_id <> v_pack THEN
        RAISE EXCEPTION USING ERRCODE = 'CR006',
            MESSAGE = format('payment_ref "%s" is a recharge request for pack "%s"', v_ref, rq.pack_id),
            DETAIL = format('The request asks for pack "%s" (%s credits for %s %s); this call buys pack "%s".',
                            rq.pack_id, trim_scale(rq.credits), trim_scale(rq.price), rq.currency, v_pack),
            HINT = 'Complete the request with its own pack, or buy another pack with the payment''s own reference.';
    ELSIF FOUND THEN
        pk.pack_id := rq.pack_id;
        pk.credits := rq.credits;
        pk.price := rq.price;
        pk.currency := rq.currency;
    ELSE
        SELECT * INTO pk FROM credits.packs WHERE pack_id = v_pack AND active;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'CR016',
                MESSAGE = format('unknown pack "%s"', v_pack),
                DETAIL = 'No active pack has this pack_id.',
                HINT = 'Create it with credits_pack_upsert(), or pass an active pack.';
        END IF;
        IF NOT (SELECT p.purchases_allowed FROM credits.plans p WHERE p.plan_id = a.plan_id) THEN
            RAISE EXCEPTION USING ERRCODE = 'CR010',
                MESSAGE = format('purchases are not allowed on plan "%s"', a.plan_id),
                DETAIL = format('Account "%s" is on a plan without purchases.', v_account),
                HINT = 'Upgrade the account to a plan that allows purchases.';
        END IF;
        IF a.byok THEN
            RAISE EXCEPTION USING ERRCODE = 'CR014',
                MESSAGE = format('account "%s" is BYOK', v_account),
                DETAIL = 'BYOK accounts bring their own keys: they have no allocation and no buckets.',
                HINT = 'Switch the account off BYOK with credits_account_upsert(byok => false) to give it credits.';
        END IF;
    END IF;

    PERFORM credits._room_check(v_account, pk.credits, true);
    SELECT * INTO nb FROM credits._new_bucket(v_account, 'pack', pk.credits, NULL, v_now, a.debt, v_ref,
        jsonb_build_object('pack', v_pack, 'payment_ref', v_ref, 'price', pk.price, 'currency', pk.currency), 'purchase');
    UPDATE credits.accounts SET balance = balance + pk.credits - nb.settled, debt = debt - nb.settled
     WHERE account_id = v_account;
    -- The recharge request found above, if any, is completed by this purchase.
    v_auto := rq.request_id IS NOT NULL;
    IF v_auto THEN
        UPDATE credits.recharge_requests SET status = 'completed', resolved_at = v_now
         WHERE account_id = v_account AND request_id = rq.request_id;
    END IF;
    INSERT INTO credits.purchases (account_id, pack_id, credits, price, currency, payment_ref, bucket_id, auto_recharge, created_at)
    VALUES (v_account, v_pack, pk.credits, pk.price, pk.currency, v_ref, nb.bucket_id, v_auto, v_now);
    -- A pack that left the balance below the threshold (smaller than the
    -- gap, or bought while debt took its credits) is followed by another.
    PERFORM credits._auto_recharge(v_account, v_now);
    RETURN nb.bucket_id;
END
$$;

CREATE FUNCTION public.credits_auto_recharge_set(account_id text, enabled boolean, pack text DEFAULT NULL,
                                                 threshold numeric DEFAULT NULL, monthly_cap numeric DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits._ident(credits_auto_recharge_set.account_id, 'account_id', 255);
    v_pack    text := CASE WHEN credits_auto_recharge_set.pack IS NULL THEN NULL
                           ELSE credits._ident(credits_auto_recharge_set.pack, 'pack', 255) END;
    v_threshold numeric := CASE WHEN credits_auto_recharge_set.threshold IS NULL THEN NULL
                                ELSE credits._amount(credits_auto_recharge_set.threshold, 'threshold', true) END;
    v_cap     numeric := CASE WHEN credits_auto_recharge_set.monthly_cap IS NULL THEN NULL
                              ELSE credits._amount(credits_auto_recharge_set.monthly_cap, 'monthly_cap', true) END;
    a         credits.accounts;
    cur       credits.auto_recharge;
BEGIN
    PERFORM credits._required(credits_auto_recharge_set.enabled IS NULL, 'enabled');
    a := credits._lock_account(v_account);
    SELECT * INTO cur FROM credits.auto_recharge WHERE account_id = v_account;
    v_pack := coalesce(v_pack, cur.pack_id);
    v_threshold := coalesce(v_threshold, cur.threshold);
    v_cap := coalesce(v_cap, cur.monthly_cap, 50);
    PERFORM credits._required(v_pack IS NULL, 'pack');
    PERFORM credits._required(v_threshold IS NULL, 'threshold');
    IF NOT EXISTS (SELECT 1 FROM credits.packs WHERE pack_id = v_pack AND active) THEN
        RAISE EXCEPTION USING ERRCODE = 'CR016',
            MESSAGE = format('unknown pack "%s"', v_pack),
            DETAIL = 'No active pack has this pack_id.',
            HINT = 'Create it with credits_pack_upsert(), or pass an active pack.';
    END IF;
    IF credits_auto_recharge_set.enabled AND a.byok THEN
        RAISE EXCEPTION USING ERRCODE = 'CR014',
            MESSAGE = format('account "%s" is BYOK', v_account),
            DETAIL = 'BYOK accounts have no balance to recharge.',
            HINT = 'Leave auto-recharge off for BYOK accounts.';
    END IF;
    IF credits_auto_recharge_set.enabled
       AND NOT (SELECT p.purchases_allowed FROM credits.plans p WHERE p.plan_id = a.plan_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'CR010',
            MESSAGE = format('purchases are not allowed on plan "%s"', a.plan_id),
            DETAIL = 'Auto-recharge buys packs, and this plan allows no purchases.',
            HINT = 'Upgrade the account to a plan that allows purchases.';
    END IF;
    INSERT INTO credits.auto_recharge (account_id, enabled, pack_id, threshold, monthly_cap, updated_at)
    VALUES (v_account, credits_auto_recharge_set.enabled, v_pack, v_threshold, v_cap, credits._now())
    ON CONFLICT (account_id) DO UPDATE
       SET enabled = EXCLUDED.enabled, pack_id = EXCLUDED.pack_id, threshold = EXCLUDED.threshold,
           monthly_cap = EXCLUDED.monthly_cap, updated_at = EXCLUDED.updated_at;
    UPDATE credits.accounts
       SET recharge_below = CASE WHEN credits_auto_recharge_set.enabled THEN v_threshold END
     WHERE account_id = v_account;
    -- Turned on (or set again after a failed payment) while the balance is
    -- already below the threshold: request at once, since an account with
    -- nothing left makes no commit that could cross it.
    PERFORM credits._auto_recharge(v_account, credits._now());
END
$$;

CREATE FUNCTION public.credits_recharge_fail(request_id uuid, reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text;
    v_failed  boolean := false;
BEGIN
    PERFORM credits._required(credits_recharge_fail.request_id IS NULL, 'request_id');
    -- A request of an account the caller may not reach does not exist for
    -- it (CR017 below, without the account's name).
    SELECT r.account_id INTO v_account FROM credits.recharge_requests r
     WHERE r.request_id = credits_recharge_fail.request_id AND credits._may_touch(r.account_id);
    IF FOUND THEN
        PERFORM credits._lock_account(v_account);
        UPDATE credits.recharge_requests r
           SET status = 'failed', reason = credits_recharge_fail.reason, resolved_at = credits._now()
         WHERE r.account_id = v_account AND r.request_id = credits_recharge_fail.request_id AND r.status = 'pending';
        v_failed := FOUND;
    END IF;
    IF v_failed THEN
        -- A write of the account row, not only its lock: a call at
        -- REPEATABLE READ or SERIALIZABLE that waited for the lock then
        -- fails with 40001 and, retried, finds the request failed, as a
        -- call at READ COMMITTED does. Otherwise it went on with a snapshot
        -- in which the request was still pending, and a commit that took
        -- the balance below the threshold requested no recharge.
        UPDATE credits.accounts a SET recharge_below = a.recharge_below WHERE a.account_id = v_account;
    ELSE
        RAISE EXCEPTION USING ERRCODE = 'CR017',
            MESSAGE = format('recharge request %s is not pending', credits_recharge_fail.request_id),
            DETAIL = 'It does not exist, or it was already completed or failed.',
            HINT = 'Only a pending request can be failed.';
    END IF;
END
$$;

-- Writes a recharge request and its recharge_requested event if the locked
-- account's balance (what its live buckets hold, pending holds included)
-- is below its auto-recharge threshold, and nothing stands in the way: no
-- other request of the account is pending, auto-recharge is on, its pack
-- is active, the plan allows purchases, the account is not BYOK, and the
-- pack's price fits under the monthly cap together with what auto-recharge
-- requested or bought this calendar month (UTC) in that currency (failed
-- requests do not count). Asked when the balance may have gone below the
-- threshold, or something that stood in the way may have gone: a commit
-- that took the balance below it (credits._after_usage), a roll-forward
-- whose expiries took it below or a reset that left it below
-- (credits._housekeep), a plan or BYOK change and a purchase that left it
-- below, and credits_auto_recharge_set. A commit of an account already
-- below the threshold asks nothing (it would on every commit while a
-- payment fails): a failed payment is tried again at the next crossing,
-- reset, purchase or credits_auto_recharge_set.
CREATE FUNCTION credits._auto_recharge(p_account text, p_now timestamptz) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    cfg     record;
    v_spent numeric;
    v_req   uuid;
BEGIN
    SELECT ar.pack_id, pk.credits, pk.price, pk.currency, ar.monthly_cap INTO cfg
      FROM credits.accounts a
      JOIN credits.auto_recharge ar ON ar.account_id = a.account_id
      JOIN credits.packs pk ON pk.pack_id = ar.pack_id
      JOIN credits.plans pl ON pl.plan_id = a.plan_id
     WHERE a.account_id = p_account AND a.balance < a.recharge_below AND NOT a.byok
       AND ar.enabled AND pk.active AND pl.purchases_allowed;
    IF NOT FOUND OR EXISTS (SELECT 1 FROM credits.recharge_requests r
                             WHERE r.account_id = p_account AND r.status = 'pending') THEN
        RETURN;
    END IF;
    SELECT coalesce(sum(r.price), 0) INTO v_spent
      FROM credits.recharge_requests r
     WHERE r.account_id = p_account AND r.status IN ('pending', 'completed')
       AND upper(r.currency) = upper(cfg.currency)
       AND r.created_at >= date_trunc('month', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    IF v_spent + cfg.price <= cfg.monthly_cap THEN
        INSERT INTO credits.recharge_requests (account_id, pack_id, credits, price, currency, status, created_at)
        VALUES (p_account, cfg.pack_id, cfg.credits, cfg.price, cfg.currency, 'pending', p_now)
        RETURNING request_id INTO v_req;
        PERFORM credits._emit(p_account, 'recharge_requested', jsonb_build_object(
            'account_id', p_account, 'request_id', v_req, 'pack', cfg.pack_id, 'credits', cfg.credits,
            'price', cfg.price, 'currency', cfg.currency, 'payment_ref', v_req), p_now);
    END IF;
END
$$;
