-- Period resets and the maintenance run for pg_cron. Write paths already
-- roll a due account forward before judging it, and reads show the
-- rolled-forward state, so these only record in the ledger what is due; a
-- missed run never blocks or over-grants anyone.

-- Rolls the periods (and records expired holds and buckets) of one account,
-- or of every due account, up to as_of (default: now, the extension's
-- clock). Idempotent; catches up over missed periods in order. Returns how
-- many periods were rolled.
CREATE FUNCTION public.credits_reset(account_id text DEFAULT NULL, as_of timestamptz DEFAULT NULL)
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
    IF NOT isfinite(v_as_of) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'as_of must be a finite timestamp',
            DETAIL = format('as_of is %s.', v_as_of),
            HINT = 'Leave as_of out to reset up to now.';
    END IF;
    IF v_as_of > v_now THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'as_of may not be later than the clock',
            DETAIL = format('as_of is %s, the clock says %s.', v_as_of, v_now),
            HINT = 'Leave as_of out to reset up to now.';
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

-- One batch of the maintenance run: up to batch_size due accounts, oldest
-- due first, skipping accounts another session has locked and those in
-- skip (the run set them aside). Returns how many accounts it brought up
-- to date. One failing account fails the whole batch: the run then rolls
-- them one at a time (credits._maintenance_one).
CREATE FUNCTION credits._maintenance_batch(batch_size integer, skip text[] DEFAULT '{}') RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a record;
    n integer := 0;
BEGIN
    FOR a IN
        SELECT c.account_id FROM credits.accounts c
         WHERE c.next_event <= credits._now() AND c.account_id <> ALL (skip)
         ORDER BY c.next_event
         LIMIT batch_size
           FOR NO KEY UPDATE SKIP LOCKED
    LOOP
        PERFORM credits._housekeep(a.account_id, credits._now());
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- The maintenance run's way past an account that cannot be brought up to
-- date: locks the first due account not in skip (SKIP LOCKED) and rolls
-- it in a subtransaction. Returns the account (NULL: none is due) and, if
-- rolling it failed, the error (the account is left as it was).
CREATE FUNCTION credits._maintenance_one(skip text[], OUT account text, OUT failure text, OUT failure_state text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT c.account_id INTO account FROM credits.accounts c
     WHERE c.next_event <= credits._now() AND c.account_id <> ALL (skip)
     ORDER BY c.next_event
     LIMIT 1
       FOR NO KEY UPDATE SKIP LOCKED;
    IF account IS NULL THEN
        RETURN;
    END IF;
    BEGIN
        PERFORM credits._housekeep(account, credits._now());
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS failure = MESSAGE_TEXT, failure_state = RETURNED_SQLSTATE;
    END;
END
$$;

-- The pg_cron entry point: CALL credits_maintenance().
-- Brings every due account up to date in batches, committing after each so
-- that no lock is held long, while reservations go on. The accounts a batch
-- has rolled stay locked until it commits, so a reserve on one of them waits
-- for the rest of the batch: the default of 100 (1000 until 0.3.4) keeps
-- that wait to tens of milliseconds for at most a few percent more time per
-- account (README, Scheduling with pg_cron). A batch runs without
-- subtransactions (a hundred of them with writes would overflow each
-- backend's cache of 64 and slow every other session's snapshots); when one
-- fails, the run rolls its accounts one at a time, a transaction each, sets
-- aside those that fail with a WARNING, goes on with the others, and at
-- the end, with all the others committed, fails with CR018 naming them
-- (until 0.3.5 one such account failed every run before any other account
-- was rolled). An advisory lock keeps two overlapping runs apart (the
-- second one returns at once); it is a transaction's lock, taken again
-- after each COMMIT, so that a run cancelled or failed leaves it to no one
-- (until 0.3.5 a session's lock stayed with the session of such a run, and
-- every later run elsewhere did nothing until that session ended). Inside
-- a transaction block it refuses to start (25001): Postgres would refuse
-- its first COMMIT only after a batch's work. An invoker procedure: PostgreSQL
-- forbids COMMIT in a SECURITY DEFINER procedure or one with a SET clause,
-- so every name is qualified.
CREATE PROCEDURE public.credits_maintenance(batch_size integer DEFAULT 100)
LANGUAGE plpgsql
AS $$
DECLARE
    n integer;
    total integer := 0;
    v_failed boolean;
    v_skip text[] := '{}';
    v_reasons text[] := '{}';
    v_lock CONSTANT integer := 7472616;
    r record;
BEGIN
    IF batch_size IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'batch_size must not be NULL',
            DETAIL = 'batch_size is required.', HINT = 'Pass a positive batch size such as 100.';
    END IF;
    IF batch_size < 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'batch_size must be positive',
            DETAIL = pg_catalog.format('batch_size is %s.', batch_size), HINT = 'Pass a positive batch size such as 100.';
    END IF;
    IF credits._in_transaction_block() THEN
        RAISE EXCEPTION USING ERRCODE = '25001',
            MESSAGE = 'credits_maintenance() cannot run inside a transaction block',
            DETAIL = 'It commits after each batch of accounts, and Postgres allows no COMMIT in a procedure called inside a transaction block.',
            HINT = 'Run CALL credits_maintenance() as a statement of its own, outside BEGIN ... COMMIT, as pg_cron does.';
    END IF;
    -- A transaction's lock, taken again after each COMMIT: an error or a
    -- cancel releases it with the transaction.
    IF NOT pg_catalog.pg_try_advisory_xact_lock(v_lock, 1) THEN
        RAISE NOTICE 'credits_maintenance: another run is in progress, nothing to do';
        RETURN;
    END IF;
    <<batches>>
    LOOP
        BEGIN
            n := credits._maintenance_batch(batch_size, v_skip);
            v_failed := false;
        EXCEPTION WHEN OTHERS THEN
            v_failed := true;
        END;
        IF NOT v_failed THEN
            total := total + n;
            COMMIT;
            EXIT batches WHEN n < batch_size;
            IF NOT pg_catalog.pg_try_advisory_xact_lock(v_lock, 1) THEN
                RAISE NOTICE 'credits_maintenance: another run took over between two batches';
                EXIT batches;
            END IF;
        ELSE
            FOR i IN 1 .. batch_size LOOP
                r := credits._maintenance_one(v_skip);
                EXIT WHEN r.account IS NULL;
                IF r.failure IS NULL THEN
                    total := total + 1;
                ELSE
                    v_skip := v_skip || r.account;
                    v_reasons := v_reasons || pg_catalog.format('"%s": %s (%s)', r.account, r.failure, r.failure_state);
                    RAISE WARNING USING
                        MESSAGE = pg_catalog.format('credits_maintenance: account "%s" cannot be brought up to date', r.account),
                        DETAIL = pg_catalog.format('%s (SQLSTATE %s). The run goes on with the other accounts.',
                                                   r.failure, r.failure_state),
                        HINT = pg_catalog.format('Every write path on "%s" rolls it forward first and fails the same way: '
                                                 'SELECT credits_reset(%L) shows the error.', r.account, r.account);
                END IF;
                COMMIT;
                IF NOT pg_catalog.pg_try_advisory_xact_lock(v_lock, 1) THEN
                    RAISE NOTICE 'credits_maintenance: another run took over between two batches';
                    EXIT batches;
                END IF;
            END LOOP;
        END IF;
    END LOOP;
    RAISE NOTICE 'credits_maintenance: % accounts brought up to date', total;
    IF pg_catalog.cardinality(v_skip) > 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'CR018',
            MESSAGE = pg_catalog.format('credits_maintenance: %s of the due accounts could not be brought up to date',
                                        pg_catalog.cardinality(v_skip)),
            DETAIL = pg_catalog.format('%s. The other %s due accounts were brought up to date and committed.',
                                       pg_catalog.array_to_string(v_reasons, '; '), total),
            HINT = 'Each of these accounts fails its write paths the same way until it is repaired: '
                   'run credits_reset(account_id) on one to see the error.';
    END IF;
END
$$;
