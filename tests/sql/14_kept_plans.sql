-- fast paths only: checks which path runs, so make test does not run it again with credits.fast_paths off.
\ir helpers.inc
SELECT plan(13);

-- The fast paths keep their plans for the session's life, and a plan is made
-- with the statistics of its moment. When ANALYZE (or VACUUM) ran while the
-- write tables were empty — a new database, a VACUUM ANALYZE right after
-- CREATE EXTENSION — the planner believes them empty and would keep a plan
-- that scans them sequentially, and every commit would then read the whole
-- reservations table until autovacuum analyzes it again. The fast paths plan
-- with sequential scans disabled: they look rows up by key only. And each
-- kept statement is planned once per session (plan_cache_mode =
-- force_generic_plan), not again for each of its first five executions.

SELECT is((SELECT proconfig FROM pg_proc
            WHERE oid = 'credits._reserve_fast(text, numeric, text, text, text, interval, jsonb)'::regprocedure),
          ARRAY['search_path=pg_catalog, pg_temp', 'enable_seqscan=off', 'plan_cache_mode=force_generic_plan'],
          'the reserve fast path runs with its own planner settings');
SELECT is((SELECT proconfig FROM pg_proc
            WHERE oid = 'credits._commit_fast(uuid, numeric, boolean, text)'::regprocedure),
          ARRAY['search_path=pg_catalog, pg_temp', 'enable_seqscan=off', 'plan_cache_mode=force_generic_plan'],
          'the commit fast path runs with its own planner settings');

SELECT is((SELECT count(*) FROM credits.accounts) + (SELECT count(*) FROM credits.buckets)
          + (SELECT count(*) FROM credits.reservations) + (SELECT count(*) FROM credits.ledger),
          0::bigint, 'the tables are empty when analyzed');
ANALYZE credits.accounts, credits.buckets, credits.reservations, credits.ledger, credits.usage_rollup;

SELECT credits_plan_upsert(plan_id => 'pro', allocation => 1000, reset => 'calendar_month');
SELECT count(credits_account_upsert(account_id => 'a' || i, plan_id => 'pro')) FROM generate_series(1, 20) i;
SELECT credits_product_upsert(product => 'editor');

CREATE TEMP TABLE scans AS
SELECT relname, seq_scan FROM pg_stat_xact_user_tables WHERE schemaname = 'credits';
SET LOCAL track_functions = 'all';

-- Each kept statement is planned once per session: its generic plan is
-- made at its first execution and kept. Without force_generic_plan, the
-- plan cache would make a custom plan for each of the first five
-- executions and drop it afterwards, so no plan of these statements would
-- be kept after the session's first action.
SELECT is(credits_commit(credits_reserve(account_id => 'a1', amount => 2, product => 'editor'), 1), 1::numeric,
          'the session''s first action');
SELECT is((SELECT array_agg(s ORDER BY s) FROM (
             SELECT CASE WHEN ident LIKE '%least(next_event, $6 + $4)%' THEN 'reserve: the account''s hold'
                         WHEN ident LIKE '%WITH hold AS (%' THEN 'reserve: the bucket''s hold and the reservation'
                         WHEN ident LIKE '%SELECT a.account_id, a.period_start, a.balance,%' THEN 'commit: the lock'
                         WHEN ident LIKE '%WITH r AS (%' THEN 'commit: the writes' END AS s
               FROM pg_backend_memory_contexts WHERE name = 'CachedPlan') x WHERE s IS NOT NULL),
          ARRAY['commit: the lock', 'commit: the writes', 'reserve: the account''s hold',
                'reserve: the bucket''s hold and the reservation'],
          'after it, the generic plan of each fast-path statement is kept (planned once, not once per call for the first calls)');
SELECT is((SELECT count(credits_commit(credits_reserve(account_id => 'a' || (1 + i % 20), amount => 2,
                                                       product => 'editor'), 1))
             FROM generate_series(1, 100) i), 100::bigint, '100 actions');
SELECT is((SELECT calls FROM pg_stat_xact_user_functions WHERE funcname = '_reserve'), NULL,
          'all of them took the fast paths (the general reserve never ran)');
-- Each statement is prepared when a call first needs it: these 100 reserves
-- all took the hold with the first guarded UPDATE, so the second one (for
-- an account whose next_event has come) was never prepared.
SELECT is((SELECT count(*) FROM pg_backend_memory_contexts
            WHERE name = 'CachedPlanSource' AND ident LIKE '%next_event = least(next_event, $6 + $4)%'),
          1::bigint, 'the reserve''s guarded UPDATE is kept');
SELECT is((SELECT count(*) FROM pg_backend_memory_contexts
            WHERE name = 'CachedPlanSource' AND ident LIKE '%next_event = least(period_end, $6 + $4,%'),
          0::bigint, 'the statement for a false alarm, never needed here, was not prepared');
SELECT is((SELECT count(*) FROM pg_backend_memory_contexts
            WHERE name = 'CachedPlanSource' AND ident LIKE '%credits.idempotency_keys%'),
          0::bigint, 'nor those for an idempotency key');
-- (Not accounts: in this one-transaction test, updating a bucket created in
-- the same transaction fires its foreign-key check, which reads accounts
-- with a plan Postgres made and kept during the setup above. Without the
-- fix the fast paths scanned accounts twice per action besides.)
SELECT is((SELECT coalesce(string_agg(n.relname || ' ' || (n.seq_scan - o.seq_scan), ', ' ORDER BY n.relname), '')
             FROM pg_stat_xact_user_tables n JOIN scans o USING (relname)
            WHERE n.schemaname = 'credits' AND n.seq_scan > o.seq_scan
              AND n.relname IN ('buckets', 'reservations', 'ledger', 'usage_rollup')),
          '', 'no sequential scan of the buckets, reservations, ledger or roll-up');
SELECT is((SELECT count(*) FROM credits_verify()), 0::bigint, 'and everything verifies');

-- The helpers that the general paths and every roll-forward call keep their
-- plans too: a SQL function that Postgres cannot inline (a FROM clause,
-- sub-selects, an INSERT) is parsed and planned again by each statement or
-- transaction that calls it, so these are PL/pgSQL (0.3.5: an account's
-- roll-forward at a reset about 15% faster, a reserve with an idempotency
-- key about 10%).
SELECT is((SELECT array_agg(p.oid::regprocedure::text || ': ' || l.lanname ORDER BY p.oid::regprocedure::text COLLATE "C")
             FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
            WHERE p.oid IN ('credits._next_alert_at(numeric[], numeric[], numeric)'::regprocedure,
                            'credits._may_touch(text)'::regprocedure,
                            'credits._idempotent_store(text, text, text, jsonb, text, timestamptz)'::regprocedure,
                            'credits._roll_input(text, timestamptz)'::regprocedure,
                            'credits._rollup(text, timestamptz, text, numeric, numeric, numeric, numeric, numeric, integer, numeric)'::regprocedure)),
          ARRAY['credits._idempotent_store(text,text,text,jsonb,text,timestamp with time zone): plpgsql',
                'credits._may_touch(text): plpgsql',
                'credits._next_alert_at(numeric[],numeric[],numeric): plpgsql',
                'credits._roll_input(text,timestamp with time zone): plpgsql',
                'credits._rollup(text,timestamp with time zone,text,numeric,numeric,numeric,numeric,numeric,integer,numeric): plpgsql'],
          'the helpers of the general paths and the roll-forward keep their plans (PL/pgSQL)');

SELECT * FROM finish();
ROLLBACK;
