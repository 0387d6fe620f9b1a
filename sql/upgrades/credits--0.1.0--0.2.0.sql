-- credits 0.1.0 -> 0.2.0
-- Account binding with row-level security, and a hash chain over the ledger.
-- Released upgrade scripts are never edited: a fix ships in the next one.
\echo Use "ALTER EXTENSION credits UPDATE TO '0.2.0'" to load this file. \quit

-- The Rust function of the hash chain (src/chain.rs).
CREATE FUNCTION credits."_ledger_hash"(
	"previous" TEXT, /* & str */
	"content" TEXT /* & str */
) RETURNS TEXT /* String */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_ledger_hash_wrapper';

-- The ledger gets its per-account sequence and hash chain; existing rows are
-- chained in the order they were written.
ALTER TABLE credits.ledger ADD COLUMN seq bigint, ADD COLUMN hash text;

-- Tamper evidence for the ledger: a per-account sequence number and a hash
-- chained over each row's content and the previous row's hash (SHA-256, in
-- Rust: credits._ledger_hash). The trigger fills both only when they are
-- NULL, so rows reloaded by pg_restore keep theirs; credits_verify()
-- recomputes the chain.

-- The canonical content of a ledger row, as hashed.
CREATE FUNCTION credits._ledger_content(l credits.ledger) RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT format('%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s',
                  l.account_id, l.seq, l.kind, trim_scale(l.amount), coalesce(l.bucket_id::text, '-'),
                  coalesce(l.reservation_id::text, '-'), coalesce(l.product, '-'), coalesce(l.action, '-'),
                  coalesce(trim_scale(l.rate)::text, '-'), l.actor, coalesce(l.idempotency_key, '-'), l.metadata::text,
                  (extract(epoch FROM l.created_at) * 1000000)::bigint)
$$;

CREATE FUNCTION credits._ledger_chain() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev record;
BEGIN
    IF NEW.seq IS NULL OR NEW.hash IS NULL THEN
        SELECT l.seq, l.hash INTO prev FROM credits.ledger l
         WHERE l.account_id = NEW.account_id ORDER BY l.entry_id DESC LIMIT 1;
        NEW.seq := coalesce(prev.seq, 0) + 1;
        NEW.hash := credits._ledger_hash(coalesce(prev.hash, ''), credits._ledger_content(NEW));
    END IF;
    RETURN NEW;
END
$$;

ALTER TABLE credits.ledger DISABLE TRIGGER ledger_append_only;
DO $chain$
DECLARE
    v_row  credits.ledger;
    v_prev text;
    v_acct text;
    v_seq  bigint;
BEGIN
    FOR v_row IN SELECT * FROM credits.ledger ORDER BY account_id, entry_id LOOP
        IF v_acct IS DISTINCT FROM v_row.account_id THEN
            v_acct := v_row.account_id;
            v_prev := '';
            v_seq := 0;
        END IF;
        v_seq := v_seq + 1;
        v_row.seq := v_seq;
        v_prev := credits._ledger_hash(v_prev, credits._ledger_content(v_row));
        UPDATE credits.ledger SET seq = v_seq, hash = v_prev
         WHERE account_id = v_row.account_id AND entry_id = v_row.entry_id;
    END LOOP;
END
$chain$;
ALTER TABLE credits.ledger ENABLE TRIGGER ledger_append_only;
ALTER TABLE credits.ledger ALTER COLUMN seq SET NOT NULL, ALTER COLUMN hash SET NOT NULL;

CREATE TRIGGER ledger_chain
    BEFORE INSERT ON credits.ledger
    FOR EACH ROW EXECUTE FUNCTION credits._ledger_chain();

-- Account binding (sql/security.sql).
-- Account binding and row-level security. An admin binds accounts to roles
-- (a role may be bound to several accounts). A role that is a member of a
-- bound role sees and touches only the accounts bound to it; a role bound
-- to nothing (through none of its memberships) and superusers see every
-- account, which keeps a single-tenant setup free of bookkeeping. The API
-- functions run as the owner, which bypasses row-level security, so they
-- check the binding themselves; readers go through forced row-level
-- security on the tables under the security_invoker views. A session
-- setting is not a binding: membership is checked with pg_has_role.

CREATE TABLE credits.account_roles (
    account_id text NOT NULL REFERENCES credits.accounts (account_id),
    role_id    oid NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (account_id, role_id)
);
SELECT pg_catalog.pg_extension_config_dump('credits.account_roles', '');
COMMENT ON TABLE credits.account_roles IS 'Accounts bound to roles: members of a bound role see and touch only their accounts.';

-- The roles (by OID, existing ones only) whose accounts p_role may reach.
CREATE FUNCTION credits._bindings_of(p_role text)
RETURNS TABLE (account_id text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ar.account_id
      FROM credits.account_roles ar
      JOIN pg_catalog.pg_roles r ON r.oid = ar.role_id
     WHERE pg_catalog.pg_has_role(p_role, r.oid, 'MEMBER')
$$;

-- Whether the caller (credits._actor(): the session's role, or the one it
-- SET ROLE to) sees every account: superusers, and roles bound to nothing.
-- SECURITY DEFINER: the row-level security policies call it, and it reads
-- credits.account_roles, which has a policy of its own.
CREATE FUNCTION credits._sees_all() RETURNS boolean
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT NOT EXISTS (SELECT 1 FROM credits.account_roles)
        OR coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = credits._actor()), false)
        OR NOT EXISTS (SELECT 1 FROM credits._bindings_of(credits._actor()))
$$;

-- The accounts bound to the caller's roles.
CREATE FUNCTION credits._bound_accounts() RETURNS text[]
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(DISTINCT b.account_id), '{}') FROM credits._bindings_of(credits._actor()) b
$$;

-- Whether the caller of an API function may touch p_account. Cheap when
-- no account is bound at all (one probe of an empty table).
CREATE FUNCTION credits._may_touch(p_account text) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT NOT EXISTS (SELECT 1 FROM credits.account_roles)
        OR credits._sees_all()
        OR p_account = ANY (credits._bound_accounts())
$$;

CREATE FUNCTION public.credits_account_bind(account_id text, role regrole) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits._ident(credits_account_bind.account_id, 'account_id', 255);
BEGIN
    PERFORM credits._required(credits_account_bind.role IS NULL, 'role');
    PERFORM credits._lock_account(v_account);
    INSERT INTO credits.account_roles (account_id, role_id, created_at)
    VALUES (v_account, credits_account_bind.role::oid, credits._now())
    ON CONFLICT DO NOTHING;
END
$$;

CREATE FUNCTION public.credits_account_unbind(account_id text, role regrole) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits._ident(credits_account_unbind.account_id, 'account_id', 255);
BEGIN
    PERFORM credits._required(credits_account_unbind.role IS NULL, 'role');
    PERFORM credits._lock_account(v_account);
    DELETE FROM credits.account_roles WHERE account_id = v_account AND role_id = credits_account_unbind.role::oid;
END
$$;

-- Row-level security (sql/row_security.sql).
-- Forced row-level security on every table holding account data: readers
-- (and anyone else granted SELECT) see the rows of the accounts they may
-- reach. The owner is a superuser and bypasses it; nobody else may write.
DO $rls$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['accounts', 'buckets', 'reservations', 'ledger', 'idempotency_keys', 'account_products',
                             'purchases', 'auto_recharge', 'recharge_requests', 'events', 'usage_rollup', 'account_roles']
    LOOP
        EXECUTE format('ALTER TABLE credits.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE credits.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY bound_accounts ON credits.%I FOR SELECT USING ('
                       '(SELECT credits._sees_all()) OR account_id = ANY ((SELECT credits._bound_accounts())::text[]))', t);
    END LOOP;
END
$rls$;

-- API functions that now check the binding, and verify() with the chain.
CREATE OR REPLACE FUNCTION credits._lock_account(p_account text) RETURNS credits.accounts
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

CREATE OR REPLACE FUNCTION public.credits_reserve(
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
    v_account  text     := credits_reserve.account_id;
    v_amount   numeric  := credits_reserve.amount;
    v_product  text     := credits_reserve.product;
    v_action   text     := credits_reserve.action;
    v_key      text     := credits_reserve.idempotency_key;
    v_ttl      interval := credits_reserve.ttl;
    v_metadata jsonb    := credits_reserve.metadata;
    v_id       uuid     := gen_random_uuid();
    v_now      timestamptz := credits._now();
    v_period   timestamptz;
    v_buckets  uuid[];
    v_amounts  numeric[];
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
        PERFORM credits._raise('22023', 'ttl must be positive',
            format('ttl is %s.', v_ttl), 'Pass how long the hold may stay pending, such as ''15 minutes''.');
    END IF;
    IF v_metadata IS NULL OR jsonb_typeof(v_metadata) <> 'object' THEN
        v_metadata := credits._metadata(v_metadata);
    END IF;

    IF NOT credits._may_touch(v_account) THEN
        PERFORM credits._unknown_account(v_account);
    END IF;
    -- Products are registered on first use and may be disabled.
    SELECT p.enabled AND coalesce(ap.enabled, true) INTO v_allowed
      FROM credits.products p
      LEFT JOIN credits.account_products ap ON ap.account_id = v_account AND ap.product = p.product
     WHERE p.product = v_product;
    IF v_allowed IS NOT TRUE THEN
        PERFORM credits._product_allowed(v_account, v_product, v_now);
    END IF;

    IF v_key IS NULL THEN
        UPDATE credits.accounts
           SET held = held + v_amount, next_event = least(next_event, v_now + v_ttl)
         WHERE account_id = v_account AND balance - held >= v_amount AND debt = 0 AND NOT byok
           AND next_event > credits._now()
        RETURNING period_start INTO v_period;
        IF FOUND THEN
            -- Most often the first live bucket covers it all: hold it there
            -- and record the reservation in one statement.
            WITH hold AS (
                UPDATE credits.buckets SET held = held + v_amount
                 WHERE account_id = v_account AND balance - held >= v_amount
                   AND bucket_id = (SELECT b.bucket_id FROM credits.buckets b
                                     WHERE b.account_id = v_account AND b.balance > b.held
                                       AND (b.expires_at IS NULL OR b.expires_at > v_now)
                                     ORDER BY b.priority, b.expires_at, b.created_at, b.bucket_id
                                     LIMIT 1)
                RETURNING bucket_id)
            INSERT INTO credits.reservations (reservation_id, account_id, status, product, action, amount,
                                              draw_buckets, draw_amounts, period_start, expires_at, created_at, metadata)
            SELECT v_id, v_account, 'pending', v_product, v_action, v_amount,
                   ARRAY[hold.bucket_id], ARRAY[v_amount], v_period, v_now + v_ttl, v_now, v_metadata
              FROM hold;
            IF NOT FOUND THEN
                SELECT x.buckets, x.amounts INTO v_buckets, v_amounts FROM credits._draw(v_account, v_amount, v_now, true) x;
                INSERT INTO credits.reservations (reservation_id, account_id, status, product, action, amount,
                                                  draw_buckets, draw_amounts, period_start, expires_at, created_at, metadata)
                VALUES (v_id, v_account, 'pending', v_product, v_action, v_amount,
                        v_buckets, v_amounts, v_period, v_now + v_ttl, v_now, v_metadata);
            END IF;
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
            format('The account owes %s credits from a forced commit.', trim_scale(a.debt)),
            'Grant credits to pay the debt off (credits_grant), or wait for the next allocation.');
    END IF;

    v_free := a.balance - a.held;
    IF v_free < v_amount THEN
        SELECT l.mode, l.soft INTO v_mode, v_soft FROM credits._limit(a, v_now) l;
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

CREATE OR REPLACE FUNCTION credits._reservation_account(p_reservation uuid, p_account text) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_account text;
BEGIN
    PERFORM credits._required(p_reservation IS NULL, 'reservation_id');
    SELECT account_id INTO v_account FROM credits.reservations WHERE reservation_id = p_reservation;
    IF NOT FOUND OR NOT credits._may_touch(v_account) THEN
        PERFORM credits._raise('CR004', format('unknown reservation %s', p_reservation),
            'No reservation has this id (among the accounts this role may reach).',
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

CREATE OR REPLACE FUNCTION public.credits_commit(
    reservation_id uuid,
    amount         numeric DEFAULT NULL,
    force          boolean DEFAULT false,
    account_id     text DEFAULT NULL)
RETURNS numeric
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_id       uuid    := credits_commit.reservation_id;
    v_amount   numeric := credits_commit.amount;
    v_account  text    := credits_commit.account_id;
    v_now      timestamptz;
    v_charge   numeric;
    v_left     numeric;
    v_take     numeric;
    v_wo       numeric;
    v_buckets  uuid[]    := '{}';
    v_amounts  numeric[] := '{}';
    v_charged  numeric := 0;   -- taken from bucket balances
    v_released numeric := 0;   -- hold given back to buckets
    v_written  numeric := 0;   -- written off from expired buckets
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
    IF credits_commit.force IS NULL THEN
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
        PERFORM credits._raise('CR011',
            format('reservation %s was already committed with another amount', v_id),
            format('It was committed for %s; this call asks for %s.', r.charged, v_charge),
            'Repeat the commit with the same amount, or refund the difference with credits_refund().');
    ELSIF r.status IN ('committed', 'released') THEN
        PERFORM credits._raise('CR005',
            format('reservation %s is not pending', v_id),
            format('It is %s.', CASE WHEN r.status = 'committed' THEN 'committed and refunded' ELSE r.status END),
            'Only a pending (or expired) reservation can be committed; reserve again for a new action.');
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
        -- Charge from the draws in order; give back the rest of each draw
        -- (written off if its bucket expired meanwhile).
        FOR d IN
            SELECT u.bucket_id, u.amount, b.expires_at <= v_now AS expired
              FROM unnest(r.draw_buckets, r.draw_amounts) WITH ORDINALITY AS u(bucket_id, amount, n)
              JOIN credits.buckets b ON b.account_id = v_account AND b.bucket_id = u.bucket_id
             ORDER BY u.n
        LOOP
            v_take := least(d.amount, v_left);
            v_wo := CASE WHEN d.expired THEN d.amount - v_take ELSE 0 END;
            UPDATE credits.buckets SET held = held - d.amount, balance = balance - v_take - v_wo
             WHERE account_id = v_account AND bucket_id = d.bucket_id;
            IF v_take > 0 THEN
                v_buckets := v_buckets || d.bucket_id;
                v_amounts := v_amounts || v_take;
            END IF;
            IF v_wo > 0 THEN
                INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, reservation_id, actor, created_at)
                VALUES (v_account, 'expire', -v_wo, d.bucket_id, v_id, credits._actor(), v_now);
            END IF;
            v_left := v_left - v_take;
            v_charged := v_charged + v_take;
            v_released := v_released + d.amount;
            v_written := v_written + v_wo;
        END LOOP;
        v_overage := least(r.overage, v_left);
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
            IF v_left > 0 AND NOT credits_commit.force THEN
                PERFORM credits._raise('CR001',
                    format('insufficient credits for account "%s"', v_account),
                    format('needs %s, available %s', v_charge, v_charge - v_left),
                    format('commit at most %s, pass force => true to record the excess as debt, or top up first',
                           v_charge - v_left));
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
       SET held = held - v_released, balance = balance - v_charged - v_written,
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

CREATE OR REPLACE FUNCTION public.credits_balance(account_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits._ident(credits_balance.account_id, 'account_id', 255);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM credits.accounts WHERE account_id = v_account) OR NOT credits._may_touch(v_account) THEN
        PERFORM credits._unknown_account(v_account);
    END IF;
    RETURN credits._balance_json(v_account);
END
$$;

CREATE OR REPLACE FUNCTION public.credits_reset(account_id text DEFAULT NULL, as_of timestamptz DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := credits._now();
    v_as_of   timestamptz := coalesce(credits_reset.as_of, v_now);
    v_account text := CASE WHEN credits_reset.account_id IS NULL THEN NULL
                           ELSE credits._ident(credits_reset.account_id, 'account_id', 255) END;
    v_rolled  integer := 0;
    a         record;
BEGIN
    IF NOT isfinite(v_as_of) OR v_as_of > v_now THEN
        PERFORM credits._raise('22023', 'as_of may not be later than the clock',
            format('as_of is %s, the clock says %s.', v_as_of, v_now),
            'Leave as_of out to reset up to now.');
    END IF;
    FOR a IN
        SELECT c.account_id FROM credits.accounts c
         WHERE (v_account IS NULL OR c.account_id = v_account) AND c.next_event <= v_as_of
           AND credits._may_touch(c.account_id)
         ORDER BY c.account_id
    LOOP
        PERFORM 1 FROM credits.accounts c WHERE c.account_id = a.account_id FOR NO KEY UPDATE;
        v_rolled := v_rolled + credits._housekeep(a.account_id, v_as_of);
    END LOOP;
    IF v_account IS NOT NULL AND (NOT EXISTS (SELECT 1 FROM credits.accounts c WHERE c.account_id = v_account)
                                  OR NOT credits._may_touch(v_account)) THEN
        PERFORM credits._unknown_account(v_account);
    END IF;
    RETURN v_rolled;
END
$$;

CREATE OR REPLACE FUNCTION public.credits_events_claim(
    consumer   text,
    max_events integer DEFAULT 10,
    visibility interval DEFAULT '30 seconds',
    kinds      text[] DEFAULT NULL)
RETURNS TABLE (event_id bigint, account_id text, kind text, payload jsonb, created_at timestamptz, deliveries integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_consumer text := credits._ident(credits_events_claim.consumer, 'consumer', 255);
    v_now      timestamptz := credits._now();
BEGIN
    PERFORM credits._required(max_events IS NULL, 'max_events');
    PERFORM credits._required(visibility IS NULL, 'visibility');
    IF max_events < 1 OR visibility <= interval '0' THEN
        PERFORM credits._raise('22023', 'max_events and visibility must be positive',
            format('max_events is %s, visibility is %s.', max_events, visibility),
            'Claim at least one event for a positive time, such as 10 events for ''30 seconds''.');
    END IF;
    RETURN QUERY
    WITH claimable AS (
        SELECT e.event_id, e.account_id FROM credits.events e
         WHERE e.acked_at IS NULL AND e.visible_at <= v_now
           AND (credits_events_claim.kinds IS NULL OR e.kind = ANY (credits_events_claim.kinds))
           AND credits._may_touch(e.account_id)
         ORDER BY e.visible_at, e.event_id
         LIMIT credits_events_claim.max_events
           FOR UPDATE SKIP LOCKED
    )
    UPDATE credits.events e
       SET visible_at = v_now + credits_events_claim.visibility, deliveries = e.deliveries + 1, claimed_by = v_consumer
      FROM claimable c
     WHERE e.event_id = c.event_id AND e.account_id = c.account_id
    RETURNING e.event_id, e.account_id, e.kind, e.payload, e.created_at, e.deliveries;
END
$$;

CREATE OR REPLACE FUNCTION public.credits_events_ack(event_ids bigint[]) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    n integer;
BEGIN
    PERFORM credits._required(credits_events_ack.event_ids IS NULL, 'event_ids');
    UPDATE credits.events SET acked_at = credits._now()
     WHERE event_id = ANY (credits_events_ack.event_ids) AND acked_at IS NULL AND credits._may_touch(account_id);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION public.credits_verify()
RETURNS TABLE (invariant text, account_id text, detail text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH ledger_by_bucket AS (
        SELECT l.account_id, l.bucket_id, sum(l.amount) AS amount
          FROM credits.ledger l WHERE l.bucket_id IS NOT NULL
         GROUP BY 1, 2
    ), pending_draws AS (
        SELECT r.account_id, u.bucket_id, sum(u.amount) AS amount
          FROM credits.reservations r, unnest(r.draw_buckets, r.draw_amounts) AS u(bucket_id, amount)
         WHERE r.status = 'pending'
         GROUP BY 1, 2
    ), by_account AS (
        SELECT b.account_id, sum(b.balance) AS balance, sum(b.held) AS held
          FROM credits.buckets b GROUP BY 1
    ), pending_overage AS (
        SELECT r.account_id, sum(r.overage) AS overage
          FROM credits.reservations r WHERE r.status = 'pending' GROUP BY 1
    ), debt_ledger AS (
        SELECT l.account_id,
               sum(CASE l.kind WHEN 'debt' THEN -l.amount WHEN 'debt_refund' THEN -l.amount
                               WHEN 'debt_payment' THEN l.amount END) AS debt
          FROM credits.ledger l WHERE l.kind IN ('debt', 'debt_refund', 'debt_payment')
         GROUP BY 1
    ), period_usage AS (
        SELECT a.account_id,
               coalesce(-sum(l.amount) FILTER (WHERE l.kind IN ('charge', 'refund', 'debt', 'debt_refund')), 0) AS used,
               coalesce(-sum(l.amount) FILTER (WHERE l.kind IN ('overage', 'overage_refund')), 0) AS overage
          FROM credits.accounts a
          JOIN credits.reservations r ON r.account_id = a.account_id AND r.period_start = a.period_start
                                      AND r.status = 'committed'
          JOIN credits.ledger l ON l.account_id = r.account_id AND l.reservation_id = r.reservation_id
         GROUP BY 1
    )
    SELECT 'bucket balance equals its ledger rows', b.account_id,
           format('bucket %s: stored %s, ledger %s', b.bucket_id, b.balance, coalesce(lb.amount, 0))
      FROM credits.buckets b
      LEFT JOIN ledger_by_bucket lb ON lb.account_id = b.account_id AND lb.bucket_id = b.bucket_id
     WHERE b.balance <> coalesce(lb.amount, 0)
    UNION ALL
    SELECT 'ledger rows belong to a bucket of their account', lb.account_id,
           format('bucket %s has ledger rows but no row in credits.buckets', lb.bucket_id)
      FROM ledger_by_bucket lb
     WHERE NOT EXISTS (SELECT 1 FROM credits.buckets b WHERE b.account_id = lb.account_id AND b.bucket_id = lb.bucket_id)
    UNION ALL
    SELECT 'bucket held equals its pending draws', b.account_id,
           format('bucket %s: held %s, pending draws %s', b.bucket_id, b.held, coalesce(pd.amount, 0))
      FROM credits.buckets b
      LEFT JOIN pending_draws pd ON pd.account_id = b.account_id AND pd.bucket_id = b.bucket_id
     WHERE b.held <> coalesce(pd.amount, 0)
    UNION ALL
    SELECT 'account balance and holds equal its buckets', a.account_id,
           format('stored balance %s held %s, buckets balance %s held %s',
                  a.balance, a.held, coalesce(ba.balance, 0), coalesce(ba.held, 0))
      FROM credits.accounts a
      LEFT JOIN by_account ba ON ba.account_id = a.account_id
     WHERE a.balance <> coalesce(ba.balance, 0) OR a.held <> coalesce(ba.held, 0)
    UNION ALL
    SELECT 'account overage hold equals its pending reservations', a.account_id,
           format('stored %s, pending reservations %s', a.overage_held, coalesce(po.overage, 0))
      FROM credits.accounts a
      LEFT JOIN pending_overage po ON po.account_id = a.account_id
     WHERE a.overage_held <> coalesce(po.overage, 0)
    UNION ALL
    SELECT 'account debt equals its ledger rows', a.account_id,
           format('stored %s, ledger %s', a.debt, coalesce(dl.debt, 0))
      FROM credits.accounts a
      LEFT JOIN debt_ledger dl ON dl.account_id = a.account_id
     WHERE a.debt <> coalesce(dl.debt, 0)
    UNION ALL
    SELECT 'period usage equals the ledger rows of the period', a.account_id,
           format('stored used %s overage %s, ledger used %s overage %s',
                  a.period_used, a.period_overage, coalesce(pu.used, 0), coalesce(pu.overage, 0))
      FROM credits.accounts a
      LEFT JOIN period_usage pu ON pu.account_id = a.account_id
     WHERE (a.period_used <> coalesce(pu.used, 0) OR a.period_overage <> coalesce(pu.overage, 0))
       AND NOT a.byok
    UNION ALL
    SELECT 'account is within its limits', a.account_id,
           format('held %s of balance %s, overage %s + held %s, allowance %s',
                  a.held, a.balance, a.period_overage, a.overage_held,
                  CASE WHEN coalesce(a.limit_mode, p.limit_mode) = 'soft' THEN coalesce(a.soft_limit, p.soft_limit) ELSE 0 END)
      FROM credits.accounts a JOIN credits.plans p ON p.plan_id = a.plan_id
     WHERE a.held > a.balance OR a.held < 0 OR a.period_overage < 0
    UNION ALL
    SELECT 'stored values are valid', x.account_id, x.detail
      FROM (SELECT a.account_id, format('account: overage %s, overage held %s, debt %s, limit_mode %s, soft_limit %s, period %s - %s',
                   a.period_overage, a.overage_held, a.debt, a.limit_mode, a.soft_limit, a.period_start, a.period_end) AS detail
              FROM credits.accounts a
             WHERE a.period_overage < 0 OR a.overage_held < 0 OR a.debt < 0 OR a.soft_limit < 0
                OR a.limit_mode NOT IN ('hard', 'soft') OR a.period_end <= a.period_start
            UNION ALL
            SELECT b.account_id, format('bucket %s: kind %s, priority %s, amount %s', b.bucket_id, b.kind, b.priority, b.amount)
              FROM credits.buckets b
             WHERE b.amount < 0 OR (b.kind, b.priority) NOT IN (('allocation', 0), ('rollover', 0), ('topup', 1),
                                                             ('promo', 1), ('pack', 2), ('adjustment', 2))
            UNION ALL
            SELECT r.account_id, format('reservation %s: status %s, amount %s, refunded %s of %s',
                                        r.reservation_id, r.status, r.amount, r.refunded, r.charged)
              FROM credits.reservations r
             WHERE r.status NOT IN ('pending', 'committed', 'released', 'expired') OR r.amount <= 0
                OR r.overage < 0 OR r.debt < 0 OR r.refunded < 0 OR r.refunded > coalesce(r.charged, 0)
                OR cardinality(r.draw_buckets) <> cardinality(r.draw_amounts)
            UNION ALL
            SELECT l.account_id, format('ledger row %s: kind %s', l.entry_id, l.kind)
              FROM credits.ledger l
             WHERE l.kind NOT IN ('allocation', 'rollover', 'topup', 'promo', 'pack', 'adjustment', 'plan_change', 'purchase',
                                  'charge', 'overage', 'debt', 'refund', 'overage_refund', 'debt_refund',
                                  'debt_payment', 'expire', 'hold_expired')) x
    UNION ALL
    SELECT 'account next_event is not after anything due', a.account_id,
           format('next_event %s, earliest due %s', a.next_event,
                  least(a.period_end, b.first_expiry, r.first_expiry))
      FROM credits.accounts a
      LEFT JOIN LATERAL (SELECT min(expires_at) AS first_expiry FROM credits.buckets b
                          WHERE b.account_id = a.account_id AND b.balance > b.held AND b.expires_at IS NOT NULL) b ON true
      LEFT JOIN LATERAL (SELECT min(expires_at) AS first_expiry FROM credits.reservations r
                          WHERE r.account_id = a.account_id AND r.status = 'pending') r ON true
     WHERE a.next_event > least(a.period_end, b.first_expiry, r.first_expiry)
    UNION ALL
    SELECT 'reservation state is consistent', r.account_id,
           format('reservation %s (%s): amount %s, draws %s, overage %s, debt %s, charged %s, refunded %s',
                  r.reservation_id, r.status, r.amount,
                  (SELECT coalesce(sum(x), 0) FROM unnest(r.draw_amounts) x), r.overage, r.debt, r.charged, r.refunded)
      FROM credits.reservations r
     WHERE NOT r.byok AND CASE
        WHEN r.status IN ('pending', 'released', 'expired') THEN
             r.charged IS NOT NULL OR r.refunded <> 0 OR r.debt <> 0
             OR r.amount <> (SELECT coalesce(sum(x), 0) FROM unnest(r.draw_amounts) x) + r.overage
        ELSE r.charged IS NULL
             OR r.charged <> (SELECT coalesce(sum(x), 0) FROM unnest(r.draw_amounts) x) + r.overage + r.debt
        END
    UNION ALL
    SELECT 'usage roll-up equals the ledger', coalesce(x.account_id, y.account_id),
           format('%s %s: roll-up used %s overage %s refunded %s, ledger used %s overage %s refunded %s',
                  coalesce(x.day, y.day), coalesce(x.product, y.product), x.used, x.overage, x.refunded,
                  y.used, y.overage, y.refunded)
      FROM credits.usage_rollup x
      FULL JOIN (
            SELECT l.account_id, (l.created_at AT TIME ZONE 'UTC')::date AS day, r.product,
                   coalesce(-sum(l.amount) FILTER (WHERE l.kind IN ('charge', 'debt')), 0) AS used,
                   coalesce(-sum(l.amount) FILTER (WHERE l.kind = 'overage'), 0) AS overage,
                   coalesce(sum(l.amount) FILTER (WHERE l.kind IN ('refund', 'debt_refund', 'overage_refund')), 0) AS refunded,
                   coalesce(sum(l.amount) FILTER (WHERE l.kind = 'overage_refund'), 0) AS overage_refunded
              FROM credits.ledger l
              JOIN credits.reservations r ON r.reservation_id = l.reservation_id AND r.account_id = l.account_id
             WHERE l.kind IN ('charge', 'debt', 'overage', 'refund', 'debt_refund', 'overage_refund')
             GROUP BY 1, 2, 3) y
        ON x.account_id = y.account_id AND x.day = y.day AND x.product = y.product
     WHERE coalesce(x.used, 0) <> coalesce(y.used, 0) OR coalesce(x.overage, 0) <> coalesce(y.overage, 0)
        OR coalesce(x.refunded, 0) <> coalesce(y.refunded, 0)
        OR coalesce(x.overage_refunded, 0) <> coalesce(y.overage_refunded, 0)
    UNION ALL
    SELECT 'usage roll-up counts every commit', coalesce(x.account_id, y.account_id),
           format('%s %s: roll-up %s actions, %s BYOK; reservations %s, %s',
                  coalesce(x.product, y.product), coalesce(x.day::text, 'any day'), x.actions, x.byok_used,
                  y.actions, y.byok_used)
      FROM (SELECT account_id, product, day, actions, NULL::numeric AS byok_used FROM credits.usage_rollup
            UNION ALL
            SELECT account_id, product, NULL, NULL, sum(byok_used) FROM credits.usage_rollup GROUP BY 1, 2) x
      FULL JOIN (SELECT account_id, product, (resolved_at AT TIME ZONE 'UTC')::date AS day, count(*) AS actions,
                        NULL::numeric AS byok_used
                   FROM credits.reservations WHERE status = 'committed' GROUP BY 1, 2, 3
                 UNION ALL
                 SELECT account_id, product, NULL, NULL, sum(charged - refunded)
                   FROM credits.reservations WHERE status = 'committed' AND byok GROUP BY 1, 2) y
        ON x.account_id = y.account_id AND x.product = y.product AND x.day IS NOT DISTINCT FROM y.day
       AND (x.actions IS NULL) = (y.actions IS NULL)
     WHERE coalesce(x.actions, 0) <> coalesce(y.actions, 0) OR coalesce(x.byok_used, 0) <> coalesce(y.byok_used, 0)
    UNION ALL
    SELECT 'ledger hash chain is intact', x.account_id,
           format('entry %s: seq %s (expected %s), hash %s', x.entry_id, x.seq, x.n,
                  CASE WHEN x.hash = x.expected THEN 'ok' ELSE 'does not match its content and predecessor' END)
      FROM (SELECT (c.l).account_id, (c.l).entry_id, (c.l).seq, (c.l).hash, c.n,
                   credits._ledger_hash(coalesce(c.prev, ''), credits._ledger_content(c.l)) AS expected
              FROM (SELECT l, lag(l.hash) OVER w AS prev, row_number() OVER w AS n
                      FROM credits.ledger l
                    WINDOW w AS (PARTITION BY l.account_id ORDER BY l.entry_id)) c) x
     WHERE x.seq <> x.n OR x.hash <> x.expected
    UNION ALL
    SELECT 'committed charges equal their ledger rows', r.account_id,
           format('reservation %s: charged %s, refunded %s, ledger %s', r.reservation_id, r.charged, r.refunded,
                  coalesce(lr.amount, 0))
      FROM credits.reservations r
      LEFT JOIN LATERAL (SELECT -sum(l.amount) AS amount FROM credits.ledger l
                          WHERE l.account_id = r.account_id AND l.reservation_id = r.reservation_id
                            AND l.kind IN ('charge', 'overage', 'debt', 'refund', 'overage_refund', 'debt_refund')) lr ON true
     WHERE r.status = 'committed' AND NOT r.byok AND r.charged - r.refunded <> coalesce(lr.amount, 0)
$$;

-- Privileges and comments (sql/privileges.sql, idempotent).
-- Who may do what. Nothing is executable by PUBLIC; the DBA grants the
-- roles below to login roles. Only the extension owner writes the tables:
-- every write goes through the SECURITY DEFINER API functions.

COMMENT ON SCHEMA credits IS 'AI credits ledger: plans, accounts, buckets, reservations and the append-only ledger';
REVOKE ALL ON SCHEMA credits FROM PUBLIC;
GRANT USAGE ON SCHEMA credits TO credits_admin, credits_app, credits_reader;

REVOKE ALL ON ALL TABLES IN SCHEMA credits FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA credits FROM PUBLIC;
GRANT SELECT ON ALL TABLES IN SCHEMA credits TO credits_admin, credits_reader;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA credits FROM PUBLIC;
REVOKE ALL ON FUNCTION
    public.credits_plan_upsert(text, numeric, text, text, numeric, numeric, numeric, boolean),
    public.credits_account_upsert(text, text, timestamptz, boolean, text, numeric, timestamptz, numeric[]),
    public.credits_grant(text, numeric, text, timestamptz, text, jsonb),
    public.credits_reserve(text, numeric, text, text, text, interval, jsonb),
    public.credits_commit(uuid, numeric, boolean, text),
    public.credits_refund(uuid, numeric, text, text, text),
    public.credits_balance(text),
    public.credits_verify(),
    public.credits_reset(text, timestamptz),
    public.credits_product_upsert(text, boolean, text),
    public.credits_account_product_set(text, text, boolean),
    public.credits_price_upsert(text, text, text, numeric, text),
    public.credits_quote(text, text, text, numeric, numeric, numeric, numeric, numeric),
    public.credits_pack_upsert(text, numeric, numeric, text, boolean),
    public.credits_purchase(text, text, text),
    public.credits_auto_recharge_set(text, boolean, text, numeric, numeric),
    public.credits_recharge_fail(uuid, text),
    public.credits_events_claim(text, integer, interval, text[]),
    public.credits_events_ack(bigint[]),
    public.credits_account_bind(text, regrole),
    public.credits_account_unbind(text, regrole)
FROM PUBLIC;
REVOKE ALL ON PROCEDURE public.credits_maintenance(integer) FROM PUBLIC;

-- Admins configure plans and accounts and grant credits.
GRANT EXECUTE ON FUNCTION
    public.credits_plan_upsert(text, numeric, text, text, numeric, numeric, numeric, boolean),
    public.credits_account_upsert(text, text, timestamptz, boolean, text, numeric, timestamptz, numeric[]),
    public.credits_grant(text, numeric, text, timestamptz, text, jsonb),
    public.credits_verify(),
    public.credits_reset(text, timestamptz),
    public.credits_product_upsert(text, boolean, text),
    public.credits_account_product_set(text, text, boolean),
    public.credits_price_upsert(text, text, text, numeric, text),
    public.credits_pack_upsert(text, numeric, numeric, text, boolean),
    public.credits_purchase(text, text, text),
    public.credits_auto_recharge_set(text, boolean, text, numeric, numeric),
    public.credits_recharge_fail(uuid, text),
    public.credits_account_bind(text, regrole),
    public.credits_account_unbind(text, regrole),
    credits._maintenance_batch(integer)
TO credits_admin;
GRANT EXECUTE ON PROCEDURE public.credits_maintenance(integer) TO credits_admin;

-- Applications reserve, commit and refund; admins may too.
GRANT EXECUTE ON FUNCTION
    public.credits_reserve(text, numeric, text, text, text, interval, jsonb),
    public.credits_commit(uuid, numeric, boolean, text),
    public.credits_refund(uuid, numeric, text, text, text),
    public.credits_quote(text, text, text, numeric, numeric, numeric, numeric, numeric),
    public.credits_events_claim(text, integer, interval, text[]),
    public.credits_events_ack(bigint[])
TO credits_app, credits_admin;

GRANT EXECUTE ON FUNCTION public.credits_balance(text) TO credits_app, credits_admin, credits_reader;

-- The usage views are security_invoker: whoever reads them runs the
-- read-side functions underneath as themselves, under row-level security.
REVOKE ALL ON FUNCTION public.credits_usage_daily(text, date, date), public.credits_usage_by_tag(text, text, date, date)
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    public.credits_usage_daily(text, date, date),
    public.credits_usage_by_tag(text, text, date, date),
    credits._account_state(text, timestamptz),
    credits._roll_input(text, timestamptz),
    credits._roll_plan(jsonb),
    credits._limit(credits.accounts, timestamptz),
    credits._now(),
    credits._raise(text, text, text, text),
    credits._unknown_account(text),
    credits._sees_all(),
    credits._bound_accounts()
TO credits_reader, credits_app, credits_admin;

COMMENT ON FUNCTION public.credits_plan_upsert(text, numeric, text, text, numeric, numeric, numeric, boolean) IS
    'Creates or updates a plan: monthly allocation, reset rule, hard/soft limit, rollover cap, overage rate, purchases.';
COMMENT ON FUNCTION public.credits_account_upsert(text, text, timestamptz, boolean, text, numeric, timestamptz, numeric[]) IS
    'Creates an account on a plan (full first-period allocation) or changes its plan, anchor, BYOK flag or limit override.';
COMMENT ON FUNCTION public.credits_grant(text, numeric, text, timestamptz, text, jsonb) IS
    'Adds a credit bucket: topup (expires at the next reset), pack, promo or adjustment. Returns the bucket id.';
COMMENT ON FUNCTION public.credits_reserve(text, numeric, text, text, text, interval, jsonb) IS
    'Holds credits before an AI action; fails with CR001 when the limit does not allow it. Returns the reservation id.';
COMMENT ON FUNCTION public.credits_commit(uuid, numeric, boolean, text) IS
    'Charges a reservation (the reserved amount, less, or more if it fits or force => true). Returns the amount charged.';
COMMENT ON FUNCTION public.credits_refund(uuid, numeric, text, text, text) IS
    'Releases a pending reservation or returns credits of a committed one. Returns the amount returned.';
COMMENT ON FUNCTION public.credits_balance(text) IS
    'Balance and history of one account as jsonb: summary (usage ring), live buckets, recent transactions.';
COMMENT ON FUNCTION public.credits_reset(text, timestamptz) IS
    'Rolls due billing periods (rollover, expiry, new allocation) of one account or all, up to as_of. Returns periods rolled.';
COMMENT ON PROCEDURE public.credits_maintenance(integer) IS
    'For pg_cron: brings every due account up to date in committed batches (resets, expired holds and buckets).';
COMMENT ON FUNCTION public.credits_product_upsert(text, boolean, text) IS
    'Registers a product, or enables/disables it for every account.';
COMMENT ON FUNCTION public.credits_account_product_set(text, text, boolean) IS
    'Enables or disables a product for one account (NULL: back to the global switch).';
COMMENT ON FUNCTION public.credits_price_upsert(text, text, text, numeric, text) IS
    'Sets the price in credits of one unit (call, 1k input/output tokens, image, second) of a product action and tier.';
COMMENT ON FUNCTION public.credits_quote(text, text, text, numeric, numeric, numeric, numeric, numeric) IS
    'Cost preview: the credits a planned action costs by the price catalogue, without changing anything.';
COMMENT ON FUNCTION public.credits_pack_upsert(text, numeric, numeric, text, boolean) IS
    'Creates or updates a credit pack for sale (credits, price, currency).';
COMMENT ON FUNCTION public.credits_purchase(text, text, text) IS
    'Records a purchased pack as a never-expiring pack bucket, idempotent on payment_ref. Returns the bucket id.';
COMMENT ON FUNCTION public.credits_auto_recharge_set(text, boolean, text, numeric, numeric) IS
    'Configures auto-recharge: buy a pack when a commit takes the available balance below threshold, within a monthly cap.';
COMMENT ON FUNCTION public.credits_recharge_fail(uuid, text) IS
    'Marks a pending recharge request as failed (the payment did not go through).';
COMMENT ON FUNCTION public.credits_events_claim(text, integer, interval, text[]) IS
    'Claims up to max_events events for visibility (SKIP LOCKED); unacknowledged events come back afterwards.';
COMMENT ON FUNCTION public.credits_events_ack(bigint[]) IS
    'Acknowledges handled events. Returns how many were newly acknowledged.';
COMMENT ON FUNCTION public.credits_account_bind(text, regrole) IS
    'Binds an account to a role: members of bound roles see and touch only their accounts.';
COMMENT ON FUNCTION public.credits_account_unbind(text, regrole) IS
    'Removes a binding of an account to a role.';
COMMENT ON FUNCTION public.credits_verify() IS
    'One row per violated invariant of the stored balances, holds, limits and ledger; empty when healthy.';

COMMENT ON TABLE credits.plans IS 'Plans: monthly allocation, reset rule, limit mode and overage terms.';
COMMENT ON TABLE credits.accounts IS 'Accounts with their stored balance row: locked first by every write path.';
COMMENT ON TABLE credits.buckets IS 'Credit buckets (allocation, rollover, topup, promo, pack, adjustment) with stored balance and holds.';
COMMENT ON TABLE credits.reservations IS 'Reservations (holds) and what each drew from or charged to each bucket.';
COMMENT ON TABLE credits.ledger IS 'Append-only ledger: every change of a stored balance.';
COMMENT ON TABLE credits.idempotency_keys IS 'Idempotency keys per account and function, kept forever.';
