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

-- One batch of the maintenance run: up to batch_size due accounts, oldest
-- due first, skipping accounts another session has locked. Returns how many
-- accounts it brought up to date.
CREATE FUNCTION credits._maintenance_batch(batch_size integer) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a record;
    n integer := 0;
BEGIN
    FOR a IN
        SELECT account_id FROM credits.accounts
         WHERE next_event <= credits._now()
         ORDER BY next_event
         LIMIT batch_size
           FOR NO KEY UPDATE SKIP LOCKED
    LOOP
        PERFORM credits._housekeep(a.account_id, credits._now());
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- The pg_cron entry point: CALL credits_maintenance().
-- Brings every due account up to date in batches, committing after each so
-- that no lock is held long, while reservations go on. The accounts a batch
-- has rolled stay locked until it commits, so a reserve on one of them waits
-- for the rest of the batch: the default of 100 (1000 until 0.3.4) keeps
-- that wait to tens of milliseconds for at most a few percent more time per
-- account (README, Scheduling with pg_cron). A session-level advisory lock
-- keeps two overlapping runs apart (the second one returns at once). An
-- invoker procedure: PostgreSQL forbids COMMIT in a SECURITY DEFINER
-- procedure or one with a SET clause, so every name is qualified.
CREATE PROCEDURE public.credits_maintenance(batch_size integer DEFAULT 100)
LANGUAGE plpgsql
AS $$
DECLARE
    n integer;
    total integer := 0;
BEGIN
    IF batch_size IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'batch_size must not be NULL',
            DETAIL = 'batch_size is required.', HINT = 'Pass a positive batch size such as 100.';
    END IF;
    IF batch_size < 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'batch_size must be positive',
            DETAIL = pg_catalog.format('batch_size is %s.', batch_size), HINT = 'Pass a positive batch size such as 100.';
    END IF;
    IF NOT pg_catalog.pg_try_advisory_lock(7472616, 1) THEN
        RAISE NOTICE 'credits_maintenance: another run is in progress, nothing to do';
        RETURN;
    END IF;
    LOOP
        n := credits._maintenance_batch(batch_size);
        total := total + n;
        COMMIT;
        EXIT WHEN n < batch_size;
    END LOOP;
    PERFORM pg_catalog.pg_advisory_unlock(7472616, 1);
    RAISE NOTICE 'credits_maintenance: % accounts brought up to date', total;
END
$$;
