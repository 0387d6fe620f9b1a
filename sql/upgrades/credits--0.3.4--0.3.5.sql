-- credits 0.3.4 -> 0.3.5
-- credits_maintenance() rolls due accounts in batches of 100 by default
-- instead of 1000. The accounts a batch has rolled stay locked until the
-- batch commits, so an application's reserve on one of them waited for the
-- rest of the batch: up to 347-411 ms with batches of 1000 while rolling a
-- month start, 41-67 ms with batches of 100, for at most a few percent more
-- time per account (README, Scheduling with pg_cron). Jobs that pass
-- batch_size keep their value. The procedure keeps its owner, privileges and
-- comment.
-- Released upgrade scripts are never edited: a fix ships in the next one.
\echo Use "ALTER EXTENSION credits UPDATE TO '0.3.5'" to load this file. \quit

CREATE OR REPLACE PROCEDURE public.credits_maintenance(batch_size integer DEFAULT 100)
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
