\ir helpers.inc
SELECT plan(43);

SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100, reset => 'calendar_month',
                           limit_mode => 'soft', soft_limit => 20, overage_rate => 2);
SELECT credits_account_upsert(account_id => 'v', plan_id => 'pro');
SELECT credits_account_upsert(account_id => 'vb', plan_id => 'pro', byok => true);

-- Day 1: two editor actions (one partly refunded) and a failed seo action.
SELECT credits_commit(credits_reserve(account_id => 'v', amount => 30, product => 'editor',
                                      metadata => '{"subject": "design", "project": "p1"}'), 25);
SELECT credits_refund(credits_reserve(account_id => 'v', amount => 10, product => 'seo'));
SELECT credits_reserve(account_id => 'v', amount => 10, product => 'editor',
                       metadata => '{"subject": "research"}')::text AS e2 \gset
SELECT credits_commit(:'e2');
SELECT credits_refund(:'e2', 4);
-- Day 2: an image job that goes 11 into overage, then 5 refunded.
SET LOCAL credits.now = '2026-03-11 09:00:00+00';
SELECT credits_reserve(account_id => 'v', amount => 80, product => 'images')::text AS i1 \gset
SELECT credits_commit(:'i1');
SELECT credits_refund(:'i1', 5);
-- BYOK usage.
SELECT credits_commit(credits_reserve(account_id => 'vb', amount => 500, product => 'editor'), 300);

SELECT results_eq($$SELECT day, product, used, overage, refunded, net_used, billable_overage, actions
                      FROM credits.usage_daily WHERE account_id = 'v' ORDER BY 1, 2$$,
                  $$VALUES ('2026-03-10'::date, 'editor', 35::numeric, 0::numeric, 4::numeric, 31::numeric, 0::numeric, 2),
                           ('2026-03-11'::date, 'images', 69::numeric, 11::numeric, 5::numeric, 75::numeric, 12::numeric, 1)$$,
                  'usage_daily: used, overage, refunds (overage first), billable overage at rate 2, actions');
SELECT results_eq($$SELECT month, product, used, overage, refunded, net_used, actions FROM credits.usage_monthly
                     WHERE account_id = 'v' ORDER BY 2$$,
                  $$VALUES ('2026-03-01'::date, 'editor', 35::numeric, 0::numeric, 4::numeric, 31::numeric, 2::bigint),
                           ('2026-03-01'::date, 'images', 69::numeric, 11::numeric, 5::numeric, 75::numeric, 1::bigint)$$,
                  'usage_monthly');
SELECT results_eq($$SELECT day, product, net_used FROM credits_usage_daily('v', '2026-03-09', '2026-03-12')$$,
                  $$VALUES ('2026-03-09'::date, 'editor', 0::numeric), ('2026-03-09', 'images', 0),
                           ('2026-03-10', 'editor', 31), ('2026-03-10', 'images', 0),
                           ('2026-03-11', 'editor', 0), ('2026-03-11', 'images', 75),
                           ('2026-03-12', 'editor', 0), ('2026-03-12', 'images', 0)$$,
                  'credits_usage_daily: every day and product of the range, zeros included');
SELECT results_eq($$SELECT tag_value, product, actions, net FROM credits_usage_by_tag('v', 'subject')$$,
                  $$VALUES ('design', 'editor', 1::bigint, 25::numeric), ('research', 'editor', 1, 6),
                           (NULL, 'images', 1, 75)$$,
                  'credits_usage_by_tag: usage by a metadata tag');
-- Its days are UTC days, whatever the session's time zone: at UTC+14 the
-- editor actions of 2026-03-10 12:00 UTC fall on the local 11th.
SET LOCAL TimeZone = 'Pacific/Kiritimati';
SELECT results_eq($$SELECT tag_value, product, actions, net FROM credits_usage_by_tag('v', 'subject', '2026-03-11', '2026-03-11')$$,
                  $$VALUES (NULL::text, 'images', 1::bigint, 75::numeric)$$,
                  'credits_usage_by_tag: a UTC day, at UTC+14 too');
SELECT results_eq($$SELECT tag_value, product, actions, net FROM credits_usage_by_tag('v', 'subject', to_day => '2026-03-10')$$,
                  $$VALUES ('design'::text, 'editor', 1::bigint, 25::numeric), ('research', 'editor', 1, 6)$$,
                  'credits_usage_by_tag: up to the end of a UTC day, at UTC+14 too');
-- A day runs from its midnight (UTC) included to the next one excluded.
SELECT credits_account_upsert(account_id => 'vd', plan_id => 'pro');
SELECT credits_commit(credits_reserve(account_id => 'vd', amount => 1, product => 'editor', metadata => jsonb_build_object('at', t)))
  FROM unnest(ARRAY['2026-03-12 00:00:00+00', '2026-03-12 23:59:59.999999+00', '2026-03-13 00:00:00+00']::timestamptz[]) t,
       LATERAL (SELECT set_config('credits.now', t::text, true)) c;
SELECT results_eq($$SELECT tag_value, actions FROM credits_usage_by_tag('vd', 'at', '2026-03-12', '2026-03-12') ORDER BY 1$$,
                  $$SELECT to_jsonb(t) #>> '{}', 1::bigint
                      FROM unnest(ARRAY['2026-03-12 00:00:00+00', '2026-03-12 23:59:59.999999+00']::timestamptz[]) t ORDER BY 1$$,
                  'credits_usage_by_tag: an action at the day''s first instant is in it, one at the next day''s is not');
SET LOCAL credits.now = '2026-03-11 09:00:00+00';
RESET TimeZone;
SELECT is((SELECT count(*) FROM credits_usage_by_tag('v', 'subject', to_day => '5874897-12-31')), 3::bigint,
          'credits_usage_by_tag: the last date there is, open-ended');
SELECT is((SELECT count(*) FROM credits_usage_by_tag('v', 'subject', from_day => 'infinity')), 0::bigint,
          'credits_usage_by_tag: from infinity, nothing');
-- Bad arguments: NULLs (which returned nothing before 0.3.5) and ranges
-- that would make a row per day without end.
SELECT throws_ok($$SELECT * FROM credits_usage_daily(NULL, '2026-03-09', '2026-03-12')$$, '22004',
                 'account_id must not be NULL', 'credits_usage_daily: NULL account');
SELECT throws_ok($$SELECT * FROM credits_usage_daily('v', NULL, '2026-03-12')$$, '22004',
                 'from_day must not be NULL', 'credits_usage_daily: NULL first day');
SELECT throws_ok($$SELECT * FROM credits_usage_daily('v', '2026-03-09', 'infinity')$$, '22023',
                 'the range of days must be finite and at most 3660 days', 'credits_usage_daily: an open range');
SELECT throws_ok($$SELECT * FROM credits_usage_daily('v', '2026-03-12'::date - 3660, '2026-03-12')$$, '22023',
                 'the range of days must be finite and at most 3660 days', 'credits_usage_daily: 3661 days');
SELECT is((SELECT count(*) FROM credits_usage_daily('v', '2026-03-10'::date - 3659, '2026-03-10')), 3660::bigint,
          'credits_usage_daily: 3660 days, a row each for the one product used in them');
SELECT throws_ok($$SELECT * FROM credits_usage_by_tag('v', NULL)$$, '22004',
                 'tag must not be NULL', 'credits_usage_by_tag: NULL tag');
SELECT results_eq($$SELECT product, status, reserved, charged, refunded, net FROM credits.actions
                     WHERE account_id = 'v' ORDER BY created_at$$,
                  $$VALUES ('editor', 'committed', 30::numeric, 25::numeric, 0::numeric, 25::numeric),
                           ('seo', 'refunded', 10, 0, 0, 0),
                           ('editor', 'partially_refunded', 10, 10, 4, 6),
                           ('images', 'partially_refunded', 80, 80, 5, 75)$$,
                  'actions: the failed action shows as refunded');
SELECT credits_account_upsert(account_id => 'v0', plan_id => 'pro');
SELECT credits_commit(credits_reserve(account_id => 'v0', amount => 5, product => 'editor'), 0);
SELECT results_eq($$SELECT status, reserved, charged, refunded, net FROM credits.actions WHERE account_id = 'v0'$$,
                  $$VALUES ('committed', 5::numeric, 0::numeric, 0::numeric, 0::numeric)$$,
                  'actions: a commit of 0 is an action that cost nothing, not a refund');
SELECT results_eq($$SELECT allocation, used, percent_used, reserved, available, overage, overage_available, limit_mode,
                           soft_allowance, next_reset, days_until_reset
                      FROM credits.account_summary WHERE account_id = 'v'$$,
                  $$VALUES (100::numeric, 100::numeric, 100.00::numeric, 0::numeric, 0::numeric, 6::numeric, 14::numeric,
                            'soft', 20::numeric, '2026-04-01 00:00+00'::timestamptz, 21)$$,
                  'account_summary: the usage ring');
SELECT results_eq($$SELECT allocation, used, percent_used FROM credits.account_summary WHERE account_id = 'vb'$$,
                  $$VALUES (0::numeric, 0::numeric, NULL::numeric)$$,
                  'account_summary: no percentage of an allocation of 0 (BYOK)');
SELECT results_eq($$SELECT category, count(*) FROM credits.transactions WHERE account_id = 'v' GROUP BY 1 ORDER BY 1$$,
                  $$VALUES ('deduction', 4::bigint), ('refund', 2::bigint), ('reset', 1::bigint)$$,
                  'transactions: categories');
SELECT is((SELECT project FROM credits.transactions WHERE account_id = 'v' AND kind = 'charge' ORDER BY entry_id LIMIT 1),
          'p1', 'transactions carry the resource references of their reservation');
SELECT results_eq($$SELECT product, actions_total, used_total, refunded_total, byok_used_total FROM credits.metrics
                     WHERE account_id IN ('v', 'vb') ORDER BY account_id, product$$,
                  $$VALUES ('editor', 2::bigint, 35::numeric, 4::numeric, 0::numeric),
                           ('images', 1::bigint, 69::numeric, 5::numeric, 0::numeric),
                           ('editor', 1::bigint, 0::numeric, 0::numeric, 300::numeric)$$,
                  'metrics: totals per account and product; BYOK usage reported as such');
SELECT ok((SELECT scrape_time = credits._now() FROM credits.metrics LIMIT 1), 'metrics carry the scrape time');
SELECT is((SELECT byok_used FROM credits.usage_daily WHERE account_id = 'vb'), 300::numeric, 'BYOK usage per day');

-- A reset, an expiry, a promo and a grant in the history.
SELECT credits_grant(account_id => 'v', amount => 5, kind => 'promo', expires_at => '2026-03-20 00:00+00');
SET LOCAL credits.now = '2026-04-01 00:00:00+00';
SELECT credits_reset();
SELECT results_eq($$SELECT category, kind, amount FROM credits.transactions WHERE account_id = 'v'
                     AND created_at >= '2026-03-11 00:00+00' AND category IN ('grant', 'expiry', 'reset') ORDER BY entry_id$$,
                  $$VALUES ('grant', 'promo', 5::numeric), ('expiry', 'expire', -5::numeric),
                           ('reset', 'allocation', 100::numeric)$$,
                  'transactions: grants, expiries and resets');
SELECT results_eq($$SELECT used, overage, available, overage_available FROM credits.account_summary WHERE account_id = 'v'$$,
                  $$VALUES (0::numeric, 0::numeric, 100::numeric, 20::numeric)$$, 'a new period in the usage ring');

-- The views are security_invoker and granted to the reader role.
SELECT is((SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'credits' AND c.relkind = 'v'
              AND NOT coalesce('security_invoker=true' = ANY (c.reloptions), false)), 0::bigint,
          'every view is security_invoker');
SELECT ok((SELECT bool_and(has_table_privilege('credits_reader', format('credits.%I', v), 'SELECT'))
             FROM unnest(ARRAY['account_summary', 'usage_daily', 'usage_monthly', 'transactions', 'actions', 'metrics']) v),
          'the reader role may read every view');

-- A pending hold past its ttl shows as expired, by the extension's clock,
-- and reading it writes nothing.
SELECT credits_reserve(account_id => 'v', amount => 1, product => 'editor', ttl => '1 minute')::text AS held \gset
SELECT is((SELECT status FROM credits.actions WHERE reservation_id = :'held'), 'pending', 'actions: a live hold is pending');
SET LOCAL credits.now = '2026-04-01 00:02:00+00';
SELECT is((SELECT status FROM credits.actions WHERE reservation_id = :'held'), 'expired',
          'actions: a hold past its ttl shows as expired');
SELECT is((SELECT status FROM credits.reservations WHERE reservation_id = :'held'), 'pending', 'without writing');

-- An action's overage: what a pending hold holds past the buckets, what a
-- commit charged past them, nothing for a hold released or expired
-- without a commit (nothing was charged).
SELECT credits_plan_upsert(plan_id => 'tiny', allocation => 10, reset => 'calendar_month',
                           limit_mode => 'soft', soft_limit => 50);
SELECT credits_account_upsert(account_id => 'ov', plan_id => 'tiny');
SELECT credits_reserve(account_id => 'ov', amount => 15, product => 'editor')::text AS ov1 \gset
SELECT credits_reserve(account_id => 'ov', amount => 4, product => 'editor', ttl => '1 minute')::text AS ov2 \gset
SELECT credits_reserve(account_id => 'ov', amount => 6, product => 'editor')::text AS ov3 \gset
SELECT results_eq(format($$SELECT status, overage FROM credits.actions WHERE reservation_id IN (%L, %L, %L)
                            ORDER BY reserved DESC$$, :'ov1', :'ov2', :'ov3'),
                  $$VALUES ('pending', 5::numeric), ('pending', 6::numeric), ('pending', 4::numeric)$$,
                  'actions: a pending hold shows the overage it holds');
SELECT credits_commit(:'ov3');
SELECT credits_refund(:'ov1');
SET LOCAL credits.now = '2026-04-01 00:04:00+00';
SELECT results_eq(format($$SELECT status, overage FROM credits.actions WHERE reservation_id IN (%L, %L, %L)
                            ORDER BY reserved DESC$$, :'ov1', :'ov2', :'ov3'),
                  $$VALUES ('refunded', 0::numeric), ('committed', 6::numeric), ('expired', 0::numeric)$$,
                  'actions: a released or expired hold shows no overage, a commit what it charged past the buckets');

-- "The last actions of an account" reads that many reservations by index,
-- not all of the account's: the view must merge into the query that reads
-- it (no VOLATILE function among its columns). Sequential and bitmap scans
-- are off so that the plan does not depend on the statistics of a small
-- table; a view that is not merged reads all 300 by index and sorts them.
SELECT credits_plan_upsert(plan_id => 'large', allocation => 1000);
SELECT credits_account_upsert(account_id => 'many', plan_id => 'large');
SELECT count(credits_commit(credits_reserve(account_id => 'many', amount => 1, product => 'editor'))) AS n_many
  FROM generate_series(1, 300) \gset
SET LOCAL enable_seqscan = off;
SET LOCAL enable_bitmapscan = off;
SET LOCAL max_parallel_workers_per_gather = 0;
SELECT pg_temp.tuples_read('credits.reservations') AS read_before \gset
SELECT count(*) FROM (SELECT * FROM credits.actions WHERE account_id = 'many' ORDER BY created_at DESC LIMIT 5) x \gset
SELECT pg_temp.tuples_read('credits.reservations') AS read_after \gset
SELECT cmp_ok(:read_after - :read_before, '<=', 20,
              format('the last 5 actions of an account with 300 read %s reservations', :read_after - :read_before));
SELECT pg_temp.tuples_read('credits.ledger') AS read_before \gset
SELECT count(*) FROM (SELECT * FROM credits.transactions WHERE account_id = 'many' ORDER BY created_at DESC LIMIT 5) x \gset
SELECT pg_temp.tuples_read('credits.ledger') AS read_after \gset
SELECT cmp_ok(:read_after - :read_before, '<=', 20,
              format('and its last 5 transactions (of 301) read %s ledger rows', :read_after - :read_before));
-- A page of the usage ring computes the state of that page's accounts only
-- (account_summary merges too: no VOLATILE function among its columns).
SELECT count(credits_account_upsert(account_id => 'page' || i, plan_id => 'large')) AS n_page
  FROM generate_series(1, 100) i \gset
SET LOCAL track_functions = 'pl';
SELECT coalesce((SELECT calls FROM pg_stat_xact_user_functions
                  WHERE funcid = 'credits._account_state(text, timestamptz)'::regprocedure), 0) AS calls_before \gset
SELECT count(*) FROM (SELECT * FROM credits.account_summary ORDER BY account_id LIMIT 5) x \gset
SELECT coalesce((SELECT calls FROM pg_stat_xact_user_functions
                  WHERE funcid = 'credits._account_state(text, timestamptz)'::regprocedure), 0) AS calls_after \gset
SELECT cmp_ok(:calls_after - :calls_before, '<=', 10,
              format('a page of 5 accounts of %s computes %s account states',
                     (SELECT count(*) FROM credits.accounts), :calls_after - :calls_before));
RESET enable_seqscan;
RESET enable_bitmapscan;
RESET max_parallel_workers_per_gather;

-- credits_balance() lists the live buckets with what each has left and
-- holds, and leaves spent ones out; a hold past its ttl is shown given
-- back, without writing, before any write path has marked it expired.
SET LOCAL credits.now = '2026-04-01 00:10:00+00';
SELECT credits_account_upsert(account_id => 'live', plan_id => 'large');
SELECT credits_commit(credits_reserve(account_id => 'live', amount => 1000, product => 'editor'));
SELECT credits_grant(account_id => 'live', amount => 20, kind => 'pack')::text AS pack_a \gset
SET LOCAL credits.now = '2026-04-01 00:10:01+00';
SELECT credits_grant(account_id => 'live', amount => 1, kind => 'pack')::text AS pack_c \gset
SELECT credits_grant(account_id => 'live', amount => 5, kind => 'topup')::text AS topup_b \gset
SELECT credits_reserve(account_id => 'live', amount => 12, product => 'editor', ttl => '10 minutes');
SELECT credits_reserve(account_id => 'live', amount => 8, product => 'editor', ttl => '1 hour');
SELECT results_eq($$SELECT x->>'bucket_id', (x->>'remaining')::numeric, (x->>'held')::numeric
                      FROM jsonb_array_elements(credits_balance('live') -> 'buckets') x
                     ORDER BY x->>'kind', (x->>'held')::numeric DESC$$,
                  format($$VALUES (%L, 5::numeric, 15::numeric), (%L, 1::numeric, 0::numeric), (%L, 0::numeric, 5::numeric)$$,
                         :'pack_a', :'pack_c', :'topup_b'),
                  'credits_balance lists a pack (5 left, 15 held), the newer pack untouched (1) and the topup (0 left, 5 held), '
                  || 'not the spent allocation');
SET LOCAL credits.now = '2026-04-01 00:30:00+00';
SELECT results_eq($$SELECT x->>'kind', (x->>'remaining')::numeric, (x->>'held')::numeric
                      FROM jsonb_array_elements(credits_balance('live') -> 'buckets') x
                     ORDER BY x->>'kind', (x->>'held')::numeric DESC$$,
                  $$VALUES ('pack', 12::numeric, 8::numeric), ('pack', 1::numeric, 0::numeric), ('topup', 5::numeric, 0::numeric)$$,
                  'past the first hold''s ttl it shows its 12 given back (to the topup first), the other hold kept');
SELECT is((SELECT count(*) FROM credits.reservations WHERE account_id = 'live' AND status = 'pending'), 2::bigint,
          'having written nothing');
SELECT is_empty('SELECT * FROM credits_verify()', 'credits_verify() is empty');
-- A hold stops counting at its expires_at, as the write paths judge it:
-- read at that very instant, the per-action log shows it expired, without
-- the overage it held.
SET LOCAL credits.now = '2026-04-02 10:00:00+00';
SELECT credits_plan_upsert(plan_id => 'edge_soft', allocation => 10, limit_mode => 'soft', soft_limit => 20);
SELECT credits_account_upsert(account_id => 'edge_soft', plan_id => 'edge_soft');
SELECT credits_reserve(account_id => 'edge_soft', amount => 15, product => 'editor', ttl => '10 minutes');
SET LOCAL credits.now = '2026-04-02 10:09:59.999999+00';
SELECT results_eq($$SELECT status, overage FROM credits.actions WHERE account_id = 'edge_soft'$$,
                  $$VALUES ('pending', 5::numeric)$$, 'a microsecond before its expiry a hold is pending, with its overage');
SET LOCAL credits.now = '2026-04-02 10:10:00+00';
SELECT results_eq($$SELECT status, overage FROM credits.actions WHERE account_id = 'edge_soft'$$,
                  $$VALUES ('expired', 0::numeric)$$, 'at its expiry it is expired, with none');
-- Every column of every usage view and table says what it means (\d+, BI tools).
SELECT is_empty($$SELECT c.relname || '.' || a.attname FROM pg_catalog.pg_attribute a
                    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                   WHERE c.relnamespace = 'credits'::regnamespace AND c.relkind IN ('v', 'r')
                     AND a.attnum > 0 AND NOT a.attisdropped
                     AND coalesce(pg_catalog.col_description(c.oid, a.attnum), '') = ''$$,
                'every column of the usage views and of the tables has a comment');

SELECT * FROM finish();
ROLLBACK;
