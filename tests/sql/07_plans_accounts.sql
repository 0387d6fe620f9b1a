\ir helpers.inc
SELECT plan(31);

SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100, reset => 'billing_date');
SELECT credits_plan_upsert(plan_id => 'team', allocation => 50);
SELECT credits_plan_upsert(plan_id => 'mini', allocation => 10);

-- Billing-date periods follow the anchor; a 31st falls on the month's last day.
SELECT credits_account_upsert(account_id => 'acme', plan_id => 'pro', billing_anchor => '2026-01-31 08:00+00');
SELECT is(credits_balance('acme') #>> '{summary,period_start}', '2026-02-28T08:00:00.000000Z', 'period start on Feb 28');
SELECT is(credits_balance('acme') #>> '{summary,period_end}', '2026-03-31T08:00:00.000000Z', 'period end back on the 31st');
SELECT is((credits_balance('acme') #>> '{summary,days_until_reset}')::int, 21, 'days until reset');
SELECT is(pg_temp.fig('acme', 'allocation'), 100::numeric, 'full allocation for a partial first period');

-- Plan changes take effect at once: new allocation less what was used.
SELECT credits_commit(credits_reserve(account_id => 'acme', amount => 30, product => 'editor'));
SELECT credits_account_upsert(account_id => 'acme', plan_id => 'team');
SELECT is(pg_temp.fig('acme', 'available'), 20::numeric, 'downgrade: 50 less the 30 used');
SELECT is(pg_temp.fig('acme', 'allocation'), 50::numeric, 'the allocation is the new plan''s');
SELECT ok(EXISTS (SELECT 1 FROM credits.ledger WHERE account_id = 'acme' AND kind = 'plan_change' AND amount = -50),
          'as one plan_change ledger row');
SELECT credits_account_upsert(account_id => 'acme', plan_id => 'mini');
SELECT is(pg_temp.fig('acme', 'available'), 0::numeric, 'never below zero');
SELECT credits_account_upsert(account_id => 'acme', plan_id => 'pro');
SELECT is(pg_temp.fig('acme', 'available'), 70::numeric, 'upgrade: 100 less the 30 used');
SELECT credits_plan_upsert(plan_id => 'cal', allocation => 100, reset => 'calendar_month');
SELECT credits_account_upsert(account_id => 'acme', plan_id => 'cal');
SELECT is(credits_balance('acme') #>> '{summary,period_end}', '2026-04-01T00:00:00.000000Z',
          'moving to a calendar plan ends the period on the 1st');
SELECT credits_account_upsert(account_id => 'acme', plan_id => 'pro');

-- A plan change retargets the period's allocation and no other bucket.
SELECT credits_account_upsert(account_id => 'packed', plan_id => 'pro');
SELECT credits_grant(account_id => 'packed', amount => 60, kind => 'pack');
SELECT credits_commit(credits_reserve(account_id => 'packed', amount => 30, product => 'editor'));
SELECT credits_account_upsert(account_id => 'packed', plan_id => 'team');
SELECT results_eq($$SELECT kind, trim_scale(balance) FROM credits.buckets WHERE account_id = 'packed' ORDER BY kind$$,
                  $$VALUES ('allocation', 20::numeric), ('pack', 60::numeric)$$,
                  'a downgrade takes 50 from the allocation and leaves the pack');

-- A downgrade never takes away what a pending hold keeps: the hold was
-- made under the old plan and may still be committed in full.
SELECT credits_account_upsert(account_id => 'holder', plan_id => 'pro');
SELECT credits_reserve(account_id => 'holder', amount => 70, product => 'editor')::text AS h1 \gset
SELECT credits_account_upsert(account_id => 'holder', plan_id => 'team');
SELECT is(pg_temp.fig('holder', 'allocation'), 70::numeric, 'a downgrade keeps the allocation a pending hold keeps');
SELECT is(pg_temp.fig('holder', 'available'), 0::numeric, 'and leaves nothing else');
SELECT is(credits_commit(reservation_id => :'h1'), 70::numeric, 'the hold is committed in full');

-- A hold made before a switch to BYOK stays metered.
SELECT credits_account_upsert(account_id => 'switcher', plan_id => 'pro');
SELECT credits_reserve(account_id => 'switcher', amount => 30, product => 'editor')::text AS s1 \gset
SELECT credits_reserve(account_id => 'switcher', amount => 30, product => 'editor')::text AS s2 \gset
SELECT credits_account_upsert(account_id => 'switcher', byok => true);
SELECT throws_ok(format('SELECT credits_commit(reservation_id => %L, amount => 40)', :'s1'), 'CR001', NULL,
                 'after a switch to BYOK, more than a metered hold holds is judged as metered usage');
SELECT is(credits_commit(reservation_id => :'s2'), 30::numeric, 'what it holds is committed');
SELECT is((SELECT byok FROM credits.reservations WHERE reservation_id = :'s2'), false, 'as metered usage');

-- NULL keeps what is there.
SELECT credits_account_upsert(account_id => 'acme');
SELECT is((SELECT plan_id FROM credits.accounts WHERE account_id = 'acme'), 'pro', 'NULL plan keeps the plan');

-- BYOK: logged, never blocked, no balance effect.
SELECT credits_account_upsert(account_id => 'own-keys', plan_id => 'mini', byok => true);
SELECT is(pg_temp.fig('own-keys', 'available'), 0::numeric, 'a BYOK account has no allocation');
SELECT credits_reserve(account_id => 'own-keys', amount => 5000, product => 'editor')::text AS b1 \gset
SELECT is(credits_commit(reservation_id => :'b1', amount => 7000), 7000::numeric, 'BYOK usage is never blocked');
SELECT is((SELECT count(*) FROM credits.ledger WHERE account_id = 'own-keys'), 0::bigint, 'and has no balance effect');
SELECT ok((SELECT byok AND charged = 7000 FROM credits.reservations WHERE reservation_id = :'b1'), 'it is logged as BYOK usage');
SELECT throws_ok($$SELECT credits_grant(account_id => 'own-keys', amount => 5)$$, 'CR014', NULL, 'BYOK accounts take no grants');
SELECT matches(pg_temp.error_context($$SELECT credits_grant(account_id => 'own-keys', amount => 5)$$),
               '^PL/pgSQL function (public\.)?credits_grant\([a-z, ]+\) line [0-9]+ at RAISE\nSQL statement "SELECT credits_grant\(',
               'the refusal''s CONTEXT is credits_grant''s RAISE: no helper''s frame, no internal statement');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'own-keys', amount => 'NaN', product => 'editor')$$, '22023', NULL,
                 'BYOK reserves still check their input');
SELECT credits_reserve(account_id => 'own-keys', amount => 5, product => 'editor', ttl => '10 minutes')::text AS b2 \gset
SELECT is((SELECT next_event FROM credits.accounts WHERE account_id = 'own-keys'),
          (SELECT expires_at FROM credits.reservations WHERE reservation_id = :'b2'),
          'a BYOK hold''s expiry is its account''s next event, as any hold''s is');
SELECT next_event AS acme_next FROM credits.accounts WHERE account_id = 'acme' \gset
SELECT credits_reserve(account_id => 'own-keys', amount => 5, product => 'editor', ttl => '1 minute')::text AS b3 \gset
SELECT credits_reserve(account_id => 'own-keys', amount => 5, product => 'editor', ttl => '5 minutes');
SELECT is((SELECT next_event FROM credits.accounts WHERE account_id = 'own-keys'),
          (SELECT expires_at FROM credits.reservations WHERE reservation_id = :'b3'),
          'an earlier one brings it forward, and a later one leaves it there');
SELECT is((SELECT next_event FROM credits.accounts WHERE account_id = 'acme'), :'acme_next'::timestamptz,
          'and no other account''s next event moves');
SELECT is(credits_commit(reservation_id => :'b3', amount => 6), 6::numeric, 'a BYOK hold is committed');
SELECT results_eq($$SELECT status, count(*) FROM credits.reservations WHERE account_id = 'own-keys' GROUP BY 1 ORDER BY 1$$,
                  $$VALUES ('committed', 2::bigint), ('pending', 2::bigint)$$,
                  'alone: the account''s other holds stay pending');
SELECT is_empty('SELECT * FROM credits_verify()', 'credits_verify() is empty');

SELECT * FROM finish();
ROLLBACK;
