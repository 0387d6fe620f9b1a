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

-- An account's plan exists (not a foreign key: see credits.accounts in
-- sql/tables.sql). A plan that accounts are on is not deleted, renamed or
-- truncated away. Under READ COMMITTED the check sees every account
-- committed before it: an account being put on the plan holds its row FOR
-- KEY SHARE (credits_account_upsert), and the DELETE or UPDATE waits for
-- that transaction before this trigger runs. A snapshot of REPEATABLE READ
-- or SERIALIZABLE could miss that account, so such a transaction may not
-- delete or rename a plan at all.
CREATE FUNCTION credits._plan_in_use() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_plan    text;
    v_account text;
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        IF TG_OP = 'UPDATE' AND NEW.plan_id = OLD.plan_id THEN
            RETURN NEW;
        END IF;
        v_plan := OLD.plan_id;
        IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION USING
                ERRCODE = '0A000',
                MESSAGE = pg_catalog.format('plan "%s" can only be deleted or renamed under READ COMMITTED', v_plan),
                DETAIL = pg_catalog.format('This transaction is %s: its snapshot could miss an account put on the plan meanwhile.',
                                           pg_catalog.upper(pg_catalog.current_setting('transaction_isolation'))),
                HINT = 'Run the statement in a READ COMMITTED transaction.';
        END IF;
        SELECT a.account_id INTO v_account FROM credits.accounts a WHERE a.plan_id = v_plan LIMIT 1;
    ELSE
        SELECT a.plan_id, a.account_id INTO v_plan, v_account FROM credits.accounts a LIMIT 1;
    END IF;
    IF v_account IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = '23503',
            MESSAGE = pg_catalog.format('plan "%s" is in use: %s of credits.plans is refused', v_plan, TG_OP),
            DETAIL = pg_catalog.format('Account "%s" is on it, and accounts keep their plan.', v_account),
            HINT = 'Move its accounts to another plan first with credits_account_upsert(account_id => ..., plan_id => ...).';
    END IF;
    RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
END
$$;

CREATE TRIGGER plans_in_use
    BEFORE DELETE OR UPDATE OF plan_id ON credits.plans
    FOR EACH ROW EXECUTE FUNCTION credits._plan_in_use();
CREATE TRIGGER plans_in_use_truncate
    BEFORE TRUNCATE ON credits.plans
    FOR EACH STATEMENT EXECUTE FUNCTION credits._plan_in_use();

-- An account's plan_id changes only to a plan that exists, whose row it
-- then holds FOR KEY SHARE until it commits, as a foreign key's check
-- would. Only when plan_id changes: the writes of the hot path never set
-- it. (New accounts: credits_account_upsert checks and locks the plan. An
-- INSERT trigger would refuse pg_restore's rows of credits.accounts, which
-- pg_dump writes before those of credits.plans.)
CREATE FUNCTION credits._plan_exists() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM FROM credits.plans p WHERE p.plan_id = NEW.plan_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = '23503',
            MESSAGE = pg_catalog.format('unknown plan "%s" for account "%s"', NEW.plan_id, NEW.account_id),
            DETAIL = 'No plan has this plan_id.',
            HINT = 'Create it first with credits_plan_upsert().';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER accounts_plan_exists
    AFTER UPDATE OF plan_id ON credits.accounts
    FOR EACH ROW
    WHEN (NEW.plan_id IS DISTINCT FROM OLD.plan_id)
    EXECUTE FUNCTION credits._plan_exists();
