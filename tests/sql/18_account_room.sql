\ir helpers.inc
SELECT plan(24);

-- An account's figures are numeric(20,6): it holds at most
-- 99999999999999.999999. A reset keeps what outlives the period, carries
-- up to the rollover cap of what is left of the allocation and rollover,
-- and grants the allocation; a write after which that would not fit is
-- refused (22003), since the account could then not be rolled forward and
-- every write path on it would fail.
SELECT credits_plan_upsert(plan_id => 'big', allocation => 40000000000000, reset => 'calendar_month',
                           rollover_cap => 10000000000000);
SELECT credits_plan_upsert(plan_id => 'small', allocation => 10, reset => 'calendar_month');
SELECT credits_pack_upsert(pack_id => 'huge', credits => 50000000000000, price => 1);
SELECT credits_account_upsert(account_id => 'whale', plan_id => 'big');
SELECT credits_account_upsert(account_id => 'minnow', plan_id => 'small');
SELECT credits_account_upsert(account_id => 'own', plan_id => 'small', byok => true);

SELECT pg_temp.state() AS before \gset
-- whale: allocation 4e13 (all unused), rollover cap 1e13. At the reset:
-- packs + min(1e13, 4e13) + 4e13 must fit, so packs up to 5e13 - 1e-6.
SELECT is(pg_temp.error_fields($$SELECT credits_grant(account_id => 'whale', amount => 50000000000000, kind => 'pack')$$),
          ARRAY['22003', 'account "whale" would not fit its next reset',
                'At the reset on 2026-04-01 it would keep 50000000000000 that outlive the period, carry up to 10000000000000 '
                'and get the 40000000000000 of plan "big": more than 99999999999999.999999, the most an account holds.',
                'Add fewer credits, or put the account on a plan with a smaller allocation or rollover cap.'],
          'a pack that the next reset could not carry, with what the reset would add up');
SELECT throws_ok($$SELECT credits_purchase(account_id => 'whale', pack => 'huge', payment_ref => 'pi_1')$$,
                 '22003', 'account "whale" would not fit its next reset', 'nor bought');
SELECT throws_ok($$SELECT credits_grant(account_id => 'whale', amount => 50000000000000, kind => 'promo',
                                        expires_at => '2026-06-01')$$,
                 '22003', 'account "whale" would not fit its next reset', 'nor a promo that outlives the period');
SELECT throws_ok($$SELECT credits_grant(account_id => 'whale', amount => 60000000000000, kind => 'topup')$$,
                 '22003', 'account "whale" cannot hold more credits', 'a top-up past what an account holds now');
SELECT is(pg_temp.state(), :'before', 'refused grants leave nothing behind');

SELECT lives_ok($$SELECT credits_grant(account_id => 'whale', amount => 49999999999999.999999, kind => 'pack')$$,
                'a pack that just fits is granted');
SELECT lives_ok($$SELECT credits_grant(account_id => 'whale', amount => 5000000000000, kind => 'topup')$$,
                'so is a top-up that expires at the reset, while the account holds it');
SELECT throws_ok($$SELECT credits_grant(account_id => 'whale', amount => 0.000001, kind => 'adjustment')$$,
                 '22003', 'account "whale" would not fit its next reset', 'but not one more credit that outlives it');
SELECT lives_ok($$SELECT credits_grant(account_id => 'whale', amount => 5000000000000, kind => 'topup')$$,
                'and a second one, to exactly the most an account holds');
SELECT is((pg_temp.error_fields($$SELECT credits_grant(account_id => 'whale', amount => 0.000001, kind => 'topup')$$))[1:3],
          ARRAY['22003', 'account "whale" cannot hold more credits',
                'Its balance of 99999999999999.999999 and the 0.000001 added would pass 99999999999999.999999, the most an account holds.'],
          'but not one more credit');

-- The plan side: what a reset grants.
SELECT pg_temp.state() AS before \gset
SELECT throws_ok($$SELECT credits_plan_upsert(plan_id => 'big', allocation => 40000000000001, reset => 'calendar_month',
                                             rollover_cap => 10000000000000)$$,
                 '22003', 'account "whale" would not fit its next reset', 'a plan raised past what its accounts can carry');
SELECT throws_ok($$SELECT credits_plan_upsert(plan_id => 'giant', allocation => 60000000000000, rollover_cap => 60000000000000)$$,
                 '22003', 'plan "giant" grants more than an account holds', 'a plan whose first reset would not fit');
SELECT is(pg_temp.state(), :'before', 'refused plans leave nothing behind');
SELECT lives_ok($$SELECT credits_grant(account_id => 'minnow', amount => 55000000000000, kind => 'pack')$$,
                'an account on a small plan holds a big pack');
SELECT pg_temp.state() AS before \gset
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'minnow', plan_id => 'big')$$,
                 '22003', 'account "minnow" would not fit its next reset', 'and cannot move to a plan it could not carry');
SELECT is(pg_temp.state(), :'before', 'the refused move leaves nothing behind');

-- And the account that just fits rolls forward at its reset.
SET LOCAL credits.now = '2026-04-02 00:00:00+00';
SELECT is(credits_reset('whale'), 1, 'the account that just fits is rolled forward');
SELECT is(pg_temp.fig('whale', 'available'), 99999999999999.999999::numeric,
          'to the most an account holds: the pack, a rollover of 1e13 and the allocation');

-- Figures this large stay exact to the micro-credit. Postgres' numeric
-- division keeps about 16 significant digits, so a usage alert's line or a
-- quote computed by dividing came out rounded to 3 or 4 decimals here.
SELECT credits_plan_upsert(plan_id => 'vast', allocation => 12345678901234.123457, reset => 'calendar_month');
SELECT credits_account_upsert(account_id => 'vast', plan_id => 'vast', alert_percents => '{81}');
-- 81% of the allocation is 9999999909999.64000017: the alert is due at the
-- first micro-credit at or above it.
SELECT is((SELECT next_alert_at FROM credits.accounts WHERE account_id = 'vast'), 9999999909999.640001,
          'a usage alert''s line is the first micro-credit at or above its percentage of a vast allocation');
SELECT credits_commit(credits_reserve(account_id => 'vast', amount => 9999999909999.64, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.events WHERE account_id = 'vast' AND kind = 'usage_alert'), 0::bigint,
          'a usage just below 81% raises no alert');
SELECT credits_commit(credits_reserve(account_id => 'vast', amount => 0.000001, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.events WHERE account_id = 'vast' AND kind = 'usage_alert'), 1::bigint,
          'one micro-credit more raises it');
SELECT credits_price_upsert(product => 'images', action => 'poster', unit => 'image', price => 99999999999999.999999);
SELECT credits_price_upsert(product => 'images', action => 'mural', unit => 'image', price => 1234567890123.456123);
SELECT credits_price_upsert(product => 'editor', action => 'book', unit => 'input_tokens_1k', price => 1);
SELECT is(credits_quote(product => 'images', action => 'poster', images => 1), 99999999999999.999999,
          'a quote of exactly the most an amount holds is given');
SELECT is(credits_quote(product => 'images', action => 'mural', images => 1), 1234567890123.456123,
          'a vast quote is exact to the micro-credit');
SELECT is(credits_quote(product => 'editor', action => 'book', input_tokens => 12345678901.234567), 12345678.901235,
          'tokens per thousand are exact before the quote is rounded up to the micro-credit');

SELECT * FROM finish();
ROLLBACK;
