-- fast paths only: checks which path runs, so make test does not run it again with credits.fast_paths off.
\ir helpers.inc
SELECT plan(47);

-- next_event is a lower bound: every reserve lowers it to its hold's expiry,
-- commits and refunds leave it. So an account whose last hold was resolved
-- comes due at that hold's expiry with nothing to do: a false alarm, which
-- credits._refresh_next_event() settles by moving next_event on. The fast
-- paths settle it and go on; credits._housekeep() (every write path's
-- roll-forward and credits_maintenance) settles it without building a plan.
-- A real due (period end, expired hold, expired bucket) is left to the
-- roll-forward, with nothing written by the fast path.

-- Whether bringing the account up to p_at would do anything: the roll
-- plan (src/roll.rs) has a ledger row, an expired hold, a changed bucket or
-- a rolled period.
CREATE FUNCTION pg_temp.roll_does_something(p_account text, p_at timestamptz) RETURNS boolean LANGUAGE sql AS $$
    SELECT (v->>'rolled')::int > 0 OR jsonb_array_length(v->'ledger') > 0
           OR jsonb_array_length(v->'expired_holds') > 0
           OR EXISTS (SELECT 1 FROM jsonb_array_elements(v->'buckets') b WHERE (b->>'changed')::boolean)
      FROM (SELECT credits._roll_plan(credits._roll_input(p_account, p_at)) AS v) x
$$;
-- Calls of a credits function in this transaction (track_functions).
SET LOCAL track_functions = 'all';
CREATE FUNCTION pg_temp.calls(fn text) RETURNS bigint LANGUAGE sql AS $$
    SELECT coalesce((SELECT calls FROM pg_stat_xact_user_functions WHERE schemaname = 'credits' AND funcname = fn), 0)
$$;
CREATE FUNCTION pg_temp.next_event(account text) RETURNS timestamptz LANGUAGE sql AS $$
    SELECT next_event FROM credits.accounts WHERE account_id = account
$$;

SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100, reset => 'calendar_month');
SELECT credits_account_upsert(account_id => a, plan_id => 'pro')
  FROM unnest(ARRAY['quiet', 'two', 'late', 'promo', 'calm', 'edge', 'busy', 'soon']) a;
-- The first use of a product registers it (general path).
SELECT credits_commit(credits_reserve(account_id => 'calm', amount => 1, product => 'editor'));

-- Reserve after a quiet spell.
SELECT credits_commit(credits_reserve(account_id => 'quiet', amount => 5, product => 'editor', ttl => '15 minutes'));
SELECT is(pg_temp.next_event('quiet'), '2026-03-10 12:15:00+00'::timestamptz,
          'a reserve lowers next_event to its hold''s expiry, and its commit leaves it there');
SET LOCAL credits.now = '2026-03-10 13:00:00+00';
SELECT ok(NOT pg_temp.roll_does_something('quiet', '2026-03-10 13:00:00+00'),
          'an hour later the account is due with nothing to do');
SELECT pg_temp.calls('_roll_plan') AS plans_before \gset
SELECT (SELECT count(*) FROM credits.ledger) AS ledger_before \gset
SELECT isnt(credits._reserve_fast('quiet', 5, 'editor', NULL, NULL, '15 minutes', '{}'), NULL,
            'the fast path takes the reserve of a false alarm');
SELECT is(pg_temp.next_event('quiet'), '2026-03-10 13:15:00+00'::timestamptz,
          'next_event moves on to the new hold''s expiry');
SELECT is((SELECT count(*) FROM credits.ledger), :ledger_before::bigint, 'no ledger row: nothing was due');
SELECT is(pg_temp.calls('_roll_plan'), :plans_before::bigint, 'and no roll-forward plan was built');
-- The same through the API: the general path never runs.
SELECT credits_commit(reservation_id => reservation_id) FROM credits.reservations
 WHERE account_id = 'quiet' AND status = 'pending';
SET LOCAL credits.now = '2026-03-10 15:00:00+00';
SELECT pg_temp.calls('_reserve') AS reserves_before \gset
SELECT pg_temp.calls('_commit') AS commits_before \gset
SELECT is(credits_commit(credits_reserve(account_id => 'quiet', amount => 5, product => 'editor')), 5::numeric,
          'credits_reserve and credits_commit after a quiet spell');
SELECT is(pg_temp.calls('_reserve'), :reserves_before::bigint, 'took the reserve fast path');
SELECT is(pg_temp.calls('_commit'), :commits_before::bigint, 'and the commit fast path');
SELECT is(pg_temp.calls('_roll_plan'), :plans_before::bigint, 'without a roll-forward plan');

-- Commit of a hold after the hold that set next_event was committed.
SET LOCAL credits.now = '2026-03-10 16:00:00+00';
SELECT credits_reserve(account_id => 'two', amount => 5, product => 'editor', ttl => '1 minute')::text AS short \gset
SELECT credits_reserve(account_id => 'two', amount => 5, product => 'editor', ttl => '1 hour')::text AS long \gset
SELECT credits_commit(:'short', 5);
SET LOCAL credits.now = '2026-03-10 16:10:00+00';
SELECT is(pg_temp.next_event('two'), '2026-03-10 16:01:00+00'::timestamptz,
          'next_event is still the expiry of the committed short hold');
SELECT is(credits._commit_fast(:'long', 3, false, NULL), 3::numeric,
          'the fast path commits the long hold all the same');
SELECT is(pg_temp.next_event('two'), '2026-03-10 17:00:00+00'::timestamptz,
          'next_event moves on to the long hold''s expiry (still pending when it was checked)');

-- Where a false alarm's reserve moves next_event: the soonest of the period
-- end, the expiry of a bucket with free credits, of a pending hold and of
-- the new hold, all in the reserve's own guarded UPDATE.
SET LOCAL credits.now = '2026-03-10 16:20:00+00';
SELECT credits_commit(credits_reserve(account_id => 'busy', amount => 1, product => 'editor', ttl => '1 minute'));
SELECT credits_reserve(account_id => 'busy', amount => 1, product => 'editor', ttl => '30 minutes') IS NOT NULL;
SELECT credits_grant(account_id => 'soon', amount => 10, kind => 'promo', expires_at => '2026-03-10 16:40:00+00');
SELECT credits_commit(credits_reserve(account_id => 'soon', amount => 1, product => 'editor', ttl => '1 minute'));
SET LOCAL credits.now = '2026-03-10 16:30:00+00';
SELECT pg_temp.calls('_refresh_next_event') AS refreshes_before \gset
SELECT isnt(credits._reserve_fast('busy', 1, 'editor', NULL, NULL, '1 hour', '{}'), NULL,
            'a false alarm with a live hold: the fast path reserves');
SELECT is(pg_temp.next_event('busy'), '2026-03-10 16:50:00+00'::timestamptz,
          'next_event moves on to the live hold''s expiry, sooner than the new one''s');
SELECT isnt(credits._reserve_fast('soon', 1, 'editor', NULL, NULL, '1 hour', '{}'), NULL,
            'a false alarm with a promo bucket: the fast path reserves');
SELECT is(pg_temp.next_event('soon'), '2026-03-10 16:40:00+00'::timestamptz,
          'next_event moves on to the expiry of the bucket with free credits');
-- Credits from a pack only (no bucket expires): the period end is next.
SET LOCAL credits.now = '2026-03-31 23:00:00+00';
SELECT credits_plan_upsert(plan_id => 'packs', allocation => 0, reset => 'calendar_month');
SELECT credits_account_upsert(account_id => 'monthend', plan_id => 'packs');
SELECT credits_grant(account_id => 'monthend', amount => 10, kind => 'pack');
SELECT credits_commit(credits_reserve(account_id => 'monthend', amount => 1, product => 'editor', ttl => '1 minute'));
SET LOCAL credits.now = '2026-03-31 23:50:00+00';
SELECT isnt(credits._reserve_fast('monthend', 1, 'editor', NULL, NULL, '1 hour', '{}'), NULL,
            'a false alarm ten minutes before the period ends: the fast path reserves');
SELECT is(pg_temp.next_event('monthend'), '2026-04-01 00:00:00+00'::timestamptz,
          'next_event moves on to the period end');
SELECT is(pg_temp.calls('_refresh_next_event'), :refreshes_before::bigint,
          'each settled in the reserve''s guarded UPDATE, without credits._refresh_next_event()');

-- A pending hold that has expired: really due.
SET LOCAL credits.now = '2026-03-10 17:00:00+00';
SELECT credits_reserve(account_id => 'late', amount => 5, product => 'editor', ttl => '1 minute')::text AS expired \gset
SELECT credits_reserve(account_id => 'late', amount => 5, product => 'editor', ttl => '1 hour')::text AS live \gset
SET LOCAL credits.now = '2026-03-10 17:10:00+00';
SELECT ok(pg_temp.roll_does_something('late', '2026-03-10 17:10:00+00'), 'an expired pending hold is due');
SELECT pg_temp.state() AS before \gset
SELECT is(credits._reserve_fast('late', 5, 'editor', NULL, NULL, '15 minutes', '{}'), NULL,
          'the reserve fast path leaves it to the general path');
SELECT is(credits._commit_fast(:'live', 5, false, NULL), NULL, 'and so does the commit fast path');
SELECT is(pg_temp.state(), :'before', 'having written nothing');
SELECT isnt(credits_reserve(account_id => 'late', amount => 5, product => 'editor'), NULL,
            'the general path rolls the account forward and reserves');
SELECT is((SELECT status FROM credits.reservations WHERE reservation_id = :'expired'), 'expired',
          'the expired hold is released');

-- A bucket with free credits that has expired: really due.
SELECT credits_grant(account_id => 'promo', amount => 10, kind => 'promo', expires_at => '2026-03-10 17:15:00+00');
SET LOCAL credits.now = '2026-03-10 17:20:00+00';
SELECT ok(pg_temp.roll_does_something('promo', '2026-03-10 17:20:00+00'), 'an expired bucket with credits is due');
SELECT pg_temp.state() AS before \gset
SELECT is(credits._reserve_fast('promo', 5, 'editor', NULL, NULL, '15 minutes', '{}'), NULL,
          'the fast path leaves it to the general path');
SELECT is(pg_temp.state(), :'before', 'having written nothing');

-- The end of the period: really due.
SET LOCAL credits.now = '2026-04-01 00:00:00+00';
SELECT ok(pg_temp.roll_does_something('edge', '2026-04-01 00:00:00+00'), 'the period end is due at its instant');
SELECT pg_temp.state() AS before \gset
SELECT is(credits._reserve_fast('edge', 5, 'editor', NULL, NULL, '15 minutes', '{}'), NULL,
          'the fast path leaves it to the general path');
SELECT is(pg_temp.state(), :'before', 'having written nothing');
SELECT is(credits._refresh_next_event('edge', '2026-04-01 00:00:00+00'), false,
          'credits._refresh_next_event refuses it');
SELECT is(credits._refresh_next_event('edge', '2026-03-31 23:59:59.999999+00'), false,
          'and does nothing for an account whose next_event lies ahead');

-- credits._housekeep on a false alarm (every write path, credits_reset,
-- credits_maintenance): only next_event moves.
SET LOCAL credits.now = '2026-03-10 18:00:00+00';
SELECT credits_commit(credits_reserve(account_id => 'calm', amount => 5, product => 'editor', ttl => '15 minutes'));
SET LOCAL credits.now = '2026-03-10 19:00:00+00';
SELECT pg_temp.calls('_roll_plan') AS plans_before \gset
SELECT (SELECT count(*) FROM credits.ledger) AS ledger_before \gset
SELECT is(credits._housekeep('calm', '2026-03-10 19:00:00+00'), 0, 'credits._housekeep of a false alarm rolls nothing');
SELECT is(pg_temp.next_event('calm'), '2026-04-01 00:00:00+00'::timestamptz, 'it moves next_event on');
SELECT is(pg_temp.calls('_roll_plan'), :plans_before::bigint, 'without building a plan');
SELECT is((SELECT count(*) FROM credits.ledger), :ledger_before::bigint, 'or writing a ledger row');

-- A false alarm's reserve is judged as any other: the statement that
-- settles it checks the common case as the usual one does, and leaves a
-- reserve beyond the free credits, or of a product switched off for the
-- account or for everyone, to the general path, which refuses it.
SELECT credits_account_upsert(account_id => 'guard', plan_id => 'pro');
SELECT credits_reserve(account_id => 'guard', amount => 50, product => 'editor', ttl => '1 hour');
SELECT credits_commit(credits_reserve(account_id => 'guard', amount => 40, product => 'editor', ttl => '1 minute'));
SELECT credits_account_product_set(account_id => 'guard', product => 'seo', enabled => false);
SELECT credits_product_upsert(product => 'retired', enabled => false);
SET LOCAL credits.now = '2026-03-10 19:05:00+00';
SELECT ok(pg_temp.next_event('guard') <= '2026-03-10 19:05:00+00' AND NOT pg_temp.roll_does_something('guard', '2026-03-10 19:05:00+00'),
          'an account holding 50 with 10 free, due with nothing to do');
SELECT pg_temp.state() AS before \gset
SELECT is(credits._reserve_fast('guard', 11, 'editor', NULL, NULL, '15 minutes', '{}'), NULL,
          'the false alarm''s fast path leaves a reserve beyond the free credits');
SELECT is(credits._reserve_fast('guard', 1, 'seo', NULL, NULL, '15 minutes', '{}'), NULL,
          'and one of a product switched off for the account');
SELECT is(credits._reserve_fast('guard', 1, 'retired', NULL, NULL, '15 minutes', '{}'), NULL,
          'and one of a product disabled for everyone');
SELECT is(pg_temp.state(), :'before', 'having written nothing');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'guard', amount => 11, product => 'editor')$$, 'CR001', NULL,
                 'the general path refuses the first');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'guard', amount => 1, product => 'seo')$$, 'CR009', NULL,
                 'and the second');
SELECT isnt(credits._reserve_fast('guard', 10, 'editor', NULL, NULL, '15 minutes', '{}'), NULL,
            'and the fast path takes a reserve of the 10 free');

SELECT is((SELECT count(*) FROM credits_verify()), 0::bigint, 'everything verifies');

SELECT * FROM finish();
ROLLBACK;
