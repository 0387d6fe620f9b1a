\ir helpers.inc
SELECT plan(13);

SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100);
SELECT credits_account_upsert(account_id => 'acme', plan_id => 'pro');
SELECT credits_account_upsert(account_id => 'beta', plan_id => 'pro');

SELECT credits_reserve(account_id => 'acme', amount => 5, product => 'editor', idempotency_key => 'k1')::text AS r1 \gset
SELECT pg_temp.state() AS before \gset
SELECT is(credits_reserve(account_id => 'acme', amount => 5.000, product => 'editor', idempotency_key => 'k1')::text, :'r1',
          'a replay (amounts compared by value) returns the first reservation');
SELECT is(pg_temp.state(), :'before', 'and changes nothing');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 6, product => 'editor', idempotency_key => 'k1')$$,
                 'CR006', NULL, 'the same key with other arguments fails');
SELECT isnt(credits_reserve(account_id => 'beta', amount => 5, product => 'editor', idempotency_key => 'k1')::text, :'r1',
            'keys are scoped per account');
SELECT lives_ok($$SELECT credits_grant(account_id => 'acme', amount => 5, idempotency_key => 'k1')$$,
                'keys are scoped per function');

-- A failed call stores no key.
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 500, product => 'editor', idempotency_key => 'big')$$,
                 'CR001', NULL, 'a keyed reserve that does not fit fails');
SELECT is((SELECT count(*) FROM credits.idempotency_keys WHERE key = 'big'), 0::bigint, 'and stores no key');
SELECT credits_grant(account_id => 'acme', amount => 500, kind => 'pack');
SELECT lives_ok($$SELECT credits_reserve(account_id => 'acme', amount => 500, product => 'editor', idempotency_key => 'big')$$,
                'so the same key works once the credits are there');

-- Grants.
SELECT credits_grant(account_id => 'acme', amount => 20, kind => 'pack', idempotency_key => 'pay-1')::text AS g1 \gset
SELECT is(credits_grant(account_id => 'acme', amount => 20, kind => 'pack', idempotency_key => 'pay-1')::text, :'g1',
          'a replayed grant returns the first bucket');
SELECT is((SELECT count(*) FROM credits.buckets WHERE bucket_id = :'g1'), 1::bigint, 'and grants once');
-- A replay returns its first result whatever became of the account since:
-- no credits left, or the product disabled for it.
SELECT credits_account_upsert(account_id => 'gamma', plan_id => 'pro');
SELECT credits_reserve(account_id => 'gamma', amount => 60, product => 'seo', idempotency_key => 'g1')::text AS g1r \gset
SELECT credits_commit(credits_reserve(account_id => 'gamma', amount => 40, product => 'seo'));
SELECT credits_account_product_set(account_id => 'gamma', product => 'seo', enabled => false);
SELECT is(credits_reserve(account_id => 'gamma', amount => 60, product => 'seo', idempotency_key => 'g1')::text, :'g1r',
          'a replay after its product was disabled returns the first reservation');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'gamma', amount => 1, product => 'seo', idempotency_key => 'g2')$$,
                 'CR009', NULL, 'a new key is refused');
SELECT is_empty('SELECT * FROM credits_verify()', 'credits_verify() is empty');

SELECT * FROM finish();
ROLLBACK;
