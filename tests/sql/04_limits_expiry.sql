\ir helpers.inc
SELECT plan(54);

SELECT credits_plan_upsert(plan_id => 'hard', allocation => 100, reset => 'calendar_month');
SELECT credits_plan_upsert(plan_id => 'soft', allocation => 100, reset => 'calendar_month',
                           limit_mode => 'soft', soft_limit => 20, overage_rate => 1.5);
SELECT credits_account_upsert(account_id => 'h', plan_id => 'hard');
SELECT credits_account_upsert(account_id => 's', plan_id => 'soft');

-- Hard limit: no trace of a refused reserve.
SELECT credits_reserve(account_id => 'h', amount => 90, product => 'editor')::text AS h1 \gset
SELECT pg_temp.state() AS before \gset
SELECT throws_ok($$SELECT credits_reserve(account_id => 'h', amount => 11, product => 'editor')$$, 'CR001',
                 'insufficient credits for account "h"', 'a reserve beyond the hard limit fails');
SELECT is(pg_temp.state(), :'before', 'and leaves no trace');
SELECT lives_ok($$SELECT credits_reserve(account_id => 'h', amount => 10, product => 'editor')$$, 'exactly the rest fits');

-- Soft limit: overage up to soft_limit, tracked separately with the rate.
SELECT credits_reserve(account_id => 's', amount => 110, product => 'editor')::text AS s1 \gset
SELECT is((SELECT overage FROM credits.reservations WHERE reservation_id = :'s1'), 10::numeric,
          'past every bucket the hold is overage');
SELECT throws_ok($$SELECT credits_reserve(account_id => 's', amount => 11, product => 'editor')$$, 'CR001', NULL,
                 'overage stops at the soft limit');
SELECT credits_commit(reservation_id => :'s1');
SELECT is(pg_temp.fig('s', 'overage'), 10::numeric, 'committed overage is reported separately');
SELECT is(pg_temp.fig('s', 'used'), 100::numeric, 'used counts the buckets');
SELECT results_eq($$SELECT amount, rate FROM credits.ledger WHERE kind = 'overage'$$,
                  $$VALUES (-10::numeric, 1.5::numeric)$$, 'overage rows carry the plan''s rate');
SELECT credits_reserve(account_id => 's', amount => 10, product => 'editor')::text AS s2 \gset
SELECT is(pg_temp.fig('s', 'overage_available'), 0::numeric, 'the soft allowance is used up');
SELECT is(credits_refund(reservation_id => :'s1', amount => 5), 5::numeric, 'a refund ...');
SELECT is(pg_temp.fig('s', 'overage'), 5::numeric, '... takes overage down first');
SELECT is(pg_temp.fig('s', 'used'), 100::numeric, '... before bucket usage');

-- Per-account override of the plan's limit.
SELECT credits_account_upsert(account_id => 'h', limit_mode => 'soft', soft_limit => 5);
SELECT lives_ok($$SELECT credits_reserve(account_id => 'h', amount => 5, product => 'editor')$$,
                'an account override turns the hard plan soft for that account');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'h', amount => 1, product => 'editor')$$, 'CR001', NULL,
                 'up to its own soft limit');
SELECT credits_account_upsert(account_id => 'h', limit_mode => 'plan');
SELECT is(credits_balance('h') #>> '{summary,limit_mode}', 'hard', 'limit_mode => plan goes back to the plan''s rule');

-- The guards refuse direct writes that break a limit, even by the owner.
SELECT throws_ok($$UPDATE credits.accounts SET held = balance + 1 WHERE account_id = 'h'$$, '23514', NULL,
                 'a hold beyond the stored balance is refused by CHECK');
SELECT throws_ok($$UPDATE credits.buckets SET held = balance + 1 WHERE account_id = 'h'$$, '23514', NULL,
                 'a bucket hold beyond its balance is refused by CHECK');
SELECT throws_ok($$UPDATE credits.accounts SET period_overage = 1000 WHERE account_id = 's'$$, 'CR001', NULL,
                 'overage beyond the soft allowance is refused by trigger');
SELECT throws_ok($$UPDATE credits.ledger SET amount = 0$$, 'CR013', NULL, 'ledger rows cannot be updated');
SELECT throws_ok($$DELETE FROM credits.ledger$$, 'CR013', NULL, 'ledger rows cannot be deleted');
SELECT throws_ok($$TRUNCATE credits.ledger$$, 'CR013', NULL, 'the ledger cannot be truncated');

-- Holds expire lazily: reads stop counting them at once, the next write records it.
SELECT credits_account_upsert(account_id => 'e', plan_id => 'hard');
SELECT credits_reserve(account_id => 'e', amount => 60, product => 'editor', ttl => '1 minute')::text AS e1 \gset
SET LOCAL credits.now = '2026-03-10 12:01:00+00';
SELECT is(pg_temp.fig('e', 'available'), 100::numeric, 'a hold past its ttl no longer counts');
SELECT is((SELECT status FROM credits.reservations WHERE reservation_id = :'e1'), 'pending', 'reads do not write');
SELECT lives_ok($$SELECT credits_reserve(account_id => 'e', amount => 70, product => 'editor')$$,
                'a reserve can use the expired hold''s credits');
SELECT is((SELECT status FROM credits.reservations WHERE reservation_id = :'e1'), 'expired',
          'the write path marked the hold expired');
SELECT ok(EXISTS (SELECT 1 FROM credits.ledger WHERE reservation_id = :'e1' AND kind = 'hold_expired'),
          'with a ledger row');
SELECT throws_ok(format('SELECT credits_commit(reservation_id => %L)', :'e1'), 'CR001', NULL,
                 'committing an expired hold is judged as new usage: 60 does not fit in 30');
SELECT is(credits_commit(reservation_id => :'e1', amount => 30), 30::numeric, 'but 30 does');
-- Credits given back to a bucket whose credits were all spent or held
-- expire with it, although the account's next_event was worked out while
-- the bucket had nothing free (here by an account change).
SELECT credits_plan_upsert(plan_id => 'zero', allocation => 0, reset => 'calendar_month');
SELECT credits_account_upsert(account_id => a, plan_id => 'zero') FROM unnest(ARRAY['spent', 'held']) a;
SELECT credits_grant(account_id => a, amount => 10, kind => 'promo', expires_at => '2026-03-11 00:00+00')
  FROM unnest(ARRAY['spent', 'held']) a;
SELECT credits_grant(account_id => a, amount => 100, kind => 'pack') FROM unnest(ARRAY['spent', 'held']) a;
SELECT credits_reserve(account_id => 'spent', amount => 10, product => 'editor')::text AS spent1 \gset
SELECT credits_commit(:'spent1');
SELECT credits_reserve(account_id => 'held', amount => 10, product => 'editor', ttl => '30 days')::text AS held1 \gset
SELECT credits_account_upsert(account_id => a, limit_mode => 'hard') FROM unnest(ARRAY['spent', 'held']) a;
SELECT credits_refund(:'spent1');
SELECT credits_refund(:'held1');
SET LOCAL credits.now = '2026-03-12 00:00:00+00';
SELECT results_eq($$SELECT account_id, available FROM credits.account_summary WHERE account_id IN ('held', 'spent') ORDER BY 1$$,
                  $$VALUES ('held', 100::numeric), ('spent', 100::numeric)$$,
                  'credits refunded to a spent promo, or released to a held one, expire with it');
SELECT is(credits_commit(credits_reserve(account_id => 'spent', amount => 100, product => 'editor')), 100::numeric,
          'and the rest is there to spend');
-- A hold drawn from a promo that expired while it was pending, committed
-- for more than the hold: the promo's draw is charged whole (nothing of the
-- hold is left to write off), the excess comes from the pack.
SELECT credits_account_upsert(account_id => 'past', plan_id => 'zero');
SET LOCAL credits.now = '2026-03-10 12:00:00+00';
SELECT credits_grant(account_id => 'past', amount => 10, kind => 'promo', expires_at => '2026-03-11 00:00+00')::text AS past_promo \gset
SELECT credits_grant(account_id => 'past', amount => 100, kind => 'pack')::text AS past_pack \gset
SELECT credits_reserve(account_id => 'past', amount => 10, product => 'editor', ttl => '30 days')::text AS past1 \gset
SET LOCAL credits.now = '2026-03-12 00:00:00+00';
SELECT is(credits_commit(reservation_id => :'past1', amount => 15), 15::numeric, 'a commit of 15 on a hold of 10 whose promo expired');
SELECT results_eq(format($$SELECT kind, trim_scale(amount), bucket_id::text FROM credits.ledger
                            WHERE account_id = 'past' AND created_at = '2026-03-12 00:00:00+00' ORDER BY entry_id$$),
                  format($$VALUES ('charge', -10::numeric, %L), ('charge', -5::numeric, %L)$$, :'past_promo', :'past_pack'),
                  'charges the promo''s 10 whole and 5 from the pack, and writes nothing off');
SELECT results_eq($$SELECT kind, trim_scale(balance), trim_scale(held) FROM credits.buckets
                     WHERE account_id = 'past' ORDER BY kind$$,
                  $$VALUES ('pack', 95::numeric, 0::numeric), ('promo', 0::numeric, 0::numeric)$$,
                  'so the promo is spent and the pack holds the other 95');
-- The soft limit's trigger judges the overage committed and held together
-- (behind the API, as the owner): growth past the limit is refused however
-- it is split between the two.
SELECT credits_account_upsert(account_id => 'split', plan_id => 'soft');
SELECT is(pg_temp.error_fields($$UPDATE credits.accounts SET period_overage = 12, overage_held = 9 WHERE account_id = 'split'$$),
          ARRAY['CR001', 'insufficient credits for account "split"', 'Overage would be 21; the soft limit allows 20 this period.',
                'Top up, or wait for the reset on 2026-04-01.'],
          '12 committed and 9 held pass a soft limit of 20');
UPDATE credits.accounts SET period_overage = 5 WHERE account_id = 'split';
SELECT throws_ok($$UPDATE credits.accounts SET overage_held = 16 WHERE account_id = 'split'$$,
                 'CR001', 'insufficient credits for account "split"', 'so do 5 committed and then 16 held');
UPDATE credits.accounts SET period_overage = 0 WHERE account_id = 'split';

-- A commit beyond its hold on a soft account: the excess may use what is
-- left of the soft allowance after the period's overage and the account's
-- other holds, and only that; with force the rest is debt.
SELECT credits_plan_upsert(plan_id => 'soft50', allocation => 10, reset => 'calendar_month',
                           limit_mode => 'soft', soft_limit => 50, overage_rate => 2);
SELECT credits_account_upsert(account_id => 'room', plan_id => 'soft50');
SELECT credits_commit(credits_reserve(account_id => 'room', amount => 12, product => 'editor'));
SELECT credits_reserve(account_id => 'room', amount => 10, product => 'editor')::text AS ra \gset
SELECT credits_reserve(account_id => 'room', amount => 10, product => 'editor')::text AS rb \gset
SELECT is(pg_temp.error_fields(format('SELECT credits_commit(reservation_id => %L, amount => 39)', :'ra')),
          ARRAY['CR001', 'insufficient credits for account "room"', 'It needs 39; the account has 38 available for it.',
                'Commit at most 38, pass force => true to record the excess as debt, or top up first.'],
          'the excess may not pass the allowance: 50 - 2 committed - 10 held elsewhere leaves 38');
SELECT matches(pg_temp.error_context(format('SELECT credits_commit(reservation_id => %L, amount => 39)', :'ra')),
               '^PL/pgSQL function credits\._commit\([a-z, ]+\) line [0-9]+ at RAISE\nSQL statement "SELECT credits_commit\(',
               'so does the commit''s');
SELECT is(credits_commit(reservation_id => :'ra', amount => 40, force => true), 40::numeric, 'with force it is charged');
SELECT results_eq(format($$SELECT trim_scale(overage), trim_scale(debt) FROM credits.reservations
                            WHERE reservation_id = %L$$, :'ra'),
                  $$VALUES (38::numeric, 2::numeric)$$, '38 as overage and the other 2 as debt');
SELECT results_eq($$SELECT trim_scale(period_overage), trim_scale(overage_held), trim_scale(debt)
                      FROM credits.accounts WHERE account_id = 'room'$$,
                  $$VALUES (40::numeric, 10::numeric, 2::numeric)$$,
                  'so that the overage committed and held is exactly the allowance');
SELECT credits_refund(reservation_id => :'rb');
-- Overage committed twice on one day and product: the day's roll-up adds
-- both, billed at the plan's rate.
SELECT credits_account_upsert(account_id => 'twice', plan_id => 'soft');
SELECT credits_commit(credits_reserve(account_id => 'twice', amount => 100, product => 'editor'));
SELECT credits_commit(credits_reserve(account_id => 'twice', amount => 5, product => 'editor'));
SELECT credits_commit(credits_reserve(account_id => 'twice', amount => 7, product => 'editor'));
SELECT results_eq($$SELECT used, overage, billable_overage, actions FROM credits.usage_daily WHERE account_id = 'twice'$$,
                  $$VALUES (100::numeric, 12::numeric, 18::numeric, 3)$$,
                  'two overage commits of 5 and 7: overage 12, billable 18 at the rate of 1.5');
-- A refused reserve's DETAIL says what the account could hold (README,
-- credits_reserve): its free credits, and on a soft account the room left
-- in its allowance after the overage committed and held.
SELECT credits_account_upsert(account_id => 'dh', plan_id => 'hard');
SELECT credits_reserve(account_id => 'dh', amount => 70, product => 'editor');
SELECT is(pg_temp.error_fields($$SELECT credits_reserve(account_id => 'dh', amount => 31, product => 'editor')$$),
          ARRAY['CR001', 'insufficient credits for account "dh"', 'It needs 31; the account has 30 available.',
                'Top up, or wait for the reset on 2026-04-01.'],
          'a hard account''s refusal: what it needs and the 30 it has free');
-- The function that refuses a call raises the error itself: its CONTEXT
-- is that function's line (and the test's own frame, which error_context
-- adds), no helper's frame and no text of an internal statement.
SELECT matches(pg_temp.error_context($$SELECT credits_reserve(account_id => 'dh', amount => 31, product => 'editor')$$),
               '^PL/pgSQL function credits\._reserve\([a-z, ]+\) line [0-9]+ at RAISE\nSQL statement "SELECT credits_reserve\(',
               'the reserve''s refusal names credits._reserve''s RAISE and nothing in between');
SELECT credits_account_upsert(account_id => 'ds', plan_id => 'soft');
SELECT credits_commit(credits_reserve(account_id => 'ds', amount => 103, product => 'editor'));
SELECT credits_reserve(account_id => 'ds', amount => 4, product => 'editor');
SELECT credits_grant(account_id => 'ds', amount => 2, kind => 'topup');
SELECT is((pg_temp.error_fields($$SELECT credits_reserve(account_id => 'ds', amount => 16, product => 'editor')$$))[1:3],
          ARRAY['CR001', 'insufficient credits for account "ds"', 'It needs 16; the account has 15 available.'],
          'a soft account''s: 2 free and 13 of its allowance of 20 (3 overage committed, 4 held)');
SELECT is(credits_reserve(account_id => 'ds', amount => 15, product => 'editor') IS NOT NULL, true,
          'and 15 is held');
SELECT credits_account_upsert(account_id => 'ds', limit_mode => 'soft', soft_limit => 5);
SELECT credits_grant(account_id => 'ds', amount => 2, kind => 'topup');
SELECT is((pg_temp.error_fields($$SELECT credits_reserve(account_id => 'ds', amount => 3, product => 'editor')$$))[1:3],
          ARRAY['CR001', 'insufficient credits for account "ds"', 'It needs 3; the account has 2 available.'],
          'an allowance lowered below what is used and held leaves only the free credits');
-- An overage hold past its ttl stops counting at once too, before any
-- write records it: as reserved, and against the soft allowance.
SELECT credits_account_upsert(account_id => 'lazy', plan_id => 'soft');
SELECT credits_reserve(account_id => 'lazy', amount => 110, product => 'editor', ttl => '1 minute');
SELECT credits_reserve(account_id => 'lazy', amount => 5, product => 'editor', ttl => '1 hour');
SELECT results_eq($$SELECT reserved, available, overage_available FROM credits.account_summary WHERE account_id = 'lazy'$$,
                  $$VALUES (115::numeric, 0::numeric, 5::numeric)$$, 'an account holding 100 and 15 overage');
SET LOCAL credits.now = '2026-03-12 00:02:00+00';
SELECT results_eq($$SELECT reserved, available, overage_available FROM credits.account_summary WHERE account_id = 'lazy'$$,
                  $$VALUES (5::numeric, 100::numeric, 15::numeric)$$,
                  'once the first hold is past its ttl: 5 held (overage), 100 available, 15 of the allowance left');
SELECT is((SELECT overage_held FROM credits.accounts WHERE account_id = 'lazy'), 15::numeric, 'with nothing written');
SELECT credits_reserve(account_id => 'lazy', amount => 1, product => 'editor');
SELECT results_eq($$SELECT trim_scale(held), trim_scale(overage_held) FROM credits.accounts WHERE account_id = 'lazy'$$,
                  $$VALUES (1::numeric, 5::numeric)$$, 'the next write gives the expired hold''s 100 and 10 overage back');
-- An account's next event is worked out from its own buckets and holds
-- (here by an account change), never from another account's sooner ones.
SELECT credits_account_upsert(account_id => 'soon', plan_id => 'hard');
SELECT credits_grant(account_id => 'soon', amount => 5, kind => 'promo', expires_at => '2026-03-13 00:00:00+00');
SELECT credits_account_upsert(account_id => 'later', plan_id => 'hard');
SELECT credits_account_upsert(account_id => 'later', alert_percents => '{50}');
SELECT results_eq($$SELECT account_id, next_event FROM credits.accounts WHERE account_id IN ('later', 'soon') ORDER BY 1$$,
                  $$VALUES ('later', '2026-04-01 00:00:00+00'::timestamptz), ('soon', '2026-03-13 00:00:00+00'::timestamptz)$$,
                  'its period end for an account with nothing sooner, another''s promo for that one');

-- At the very instant a hold expires, the next write on its account marks
-- it expired: a commit of another hold, as a reserve.
SET LOCAL credits.now = '2026-03-12 01:00:00+00';
SELECT credits_plan_upsert(plan_id => 'packs_only', allocation => 0);
SELECT credits_account_upsert(account_id => a, plan_id => 'packs_only') FROM unnest(ARRAY['inst_c', 'inst_r']) a;
SELECT credits_grant(account_id => a, amount => 100, kind => 'pack') FROM unnest(ARRAY['inst_c', 'inst_r']) a;
SELECT credits_reserve(account_id => 'inst_c', amount => 5, product => 'editor', ttl => '10 minutes');
SELECT credits_reserve(account_id => 'inst_c', amount => 6, product => 'editor', ttl => '1 hour') AS h2 \gset
SELECT credits_reserve(account_id => 'inst_r', amount => 5, product => 'editor', ttl => '10 minutes');
SET LOCAL credits.now = '2026-03-12 01:10:00+00';
SELECT credits_commit(reservation_id => :'h2');
SELECT credits_reserve(account_id => 'inst_r', amount => 1, product => 'editor');
SELECT results_eq($$SELECT account_id, trim_scale(amount), status, resolved_at FROM credits.reservations
                     WHERE account_id IN ('inst_c', 'inst_r') ORDER BY account_id, amount$$,
                  $$VALUES ('inst_c', 5::numeric, 'expired', '2026-03-12 01:10:00+00'::timestamptz),
                           ('inst_c', 6::numeric, 'committed', '2026-03-12 01:10:00+00'),
                           ('inst_r', 1::numeric, 'pending', NULL),
                           ('inst_r', 5::numeric, 'expired', '2026-03-12 01:10:00+00')$$,
                  'a commit and a reserve at the instant a hold of the account expires mark it expired');
-- And a reserve at the very instant a promo expires writes what is left of
-- it off before drawing.
SET LOCAL credits.now = '2026-03-12 01:00:00+00';
SELECT credits_account_upsert(account_id => 'inst_p', plan_id => 'packs_only');
SELECT credits_grant(account_id => 'inst_p', amount => 100, kind => 'pack');
SELECT credits_grant(account_id => 'inst_p', amount => 10, kind => 'promo', expires_at => '2026-03-12 01:10:00+00');
SET LOCAL credits.now = '2026-03-12 01:10:00+00';
SELECT credits_reserve(account_id => 'inst_p', amount => 1, product => 'editor');
SELECT results_eq($$SELECT b.kind, trim_scale(b.balance), trim_scale(b.held) FROM credits.buckets b
                     WHERE b.account_id = 'inst_p' ORDER BY b.kind$$,
                  $$VALUES ('pack', 100::numeric, 1::numeric), ('promo', 0::numeric, 0::numeric)$$,
                  'a reserve at the instant a promo expires writes its 10 off and holds 1 of the pack');
SELECT is_empty('SELECT * FROM credits_verify()', 'credits_verify() is empty');

SELECT * FROM finish();
ROLLBACK;
