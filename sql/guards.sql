-- Guards on the stored rows. They only refuse; they never derive a balance,
-- so reloading rows (pg_restore) cannot change one.

-- The ledger is append-only.
CREATE FUNCTION credits._ledger_append_only() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'CR013',
        MESSAGE = pg_catalog.format('the credits ledger is append-only: %s is not allowed', TG_OP),
        DETAIL = 'Ledger rows record what happened to balances and are never changed or removed.',
        HINT = 'Record a correction with credits_grant(kind => ''adjustment'') or credits_refund().';
END
$$;

CREATE TRIGGER ledger_append_only
    BEFORE UPDATE OR DELETE ON credits.ledger
    FOR EACH ROW EXECUTE FUNCTION credits._ledger_append_only();
CREATE TRIGGER ledger_no_truncate
    BEFORE TRUNCATE ON credits.ledger
    FOR EACH STATEMENT EXECUTE FUNCTION credits._ledger_append_only();

-- The soft limit: overage (usage past every bucket) may only grow within the
-- account's soft allowance for the period, and never in hard mode. Checked
-- on the locked row's new version, so two sessions can never both pass.
-- Lowering the allowance below what is already used is allowed; only growth
-- is refused.
CREATE FUNCTION credits._overage_within_limit() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_mode  text;
    v_limit numeric;
BEGIN
    SELECT l.mode, l.soft INTO v_mode, v_limit FROM credits._limit(NEW, credits._now()) l;
    IF NEW.period_overage + NEW.overage_held > v_limit THEN
        RAISE EXCEPTION USING
            ERRCODE = 'CR001',
            MESSAGE = pg_catalog.format('insufficient credits for account "%s"', NEW.account_id),
            DETAIL = pg_catalog.format('Overage would be %s; the %s limit allows %s this period.',
                                       pg_catalog.trim_scale(NEW.period_overage + NEW.overage_held), v_mode,
                                       pg_catalog.trim_scale(v_limit)),
            HINT = pg_catalog.format('Top up, or wait for the reset on %s.',
                                     pg_catalog.to_char(NEW.period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD'));
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER accounts_overage_limit
    BEFORE UPDATE OF period_overage, overage_held ON credits.accounts
    FOR EACH ROW
    WHEN (NEW.period_overage + NEW.overage_held > OLD.period_overage + OLD.overage_held)
    EXECUTE FUNCTION credits._overage_within_limit();
CREATE TRIGGER accounts_overage_limit_insert
    BEFORE INSERT ON credits.accounts
    FOR EACH ROW
    WHEN (NEW.period_overage + NEW.overage_held > 0)
    EXECUTE FUNCTION credits._overage_within_limit();
