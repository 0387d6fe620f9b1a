\ir helpers.inc
SELECT plan(37);

SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100, reset => 'calendar_month');
SELECT credits_account_upsert(account_id => 'acme', plan_id => 'pro');
SELECT is(pg_temp.fig('acme', 'allocation'), 100::numeric, 'a new account gets its full allocation');
SELECT is(pg_temp.fig('acme', 'available'), 100::numeric, 'all of it is available');
SELECT is(credits_balance('acme') #>> '{summary,period_end}', '2026-04-01T00:00:00.000000Z', 'calendar periods end on the 1st');

-- Reserve, then commit less than reserved.
SELECT credits_reserve(account_id => 'acme', amount => 30, product => 'editor', action => 'rewrite',
                       metadata => '{"project": "p1", "session": "s1"}')::text AS r1 \gset
SELECT is(pg_temp.fig('acme', 'reserved'), 30::numeric, 'a reserve holds its amount');
SELECT is(pg_temp.fig('acme', 'available'), 70::numeric, 'a hold is not available');
SELECT is(pg_temp.fig('acme', 'used'), 0::numeric, 'a hold is not usage yet');
SELECT is(credits_commit(reservation_id => :'r1', amount => 25), 25::numeric, 'commit returns what it charged');
SELECT is(pg_temp.fig('acme', 'used'), 25::numeric, 'commit charges the amount');
SELECT is(pg_temp.fig('acme', 'reserved'), 0::numeric, 'commit releases the rest of the hold');
SELECT is(pg_temp.fig('acme', 'available'), 75::numeric, 'what was not charged is available again');
SELECT results_eq($$SELECT kind, amount, product, action FROM credits.ledger WHERE reservation_id = '$$ || :'r1' || $$'$$,
                  $$VALUES ('charge', -25::numeric, 'editor', 'rewrite')$$, 'the charge is one ledger row with product and action');
SELECT is((SELECT metadata->>'session' FROM credits.reservations WHERE reservation_id = :'r1'), 's1',
          'the reservation keeps its metadata (project, session)');

-- Repeating a commit.
SELECT pg_temp.state() AS before \gset
SELECT is(credits_commit(reservation_id => :'r1', amount => 25.000), 25::numeric, 'a repeated commit returns the first result');
SELECT is(pg_temp.state(), :'before', 'and changes nothing');
SELECT is(pg_temp.error_fields(format('SELECT credits_commit(reservation_id => %L, amount => 20.50)', :'r1')),
          ARRAY['CR011', format('reservation %s was already committed with another amount', :'r1'),
                'It was committed for 25; this call asks for 20.5.',
                'Repeat the commit with the same amount, or refund the difference with credits_refund().'],
          'a repeated commit with another amount fails, and says with which');

-- NULL amount charges the reserved amount; 0 releases everything.
SELECT credits_reserve(account_id => 'acme', amount => 10, product => 'seo')::text AS r2 \gset
SELECT is(credits_commit(reservation_id => :'r2'), 10::numeric, 'commit without amount charges what was reserved');
SELECT is(credits_commit(reservation_id => :'r2'), 10::numeric, 'and repeats');
SELECT credits_reserve(account_id => 'acme', amount => 10, product => 'seo')::text AS r3 \gset
SELECT is(credits_commit(reservation_id => :'r3', amount => 0), 0::numeric, 'commit of 0 releases the whole hold');
SELECT is(pg_temp.fig('acme', 'available'), 65::numeric, '100 - 25 - 10');

-- More than reserved: the excess must fit, all or nothing.
SELECT credits_reserve(account_id => 'acme', amount => 5, product => 'seo')::text AS r4 \gset
SELECT is(credits_commit(reservation_id => :'r4', amount => 15), 15::numeric, 'an excess that fits is charged');
SELECT is(pg_temp.fig('acme', 'available'), 50::numeric, '65 - 15');
SELECT credits_reserve(account_id => 'acme', amount => 5, product => 'seo')::text AS r5 \gset
SELECT pg_temp.state() AS before \gset
SELECT throws_ok(format('SELECT credits_commit(reservation_id => %L, amount => 60)', :'r5'), 'CR001', NULL,
                 'an excess that does not fit fails');
SELECT is(pg_temp.state(), :'before', 'and leaves nothing behind');
SELECT is(credits_commit(reservation_id => :'r5', amount => 60, force => true), 60::numeric,
          'with force the excess that does not fit is recorded as debt');
SELECT is(pg_temp.fig('acme', 'debt'), 10::numeric, 'debt = 60 - 50');
SELECT is(pg_temp.fig('acme', 'available'), 0::numeric, 'everything else was charged');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'seo')$$, 'CR008', NULL,
                 'while an account has debt its reserves fail');
SELECT credits_grant(account_id => 'acme', amount => 25, kind => 'pack');
SELECT is(pg_temp.fig('acme', 'debt'), 0::numeric, 'new credit pays the debt off first');
SELECT is(pg_temp.fig('acme', 'available'), 15::numeric, 'and the rest is available');

-- The account_id of commit must match when given.
SELECT credits_account_upsert(account_id => 'other', plan_id => 'pro');
SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'seo')::text AS r6 \gset
SELECT throws_ok(format('SELECT credits_commit(reservation_id => %L, account_id => %L)', :'r6', 'other'), 'CR007', NULL,
                 'commit with another account_id fails');
SELECT is(credits_commit(reservation_id => :'r6', account_id => 'acme'), 1::numeric, 'commit with the right account_id works');
SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'seo')::text AS r7 \gset
SELECT credits_refund(reservation_id => :'r7');
SELECT throws_ok(format('SELECT credits_commit(reservation_id => %L)', :'r7'), 'CR005', NULL,
                 'a released reservation cannot be committed');
-- Draws across buckets: a bucket whose credits are all held is passed
-- over, and what a commit charges beyond its hold comes from the bucket
-- it draws on, no other.
SELECT credits_account_upsert(account_id => 'two', plan_id => 'pro');
SELECT credits_grant(account_id => 'two', amount => 50, kind => 'pack')::text AS pack \gset
SELECT credits_reserve(account_id => 'two', amount => 100, product => 'editor');
SELECT credits_reserve(account_id => 'two', amount => 10, product => 'editor')::text AS rb \gset
SELECT results_eq(format('SELECT draw_buckets, draw_amounts FROM credits.reservations WHERE reservation_id = %L', :'rb'),
                  format('VALUES (ARRAY[%L]::uuid[], ARRAY[10]::numeric[])', :'pack'),
                  'with the allocation wholly held, a reserve draws on the pack alone');
SELECT is(credits_commit(reservation_id => :'rb', amount => 15), 15::numeric, 'a commit of 5 beyond it');
SELECT results_eq($$SELECT kind, trim_scale(balance), trim_scale(held) FROM credits.buckets WHERE account_id = 'two' ORDER BY kind$$,
                  $$VALUES ('allocation', 100::numeric, 100::numeric), ('pack', 35::numeric, 0::numeric)$$,
                  'takes the 5 from the pack, and leaves the held allocation as it was');
SELECT results_eq(format($$SELECT trim_scale(amount), bucket_id FROM credits.ledger
                            WHERE reservation_id = %L ORDER BY entry_id$$, :'rb'),
                  format($$VALUES (-10::numeric, %1$L::uuid), (-5::numeric, %1$L::uuid)$$, :'pack'),
                  'charged as the hold''s 10 and the 5 beyond it, both from the pack');
SELECT is_empty('SELECT * FROM credits_verify()', 'credits_verify() is empty');

SELECT * FROM finish();
ROLLBACK;
