\ir helpers.inc
SELECT plan(37);

SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100, reset => 'calendar_month');
SELECT credits_account_upsert(account_id => 'acme', plan_id => 'pro');

-- Refund of a pending reservation releases it whole.
SELECT credits_reserve(account_id => 'acme', amount => 40, product => 'images')::text AS r1 \gset
SELECT is(credits_refund(reservation_id => :'r1', reason => 'provider timeout'), 40::numeric,
          'refund of a pending reservation releases all it holds');
SELECT is(pg_temp.fig('acme', 'available'), 100::numeric, 'the hold is available again');
SELECT is((SELECT status FROM credits.reservations WHERE reservation_id = :'r1'), 'released', 'the reservation is released');
SELECT is((SELECT metadata->>'reason' FROM credits.reservations WHERE reservation_id = :'r1'), 'provider timeout',
          'the reason is kept');
SELECT throws_ok(format('SELECT credits_refund(reservation_id => %L)', :'r1'), 'CR005', NULL,
                 'a released reservation has nothing left to refund');

-- Refund of a committed one: up to what was charged.
SELECT credits_reserve(account_id => 'acme', amount => 30, product => 'editor')::text AS r2 \gset
SELECT credits_commit(reservation_id => :'r2');
SELECT is(credits_refund(reservation_id => :'r2', amount => 10), 10::numeric, 'a partial refund returns that much');
SELECT is(pg_temp.fig('acme', 'used'), 20::numeric, 'the period usage goes down');
SELECT is(pg_temp.fig('acme', 'available'), 80::numeric, 'and the credits come back');
SELECT pg_temp.state() AS before \gset
SELECT is(pg_temp.error_fields(format('SELECT credits_refund(reservation_id => %L, amount => 21.0)', :'r2')),
          ARRAY['CR012', format('refund of 21 exceeds what reservation %s has left to refund', :'r2'),
                'It was charged 30, of which 10 is already refunded; 20 is left to refund.',
                'Refund at most the refundable amount, or leave amount out to refund all that is left.'],
          'an explicit refund larger than what is left fails, and says what is left');
SELECT is(pg_temp.state(), :'before', 'and changes nothing');
SELECT is(credits_refund(reservation_id => :'r2'), 20::numeric, 'refund without amount returns all that is left');
SELECT credits_reserve(account_id => 'acme', amount => 12, product => 'editor')::text AS r2c \gset
SELECT credits_commit(:'r2c');
SELECT credits_refund(reservation_id => :'r2c', amount => 5);
SELECT is(credits_refund(reservation_id => :'r2c', amount => 7), 7::numeric, 'a refund of exactly what is left is allowed');
SELECT is(credits_refund(reservation_id => :'r2'), 0::numeric, 'and 0 once nothing is left');
SELECT throws_ok(format('SELECT credits_commit(reservation_id => %L)', :'r2'), 'CR005', NULL,
                 'a refunded reservation cannot be committed again');
SELECT is(pg_temp.fig('acme', 'used'), 0::numeric, 'usage is back to 0');

-- A share drawn from a bucket that has expired since is written off, not resurrected.
SELECT credits_grant(account_id => 'acme', amount => 50, kind => 'promo', expires_at => '2026-03-15 00:00+00')::text AS promo \gset
SELECT credits_reserve(account_id => 'acme', amount => 120, product => 'editor')::text AS r3 \gset
SELECT credits_commit(reservation_id => :'r3');
SELECT is((SELECT array_length(draw_buckets, 1) FROM credits.reservations WHERE reservation_id = :'r3'), 2,
          'the charge drew from the allocation and the promo');
SET LOCAL credits.now = '2026-03-20 12:00:00+00';
SELECT is(credits_refund(reservation_id => :'r3'), 120::numeric, 'the whole charge is refunded');
SELECT is(pg_temp.fig('acme', 'available'), 100::numeric, 'only the allocation share comes back');
SELECT is((SELECT balance FROM credits.buckets WHERE bucket_id = :'promo'), 0::numeric, 'the expired promo stays empty');
SELECT ok(EXISTS (SELECT 1 FROM credits.ledger WHERE reservation_id = :'r3' AND kind = 'expire' AND amount = -20),
          'with an expiry row for the written-off share');

-- Refund idempotency.
SELECT credits_reserve(account_id => 'acme', amount => 10, product => 'seo')::text AS r4 \gset
SELECT credits_commit(reservation_id => :'r4');
SELECT is(credits_refund(reservation_id => :'r4', amount => 4, idempotency_key => 'rf-1'), 4::numeric, 'a keyed refund');
SELECT is(credits_refund(reservation_id => :'r4', amount => 4, idempotency_key => 'rf-1'), 4::numeric,
          'its replay returns the first result');
SELECT is((SELECT refunded FROM credits.reservations WHERE reservation_id = :'r4'), 4::numeric, 'and refunds once');
-- Releasing a pending hold whose bucket expired meanwhile: the share drawn
-- from that bucket is written off at once (an expire row of the
-- reservation), never given back to it.
SET LOCAL credits.now = '2026-03-10 12:00:00+00';
SELECT credits_plan_upsert(plan_id => 'small', allocation => 10, reset => 'calendar_month');
SELECT credits_account_upsert(account_id => 'promo', plan_id => 'small');
SELECT credits_grant(account_id => 'promo', amount => 50, kind => 'promo', expires_at => '2026-03-10 13:00:00+00');
SELECT credits_reserve(account_id => 'promo', amount => 30, product => 'editor', ttl => '3 hours')::text AS rp \gset
SET LOCAL credits.now = '2026-03-10 14:00:00+00';
SELECT is(credits_refund(reservation_id => :'rp'), 30::numeric,
          'a pending hold whose promo expired meanwhile is released whole');
SELECT results_eq($$SELECT kind, trim_scale(balance), trim_scale(held) FROM credits.buckets
                     WHERE account_id = 'promo' ORDER BY kind$$,
                  $$VALUES ('allocation', 10::numeric, 0::numeric), ('promo', 0, 0)$$,
                  'the allocation gets its 10 back, the expired promo nothing');
SELECT is((SELECT sum(amount) FROM credits.ledger WHERE reservation_id = :'rp' AND kind = 'expire'), -20::numeric,
          'the promo''s 20 are written off with an expire row of the reservation');
SELECT is(pg_temp.fig('promo', 'available'), 10::numeric, 'so that only the allocation is available');
SET LOCAL credits.now = '2026-03-10 12:00:00+00';
-- A refund of a commit that ran into debt takes back what is still owed
-- of it, and returns what was paid off since as credit.
SELECT credits_plan_upsert(plan_id => 'hundred', allocation => 100, reset => 'calendar_month');
SELECT credits_account_upsert(account_id => 'owes', plan_id => 'hundred');
SELECT credits_reserve(account_id => 'owes', amount => 10, product => 'editor')::text AS rd \gset
SELECT credits_commit(reservation_id => :'rd', amount => 110, force => true);
SELECT credits_grant(account_id => 'owes', amount => 4, kind => 'pack');
SELECT is(pg_temp.fig('owes', 'debt'), 6::numeric, 'a commit of 110 ran 10 into debt, and a pack paid 4 of it');
SELECT is(credits_refund(reservation_id => :'rd', amount => 30), 30::numeric, 'a refund of 30 of it ...');
SELECT results_eq(format($$SELECT kind, trim_scale(amount) FROM credits.ledger
                            WHERE reservation_id = %L AND kind IN ('debt_refund', 'refund') ORDER BY seq$$, :'rd'),
                  $$VALUES ('debt_refund', 6::numeric), ('refund', 4::numeric), ('refund', 20::numeric)$$,
                  '... takes back the 6 still owed, returns the 4 paid off as credit, then 20 of the allocation');
SELECT results_eq($$SELECT trim_scale(balance), trim_scale(debt) FROM credits.accounts WHERE account_id = 'owes'$$,
                  $$VALUES (24::numeric, 0::numeric)$$, 'so the account owes nothing and holds 24');
SELECT is(credits_refund(reservation_id => :'rd'), 80::numeric, 'the rest of the refund returns 80');

-- A bucket expires at its expires_at: a refund at that very instant writes
-- its share off, as a refund later does, and so do releasing a hold and
-- committing one for less than it holds.
SET LOCAL credits.now = '2026-03-10 12:00:00+00';
SELECT credits_plan_upsert(plan_id => 'none', allocation => 0);
SELECT credits_account_upsert(account_id => a, plan_id => 'none') FROM unnest(ARRAY['edge_c', 'edge_p', 'edge_m']) a;
SELECT credits_grant(account_id => a, amount => 10, kind => 'promo', expires_at => '2026-03-12 00:00+00')
  FROM unnest(ARRAY['edge_c', 'edge_p', 'edge_m']) a;
SELECT credits_grant(account_id => a, amount => 100, kind => 'pack') FROM unnest(ARRAY['edge_c', 'edge_p', 'edge_m']) a;
SELECT credits_reserve(account_id => 'edge_c', amount => 4, product => 'editor') AS rc \gset
SELECT credits_commit(reservation_id => :'rc');
SELECT credits_reserve(account_id => 'edge_p', amount => 4, product => 'editor', ttl => '3 days') AS rp \gset
SELECT credits_reserve(account_id => 'edge_m', amount => 4, product => 'editor', ttl => '3 days') AS rm \gset
SET LOCAL credits.now = '2026-03-12 00:00:00+00';
SELECT is(credits_refund(reservation_id => :'rc'), 4::numeric, 'a refund at the instant its promo expires returns 4');
SELECT credits_refund(reservation_id => :'rp');
SELECT is(credits_commit(reservation_id => :'rm', amount => 1), 1::numeric, 'a commit for 1 of the 4 held charges 1');
SELECT results_eq($$SELECT account_id, kind, trim_scale(amount) FROM credits.ledger
                     WHERE account_id IN ('edge_c', 'edge_p', 'edge_m') AND created_at = '2026-03-12 00:00+00'
                     ORDER BY entry_id$$,
                  $$VALUES ('edge_c', 'expire', -6::numeric), ('edge_c', 'refund', 4::numeric), ('edge_c', 'expire', -4::numeric),
                           ('edge_p', 'expire', -6::numeric), ('edge_p', 'expire', -4::numeric),
                           ('edge_m', 'expire', -6::numeric), ('edge_m', 'charge', -1::numeric), ('edge_m', 'expire', -3::numeric)$$,
                  'the promo''s 6 left expire, and the 4 refunded or released, or the 3 not committed, are written off at once');
SELECT is((SELECT sum(balance) FROM credits.buckets WHERE account_id IN ('edge_c', 'edge_p', 'edge_m') AND kind = 'promo'), 0::numeric,
          'the promos hold nothing');
SELECT is_empty('SELECT * FROM credits_verify()', 'credits_verify() is empty');

SELECT * FROM finish();
ROLLBACK;
