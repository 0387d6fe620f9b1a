-- Idempotency keys: scoped per account and function, kept forever. Callers
-- hold the account lock, so a key is looked up and stored in the same
-- transaction as the effect and two racing replays are serialised: the
-- second one finds the first one's key once it gets the lock. A failed call
-- rolls back and stores no key.

-- The stored result of a replay, NULL for a first call; a reuse of the key
-- with other arguments fails with CR006.
CREATE FUNCTION credits._idempotent_result(p_account text, p_fn text, p_key text, p_request jsonb)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    k credits.idempotency_keys;
BEGIN
    IF p_key IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT * INTO k FROM credits.idempotency_keys
     WHERE account_id = p_account AND fn = p_fn AND key = p_key;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF k.request <> p_request THEN
        RAISE EXCEPTION USING ERRCODE = 'CR006',
            MESSAGE = format('idempotency key "%s" was already used with other arguments', p_key),
            DETAIL = format('credits_%s for account "%s" first ran with %s; this call has %s.', p_fn, p_account, k.request, p_request),
            HINT = 'Use a new key for a new operation, or repeat the first call exactly.';
    END IF;
    RETURN k.result;
END
$$;

-- Stores a key's first result (nothing without a key). PL/pgSQL (since
-- 0.3.5): as a SQL function its INSERT was parsed and planned on every
-- call, also for the calls without a key.
CREATE FUNCTION credits._idempotent_store(p_account text, p_fn text, p_key text, p_request jsonb, p_result text, p_at timestamptz)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_key IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO credits.idempotency_keys (account_id, fn, key, request, result, created_at)
    VALUES (p_account, p_fn, p_key, p_request, p_result, p_at)
    ON CONFLICT (account_id, fn, key) DO NOTHING;
END
$$;
