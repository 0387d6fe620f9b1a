-- fast paths only: checks which path runs, so make test does not run it again with credits.fast_paths off.
\ir helpers.inc
SELECT plan(76);

CREATE FUNCTION pg_temp.explain_lines(q text) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY EXECUTE 'EXPLAIN (VERBOSE, COSTS OFF) ' || q;
END
$$;

-- The fast paths (src/fast_reserve.rs, src/fast_commit.rs) take the common
-- case and return NULL, having written nothing, for everything else; the
-- general path then judges the call. Every other file checks the behaviour
-- through credits_reserve/credits_commit; this one checks which path runs.

SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100, reset => 'calendar_month');
SELECT credits_plan_upsert(plan_id => 'soft', allocation => 10, reset => 'calendar_month',
                           limit_mode => 'soft', soft_limit => 50);
SELECT credits_account_upsert(account_id => 'acme', plan_id => 'pro');
SELECT credits_account_upsert(account_id => 'own', plan_id => 'pro', byok => true);
SELECT credits_account_upsert(account_id => 'flex', plan_id => 'soft');
SELECT credits_account_upsert(account_id => 'keyed', plan_id => 'pro');
-- Products are registered on first use, by the general path.
SELECT credits_commit(credits_reserve(account_id => 'acme', amount => 1, product => 'editor'));
SELECT credits_product_upsert(product => 'retired', enabled => false);
SELECT credits_account_product_set(account_id => 'acme', product => 'seo', enabled => false);
SELECT credits_product_upsert(product => 'seo');

-- The wrappers are inlined into the caller's query (no extra function call).
SELECT ok((SELECT string_agg(x, ' ') FROM pg_temp.explain_lines(
               $$SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'editor')$$) x)
          ~ 'COALESCE\(credits\._reserve_fast\(.*credits\._reserve\(', 'credits_reserve is inlined');
SELECT ok((SELECT string_agg(x, ' ') FROM pg_temp.explain_lines(
               $$SELECT credits_commit('00000000-0000-0000-0000-000000000000', 1)$$) x)
          ~ 'COALESCE\(credits\._commit_fast\(.*credits\._commit\(', 'credits_commit is inlined');
-- Not with a volatile argument (each argument appears twice in the body,
-- and Postgres does not evaluate a volatile expression twice): each call
-- then plans the wrapper. A sub-select computes such a value once (README,
-- credits_reserve).
SELECT ok((SELECT string_agg(x, ' ') FROM pg_temp.explain_lines(
               $$SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'editor',
                                        idempotency_key => gen_random_uuid()::text)$$) x)
          !~ 'credits\._reserve_fast', 'credits_reserve is not inlined with a volatile argument');
SELECT ok((SELECT string_agg(x, ' ') FROM pg_temp.explain_lines(
               $$SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'editor', idempotency_key => k)
                   FROM (SELECT gen_random_uuid()::text AS k) s$$) x)
          ~ 'COALESCE\(credits\._reserve_fast\(.*credits\._reserve\(', 'but is with the value from a sub-select');

-- Reserve: the common case.
SELECT credits._reserve_fast('acme', 30, 'editor', 'rewrite', NULL, '15 minutes', '{"project": "p"}')::text AS r1 \gset
SELECT isnt(:'r1'::text, NULL::text, 'the fast path reserves the common case');
SELECT results_eq(format($$SELECT status, amount, action, cardinality(draw_buckets), draw_amounts, metadata->>'project',
                                  expires_at - created_at FROM credits.reservations WHERE reservation_id = %L$$, :'r1'),
                  $$VALUES ('pending', 30::numeric, 'rewrite', 1, ARRAY[30]::numeric[], 'p', interval '15 minutes')$$,
                  'it records the reservation with its one draw');
SELECT results_eq($$SELECT held FROM credits.buckets WHERE account_id = 'acme' AND kind = 'allocation'$$,
                  $$VALUES (30::numeric)$$, 'the draw is held on the allocation bucket');
SELECT is(pg_temp.fig('acme', 'available'), 69::numeric, 'and on the account (100 - 1 - 30)');

-- Reserve with an idempotency key: the key is stored with the request that
-- the general path compares a replay against (sql/reserve.sql).
SELECT credits._reserve_fast('keyed', 5, 'editor', 'draft', 'key-1', '15 minutes', '{"n": 1.50}')::text AS k1 \gset
SELECT isnt(:'k1'::text, NULL::text, 'the fast path reserves with an idempotency key');
SELECT results_eq($$SELECT request, result FROM credits.idempotency_keys WHERE account_id = 'keyed' AND fn = 'reserve' AND key = 'key-1'$$,
                  format($$VALUES ('{"amount": 5, "product": "editor", "action": "draft", "ttl": 900, "metadata": {"n": 1.5}}'::jsonb, %L)$$, :'k1'),
                  'and stores the key with the request and the reservation id');
SELECT is(pg_temp.fig('keyed', 'available'), 95::numeric, 'the hold is taken once');
SET LOCAL track_functions = 'all';
SELECT coalesce((SELECT calls FROM pg_stat_xact_user_functions WHERE funcname = '_reserve'), 0) AS general_before \gset
SELECT is(credits_reserve(account_id => 'keyed', amount => 5.0, product => 'editor', action => 'draft',
                          idempotency_key => 'key-1', metadata => '{"n": 1.5}')::text, :'k1',
          'a replay returns the first reservation');
SELECT is((SELECT calls FROM pg_stat_xact_user_functions WHERE funcname = '_reserve') - :general_before, 1::bigint,
          'answered by the general path');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'keyed', amount => 5, product => 'editor', idempotency_key => 'key-1')$$,
                 'CR006', NULL, 'which refuses the key with other arguments');
SELECT (SELECT calls FROM pg_stat_xact_user_functions WHERE funcname = '_reserve') AS general_before \gset
SELECT credits_reserve(account_id => 'keyed', amount => 7, product => 'editor', idempotency_key => 'key-2')::text AS k2 \gset
SELECT is((SELECT calls FROM pg_stat_xact_user_functions WHERE funcname = '_reserve') - :general_before, 0::bigint,
          'a new key goes through credits_reserve without the general path');
SELECT is((SELECT result FROM credits.idempotency_keys WHERE account_id = 'keyed' AND key = 'key-2'), :'k2',
          'its key is stored');
SELECT is(pg_temp.fig('keyed', 'available'), 88::numeric, 'and its hold taken (100 - 5 - 7)');

-- Reserve: everything else is left to the general path, with nothing written.
SELECT pg_temp.state() AS before \gset
SELECT is(credits._reserve_fast('keyed', 5, 'editor', 'draft', 'key-1', '15 minutes', '{"n": 1.5}'), NULL, 'not a replay of a key');
SELECT is(credits._reserve_fast('keyed', 5, 'editor', NULL, '  ', '15 minutes', '{}'), NULL, 'not for a blank idempotency key');
SELECT is(credits._reserve_fast('acme', 5, 'newproduct', NULL, NULL, '15 minutes', '{}'), NULL, 'not for a product not yet registered');
SELECT is(credits._reserve_fast('acme', 5, 'retired', NULL, NULL, '15 minutes', '{}'), NULL, 'not for a disabled product');
SELECT is(credits._reserve_fast('acme', 5, 'seo', NULL, NULL, '15 minutes', '{}'), NULL, 'not for a product disabled for the account');
SELECT is(credits._reserve_fast('own', 5, 'editor', NULL, NULL, '15 minutes', '{}'), NULL, 'not for a BYOK account');
SELECT is(credits._reserve_fast('acme', 70, 'editor', NULL, NULL, '15 minutes', '{}'), NULL, 'not beyond the live buckets');
SELECT is(credits._reserve_fast('nobody', 5, 'editor', NULL, NULL, '15 minutes', '{}'), NULL, 'not for an unknown account');
SELECT is(credits._reserve_fast('acme', 0.0000001, 'editor', NULL, NULL, '15 minutes', '{}'), NULL, 'not for a bad amount');
SELECT is(credits._reserve_fast('  ', 5, 'editor', NULL, NULL, '15 minutes', '{}'), NULL, 'not for a blank account id');
SELECT is(credits._reserve_fast('acme', 5, 'editor', '', NULL, '15 minutes', '{}'), NULL, 'not for an empty action');
SELECT is(credits._reserve_fast('acme', 5, 'editor', NULL, NULL, '-1 minute', '{}'), NULL, 'not for a negative ttl');
SELECT is(credits._reserve_fast('acme', 5, 'editor', NULL, NULL, '15 minutes', '[1]'), NULL, 'not for metadata that is not an object');
SELECT is(credits._reserve_fast('acme', NULL, 'editor', NULL, NULL, '15 minutes', '{}'), NULL, 'not for a NULL amount');
SELECT is(pg_temp.state(), :'before', 'a declined fast path writes nothing');

-- Commit: the common case.
SELECT is(credits._commit_fast(:'r1', 25, false, NULL), 25::numeric, 'the fast path commits the common case');
SELECT results_eq(format($$SELECT status, charged, draw_amounts FROM credits.reservations WHERE reservation_id = %L$$, :'r1'),
                  $$VALUES ('committed', 25::numeric, ARRAY[25]::numeric[])$$, 'it records what it charged to the bucket');
SELECT results_eq(format($$SELECT kind, amount, product, action, seq > 1, length(hash) FROM credits.ledger WHERE reservation_id = %L$$, :'r1'),
                  $$VALUES ('charge', -25::numeric, 'editor', 'rewrite', true, 64)$$,
                  'and writes one chained ledger row');
SELECT results_eq($$SELECT used, actions FROM credits.usage_rollup WHERE account_id = 'acme' AND product = 'editor'$$,
                  $$VALUES (26::numeric, 2)$$, 'and adds it to the usage roll-up');
SELECT is(pg_temp.fig('acme', 'available'), 74::numeric, 'the rest of the hold is released (100 - 1 - 25)');
SELECT is((SELECT count(*) FROM credits_verify()), 0::bigint, 'the chain, the roll-up and every balance verify');

-- Commit: everything else is left to the general path, with nothing written.
SELECT credits_reserve(account_id => 'acme', amount => 10, product => 'editor')::text AS r2 \gset
SELECT pg_temp.state() AS before \gset
SELECT is(credits._commit_fast(:'r1', 25, false, NULL), NULL, 'not a repeated commit');
SELECT is(credits._commit_fast(:'r2', 11, false, NULL), NULL, 'not more than reserved');
SELECT is(credits._commit_fast(:'r2', 5, NULL, NULL), NULL, 'not with force NULL');
SELECT is(credits._commit_fast(:'r2', 5, false, 'other'), NULL, 'not with another account_id');
SELECT is(credits._commit_fast('00000000-0000-0000-0000-000000000000', 5, false, NULL), NULL, 'not an unknown reservation');
SELECT is(pg_temp.state(), :'before', 'a declined fast path writes nothing');
SELECT credits_reserve(account_id => 'flex', amount => 15, product => 'editor')::text AS r3 \gset
SELECT is(credits._commit_fast(:'r3', 15, false, NULL), NULL, 'not a hold that took overage');
SELECT is(credits_commit(:'r3', 15), 15::numeric, 'which the general path commits');

-- The edges of the common case stay on the fast paths: a reserve of
-- exactly the free credits, and commits of exactly the amount reserved
-- (given), of 0 and of an amount with six decimals.
SELECT credits_account_upsert(account_id => 'edges', plan_id => 'pro');
SELECT credits._reserve_fast('edges', 40, 'editor', NULL, NULL, '15 minutes', '{}')::text AS e1 \gset
SELECT credits._reserve_fast('edges', 30, 'editor', NULL, NULL, '15 minutes', '{}')::text AS e2 \gset
SELECT credits._reserve_fast('edges', 30, 'editor', NULL, NULL, '15 minutes', '{}')::text AS e3 \gset
SELECT is(pg_temp.fig('edges', 'available'), 0::numeric, 'the fast path reserves the last 30 free credits');
SELECT is(credits._commit_fast(:'e1', 40, false, NULL), 40::numeric, 'it commits exactly the amount reserved');
SELECT is(credits._commit_fast(:'e2', 0, false, NULL), 0::numeric, 'and 0');
SELECT is(credits._commit_fast(:'e3', 29.999999, false, NULL), 29.999999::numeric, 'and an amount with six decimals');

-- A hold the first bucket cannot cover is drawn across the buckets.
SELECT credits_grant(account_id => 'acme', amount => 20, kind => 'topup');
SELECT credits._reserve_fast('acme', 70, 'editor', NULL, NULL, '15 minutes', '{}')::text AS r4 \gset
SELECT results_eq(format($$SELECT draw_amounts FROM credits.reservations WHERE reservation_id = %L$$, :'r4'),
                  $$VALUES (ARRAY[64, 6]::numeric[])$$, 'the fast path draws across buckets in order (64 + 6)');
SELECT is(credits._commit_fast(:'r4', 70, false, NULL), NULL, 'not a hold drawn from two buckets');
SELECT is(credits_commit(:'r4', 70), 70::numeric, 'which the general path commits');
SELECT is((SELECT count(*) FROM credits_verify()), 0::bigint, 'and everything verifies');

-- A ttl of 1,000 years or more is left to the general path, which takes a
-- hold ending before the year 10000 and refuses any other with 22023 (the
-- clock is pinned at 2026-03-10 12:00 UTC); a ttl beyond what timestamptz
-- holds once failed in the fast path with a bare 22008.
SELECT credits_account_upsert(account_id => 'far', plan_id => 'pro');
SELECT is(credits._reserve_fast('far', 1, 'editor', NULL, NULL, '1000 years', '{}'), NULL,
          'a ttl of 1000 years is left to the general path');
SELECT credits_reserve(account_id => 'far', amount => 1, product => 'editor',
                       ttl => '9999-12-31 23:59:59.999999+00'::timestamptz - '2026-03-10 12:00:00+00')::text AS r5 \gset
SELECT is((SELECT expires_at FROM credits.reservations WHERE reservation_id = :'r5'),
          '9999-12-31 23:59:59.999999+00'::timestamptz, 'which holds until the last microsecond of the year 9999');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'far', amount => 1, product => 'editor',
                       ttl => '10000-01-01 00:00:00+00'::timestamptz - '2026-03-10 12:00:00+00')$$,
                 '22023', 'ttl must end before the year 10000', 'and refuses a hold ending at the start of the year 10000');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'far', amount => 1, product => 'editor', ttl => '300000 years')$$,
                 '22023', 'ttl must end before the year 10000', 'or a ttl past what timestamptz holds');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'far', amount => 1, product => 'editor', ttl => '178000000 years')$$,
                 '22023', 'ttl must end before the year 10000', 'or the longest interval');
SELECT is(credits_commit(:'r5', 1), 1::numeric, 'the long hold commits');
SELECT is((SELECT count(*) FROM credits_verify()), 0::bigint, 'and everything verifies');

-- A hold that outlived its bucket (drawn from a promo that expired before
-- it, or pending across a reset) is left to the general path, which writes
-- off what the commit releases to the expired bucket. Until 0.3.5 the fast
-- path gave it back to that bucket: expired credits counted in the
-- account's balance until its next_event, and credits_verify() said so.
SELECT credits_plan_upsert(plan_id => 'none', allocation => 0, reset => 'calendar_month');
SELECT credits_account_upsert(account_id => 'promo', plan_id => 'none');
SELECT credits_grant(account_id => 'promo', amount => 20, kind => 'promo', expires_at => '2026-03-10 12:30+00');
SELECT credits_grant(account_id => 'promo', amount => 20, kind => 'pack');
SELECT credits._reserve_fast('promo', 20, 'editor', NULL, NULL, '1 hour', '{}')::text AS r6 \gset
SET LOCAL credits.now = '2026-03-10 12:45:00+00';
SELECT is(credits._commit_fast(:'r6', 15, false, NULL), NULL, 'not a hold whose bucket expired since');
SELECT is(credits_commit(:'r6', 15), 15::numeric, 'which the general path commits');
SELECT is((SELECT sum(amount) FROM credits.ledger WHERE reservation_id = :'r6' AND kind = 'expire'), -5::numeric,
          'writing off the 5 it releases to the expired promo');
SELECT is(pg_temp.fig('promo', 'available'), 20::numeric, 'so that only the pack is available');
SELECT credits_account_upsert(account_id => 'across', plan_id => 'pro');
SELECT credits._reserve_fast('across', 30, 'editor', NULL, NULL, '30 days', '{}')::text AS r7 \gset
SET LOCAL credits.now = '2026-04-02 00:00:00+00';
SELECT credits_reset(account_id => 'across');
SELECT is(credits._commit_fast(:'r7', 25, false, NULL), NULL, 'nor a hold pending across a reset');
SELECT is(credits_commit(:'r7', 25), 25::numeric, 'which the general path commits');
SELECT is((SELECT sum(amount) FROM credits.ledger WHERE reservation_id = :'r7' AND kind = 'expire'), -5::numeric,
          'writing off the 5 it releases to the last period''s allocation');
SELECT is((SELECT count(*) FROM credits_verify()), 0::bigint, 'and everything verifies');
SET LOCAL credits.now = '2026-03-10 12:00:00+00';

-- credits.fast_paths = off: the fast paths decline every call, having
-- written nothing, and the general path takes it (scripts/test.sh runs the
-- other files again so). Only a superuser may turn them off.
SELECT credits_account_upsert(account_id => 'off', plan_id => 'pro');
SELECT credits._reserve_fast('off', 5, 'editor', NULL, NULL, '15 minutes', '{}')::text AS r8 \gset
SET LOCAL credits.fast_paths = off;
SELECT pg_temp.state() AS before_off \gset
SELECT is(credits._reserve_fast('off', 5, 'editor', NULL, NULL, '15 minutes', '{}'), NULL,
          'with credits.fast_paths off the reserve fast path declines the common case');
SELECT is(credits._commit_fast(:'r8', 5, false, NULL), NULL, 'so does the commit fast path');
SELECT is(pg_temp.state(), :'before_off', 'having written nothing');
SELECT is(credits_commit(:'r8', 5), 5::numeric, 'and the general path commits');
SELECT isnt(credits_reserve(account_id => 'off', amount => 5, product => 'editor'), NULL, 'and reserves');
RESET credits.fast_paths;
SELECT isnt(credits._reserve_fast('off', 5, 'editor', NULL, NULL, '15 minutes', '{}'), NULL,
            'back on, the fast path takes it again');
CREATE ROLE t_fast_app IN ROLE credits_app;
SET LOCAL ROLE t_fast_app;
SELECT throws_ok($$SET credits.fast_paths = off$$, '42501', NULL, 'only a superuser may turn the fast paths off');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
