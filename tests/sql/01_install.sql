\ir helpers.inc
SELECT plan(21);

SELECT has_schema('credits');
SELECT tables_are('credits', ARRAY['plans', 'accounts', 'buckets', 'reservations', 'ledger', 'idempotency_keys',
                                   'products', 'account_products', 'prices', 'packs', 'purchases', 'auto_recharge',
                                   'recharge_requests', 'events', 'usage_rollup', 'account_roles']);
SELECT has_role('credits_admin');
SELECT has_role('credits_app');
SELECT has_role('credits_reader');

CREATE ROLE credits_test_nobody;
SELECT ok(NOT has_schema_privilege('credits_app', 'credits', 'CREATE') AND has_schema_privilege('credits_app', 'credits', 'USAGE')
          AND NOT has_schema_privilege('credits_test_nobody', 'credits', 'USAGE'),
          'the schema grants USAGE to the roles, CREATE to no one');
SELECT ok(NOT has_function_privilege('credits_test_nobody', 'credits_reserve(text,numeric,text,text,text,interval,jsonb)', 'EXECUTE'),
          'PUBLIC cannot reserve');
SELECT ok(NOT has_function_privilege('credits_test_nobody', 'credits._housekeep(text,timestamptz)', 'EXECUTE'),
          'PUBLIC cannot call internal functions');
SELECT ok(has_function_privilege('credits_app', 'credits_reserve(text,numeric,text,text,text,interval,jsonb)', 'EXECUTE'),
          'the app role can reserve');
SELECT ok(NOT has_function_privilege('credits_app', 'credits_grant(text,numeric,text,timestamptz,text,jsonb)', 'EXECUTE'),
          'the app role cannot grant');
SELECT ok(NOT has_function_privilege('credits_reader', 'credits_commit(uuid,numeric,boolean,text)', 'EXECUTE'),
          'the reader role cannot commit');
-- Internal functions: executable by no one but the owner, except the
-- read-side ones (the three roles), the four that credits_reserve and
-- credits_commit call (app and admin), and the three that
-- credits_maintenance calls (admin).
CREATE FUNCTION pg_temp.internal_executable(r text, but_not text) RETURNS text[] LANGUAGE sql AS $$
    SELECT ARRAY(SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
                   JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = 'credits' AND has_function_privilege(r, p.oid, 'EXECUTE')
                    AND (but_not IS NULL OR NOT has_function_privilege(but_not, p.oid, 'EXECUTE'))
                  ORDER BY p.oid::regprocedure::text COLLATE "C")
$$;
SELECT is(pg_temp.internal_executable('credits_reader', NULL),
          ARRAY['credits._account_state(text,timestamp with time zone)', 'credits._bound_accounts()',
                'credits._limit(credits.accounts,timestamp with time zone)', 'credits._now()', 'credits._now_stable()',
                'credits._required(boolean,text)',
                'credits._roll_input(text,timestamp with time zone)', 'credits._roll_plan(jsonb)', 'credits._sees_all()',
                'credits._unknown_account(text)'],
          'the reader may run the read-side internal functions only');
SELECT is(pg_temp.internal_executable('credits_app', 'credits_reader'),
          ARRAY['credits._commit(uuid,numeric,boolean,text)', 'credits._commit_fast(uuid,numeric,boolean,text)',
                'credits._reserve(text,numeric,text,text,text,interval,jsonb)',
                'credits._reserve_fast(text,numeric,text,text,text,interval,jsonb)'],
          'the app, beyond them, the four that credits_reserve and credits_commit call');
SELECT is(pg_temp.internal_executable('credits_admin', 'credits_app'),
          ARRAY['credits._in_transaction_block()', 'credits._maintenance_batch(integer,text[])',
                'credits._maintenance_one(text[])'],
          'the admin, beyond those, the three that credits_maintenance calls');
SELECT is(pg_temp.internal_executable('credits_app', 'credits_admin'), '{}'::text[], 'the admin may run all the app may');
SELECT is((SELECT count(*) FROM pg_catalog.pg_tables t, unnest(ARRAY['credits_admin', 'credits_app', 'credits_reader']) r
            WHERE t.schemaname = 'credits'
              AND (has_table_privilege(r, format('credits.%I', t.tablename), 'INSERT')
                OR has_table_privilege(r, format('credits.%I', t.tablename), 'UPDATE')
                OR has_table_privilege(r, format('credits.%I', t.tablename), 'DELETE'))),
          0::bigint, 'no role but the owner writes the tables');
SELECT is((SELECT count(*) FROM pg_catalog.pg_proc p
            WHERE p.prosecdef AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')),
          0::bigint, 'every SECURITY DEFINER function pins search_path');
SELECT is((SELECT count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'public' AND p.proname LIKE 'credits\_%' AND obj_description(p.oid, 'pg_proc') IS NULL),
          0::bigint, 'every API function has a comment');
SELECT is((SELECT count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'public' AND p.proname LIKE 'credits\_%' AND p.proisstrict),
          0::bigint, 'no API function is STRICT (NULL must raise 22004, not return NULL)');
SELECT is((SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'credits' AND c.relkind IN ('r', 'S')
              AND NOT c.oid = ANY ((SELECT extconfig FROM pg_catalog.pg_extension WHERE extname = 'credits')::oid[])),
          0::bigint, 'every data table and sequence is dumped by pg_dump');
SELECT is((SELECT extrelocatable FROM pg_catalog.pg_extension WHERE extname = 'credits'), false, 'not relocatable');

SELECT * FROM finish();
ROLLBACK;
