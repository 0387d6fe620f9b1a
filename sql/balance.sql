-- credits_balance: balance and history in one call. The jsonb is assembled
-- in Rust (credits._balance_json, src/balance.rs); this wrapper checks the
-- input first so that its errors keep their SQLSTATE.
CREATE FUNCTION public.credits_balance(account_id text) RETURNS jsonb
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
