\ir helpers.inc
SELECT plan(60);

SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100);
SELECT credits_account_upsert(account_id => 'acme', plan_id => 'pro');
SELECT credits_reserve(account_id => 'acme', amount => 10, product => 'editor')::text AS r \gset
SELECT pg_temp.state() AS before \gset

-- Amounts, through each function that takes one.
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => NULL, product => 'editor')$$, '22004', NULL, 'reserve: NULL amount');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 0, product => 'editor')$$, '22023', NULL, 'reserve: zero amount');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => -5, product => 'editor')$$, '22023', NULL, 'reserve: negative amount');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 'NaN', product => 'editor')$$, '22023', NULL, 'reserve: NaN');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 'Infinity', product => 'editor')$$, '22023', NULL, 'reserve: Infinity');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => '-Infinity', product => 'editor')$$, '22023', NULL, 'reserve: -Infinity');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 1e14, product => 'editor')$$, '22003', NULL, 'reserve: beyond numeric(20,6)');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 1e300, product => 'editor')$$, '22003', NULL, 'reserve: absurdly large');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 0.0000001, product => 'editor')$$, '22023', NULL, 'reserve: more than 6 decimals');
SELECT throws_ok($$SELECT credits_grant(account_id => 'acme', amount => NULL)$$, '22004', NULL, 'grant: NULL amount');
SELECT throws_ok($$SELECT credits_grant(account_id => 'acme', amount => -1)$$, '22023', NULL, 'grant: negative amount');
SELECT throws_ok($$SELECT credits_grant(account_id => 'acme', amount => 0)$$, '22023', 'amount must be greater than zero',
                 'grant: zero amount');
SELECT throws_ok($$SELECT credits_pack_upsert(pack_id => 'none', credits => 0, price => 1)$$, '22023',
                 'credits must be greater than zero', 'pack: no credits');
SELECT throws_ok($$SELECT credits_grant(account_id => 'acme', amount => 'NaN')$$, '22023', NULL, 'grant: NaN');
SELECT throws_ok(format('SELECT credits_commit(reservation_id => %L, amount => -1)', :'r'), '22023', NULL, 'commit: negative amount');
SELECT throws_ok(format('SELECT credits_commit(reservation_id => %L, amount => %L)', :'r', 'Infinity'), '22023', NULL, 'commit: Infinity');
SELECT throws_ok(format('SELECT credits_commit(reservation_id => %L, amount => 1e20)', :'r'), '22003', NULL, 'commit: huge amount');
SELECT throws_ok(format('SELECT credits_refund(reservation_id => %L, amount => 0)', :'r'), '22023', NULL, 'refund: zero amount');
SELECT throws_ok($$SELECT credits_plan_upsert(plan_id => 'x', allocation => -1)$$, '22023', NULL, 'plan: negative allocation');
SELECT throws_ok($$SELECT credits_plan_upsert(plan_id => 'x', allocation => NULL)$$, '22004', NULL, 'plan: NULL allocation');
SELECT throws_ok($$SELECT credits_plan_upsert(plan_id => 'x', allocation => 1, soft_limit => 'NaN')$$, '22023', NULL, 'plan: NaN soft limit');

-- Identifiers and labels.
SELECT throws_ok($$SELECT credits_reserve(account_id => NULL, amount => 1, product => 'editor')$$, '22004', NULL, 'reserve: NULL account');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 1, product => NULL)$$, '22004', NULL, 'reserve: NULL product');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 1, product => '')$$, '22023', NULL, 'reserve: empty product');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'editor', idempotency_key => repeat('k', 256))$$, '22023', NULL, 'reserve: key over 255 characters');
SELECT throws_ok($$SELECT credits_reserve(account_id => repeat('a', 256), amount => 1, product => 'editor')$$, '22023', NULL, 'reserve: account id over 255 characters');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'editor', ttl => '-1 minute')$$, '22023', NULL, 'reserve: negative ttl');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'editor', ttl => '0')$$, '22023', NULL, 'reserve: zero ttl');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'editor', ttl => NULL)$$, '22004', NULL, 'reserve: NULL ttl');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'editor', metadata => '[1]')$$, '22023', NULL, 'reserve: metadata not an object');

-- Enumerations.
SELECT throws_ok($$SELECT credits_grant(account_id => 'acme', amount => 1, kind => 'gift')$$, '22023', NULL, 'grant: unknown kind');
SELECT throws_ok($$SELECT credits_grant(account_id => 'acme', amount => 1, kind => NULL)$$, '22004', NULL, 'grant: NULL kind');
SELECT throws_ok($$SELECT credits_plan_upsert(plan_id => 'x', allocation => 1, limit_mode => 'medium')$$, '22023', NULL, 'plan: unknown limit mode');
SELECT throws_ok($$SELECT credits_plan_upsert(plan_id => 'x', allocation => 1, reset => 'weekly')$$, '22023', NULL, 'plan: unknown reset');
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'acme', limit_mode => 'medium')$$, '22023', NULL, 'account: unknown limit mode');

-- Grants with expiry.
SELECT throws_ok($$SELECT credits_grant(account_id => 'acme', amount => 1, kind => 'topup', expires_at => '2026-04-01')$$, '22023', NULL, 'grant: expires_at only for promos');
SELECT throws_ok($$SELECT credits_grant(account_id => 'acme', amount => 1, kind => 'promo', expires_at => '2026-01-01')$$, '22023', NULL, 'grant: promo expiring in the past');
SELECT throws_ok($$SELECT credits_grant(account_id => 'acme', amount => 1, kind => 'promo', expires_at => credits._now())$$, '22023', NULL, 'grant: promo expiring now');
-- Timestamps the reset planner reads back must lie in the years 1 to 9999
-- (UTC); before 0.3.5 a promo expiring in year 10000, or an anchor there,
-- was let in and left the account unable to roll forward (XX001), and an
-- anchor in year 290000 failed with XX000.
SELECT throws_ok($$SELECT credits_grant(account_id => 'acme', amount => 1, kind => 'promo',
                                        expires_at => make_timestamptz(10000, 1, 1, 0, 0, 0, 'UTC'))$$,
                 '22023', 'expires_at must be before the year 10000', 'grant: promo expiring in year 10000');
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'acme',
                                                 billing_anchor => make_timestamptz(20000, 1, 15, 0, 0, 0, 'UTC'))$$,
                 '22008', 'billing_anchor is out of range', 'account: anchor in year 20000');
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'far', plan_id => 'pro',
                                                 billing_anchor => make_timestamptz(290000, 1, 1, 0, 0, 0, 'UTC'))$$,
                 '22008', 'billing_anchor is out of range', 'account: anchor in year 290000');
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'bc', plan_id => 'pro',
                                                 billing_anchor => make_timestamptz(-1, 6, 1, 0, 0, 0, 'UTC'))$$,
                 '22008', 'billing_anchor is out of range', 'account: anchor in 1 BC');
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'inf', plan_id => 'pro', billing_anchor => 'infinity')$$,
                 '22023', 'billing_anchor must be a finite timestamp', 'account: an anchor at infinity');
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'acme', billing_anchor => '-infinity')$$,
                 '22023', 'billing_anchor must be a finite timestamp', 'account: a new anchor at -infinity');

-- The roll-forward planner's refusal of a state it cannot start from (only
-- rows changed by hand reach it now) carries a DETAIL and a HINT too.
SELECT is((pg_temp.error_fields($$SELECT credits._roll_plan('{}')$$))[1:2],
          ARRAY['XX001', 'cannot bring the account up to date'], 'roll plan: a state it cannot read is XX001');
SELECT ok((SELECT coalesce(f[3], '') <> '' AND coalesce(f[4], '') <> ''
             FROM pg_temp.error_fields($$SELECT credits._roll_plan('{}')$$) f),
          'with a DETAIL and a HINT');
-- So do the period functions' own refusals, behind the API's checks.
SELECT is((SELECT ARRAY[f[1], (coalesce(f[3], '') <> '' AND coalesce(f[4], '') <> '')::text]
             FROM pg_temp.error_fields($$SELECT credits._period_start('infinity', 'calendar_month', now())$$) f),
          ARRAY['22023', 'true'], 'period start of an infinite anchor: 22023 with a DETAIL and a HINT');
SELECT is((SELECT ARRAY[f[1], (coalesce(f[3], '') <> '' AND coalesce(f[4], '') <> '')::text]
             FROM pg_temp.error_fields($$SELECT credits._period_after(now(), 'weekly', now())$$) f),
          ARRAY['22023', 'true'], 'period of an unknown reset: 22023 with a DETAIL and a HINT');

-- Unknown things.
SELECT throws_ok($$SELECT credits_reserve(account_id => 'nobody', amount => 1, product => 'editor')$$, 'CR002', NULL, 'reserve: unknown account');
SELECT throws_ok($$SELECT credits_grant(account_id => 'nobody', amount => 1)$$, 'CR002', NULL, 'grant: unknown account');
SELECT throws_ok($$SELECT credits_balance('nobody')$$, 'CR002', NULL, 'balance: unknown account');
SELECT throws_ok($$SELECT credits_balance(NULL)$$, '22004', NULL, 'balance: NULL account');
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'new', plan_id => 'nope')$$, 'CR003', NULL, 'account: unknown plan');
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'new')$$, '22004', NULL, 'account: a new account needs a plan');
SELECT throws_ok($$SELECT credits_commit(reservation_id => gen_random_uuid())$$, 'CR004', NULL, 'commit: unknown reservation');
SELECT throws_ok($$SELECT credits_refund(reservation_id => gen_random_uuid())$$, 'CR004', NULL, 'refund: unknown reservation');
SELECT throws_ok($$SELECT credits_commit(reservation_id => NULL)$$, '22004', NULL, 'commit: NULL reservation');
SELECT throws_ok(format('SELECT credits_commit(reservation_id => %L, force => NULL)', :'r'), '22004', NULL, 'commit: NULL force');

SELECT is(pg_temp.state(), :'before', 'no refused call left anything behind');
SELECT is_empty('SELECT * FROM credits_verify()', 'credits_verify() is empty');

SELECT * FROM finish();
ROLLBACK;
