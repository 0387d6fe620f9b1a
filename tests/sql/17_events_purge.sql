\ir helpers.inc
SELECT plan(27);

-- credits_events_purge(): the events outbox's retention.
SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100);
SELECT credits_account_upsert(account_id => a, plan_id => 'pro') FROM unnest(ARRAY['acme', 'beta']) a;
CREATE ROLE t_admin_beta IN ROLE credits_admin;
SELECT credits_account_bind(account_id => 'beta', role => 't_admin_beta');
CREATE ROLE t_app_any IN ROLE credits_app;
CREATE ROLE t_reader_any IN ROLE credits_reader;

-- Events at known times, acknowledged at known times (the clock is pinned).
CREATE TEMP TABLE ev (name text PRIMARY KEY, event_id bigint);
SET LOCAL credits.now = '2026-01-01 00:00:00+00';
INSERT INTO ev VALUES
    ('old_acked',    credits._emit('acme', 'usage_alert', '{"percent": 80}', credits._now())),
    ('old_unacked',  credits._emit('acme', 'usage_alert', '{"percent": 90}', credits._now())),
    ('old_recharge', credits._emit('acme', 'recharge_requested', '{}', credits._now())),
    ('beta_old',     credits._emit('beta', 'usage_alert', '{"percent": 80}', credits._now()));
SELECT credits_events_ack((SELECT array_agg(event_id) FROM ev WHERE name IN ('old_acked', 'old_recharge', 'beta_old')));
SET LOCAL credits.now = '2026-03-01 00:00:00+00';
INSERT INTO ev VALUES ('mid_acked', credits._emit('acme', 'usage_alert', '{"percent": 100}', credits._now()));
SELECT credits_events_ack(ARRAY[(SELECT event_id FROM ev WHERE name = 'mid_acked')]);
SET LOCAL credits.now = '2026-03-10 12:00:00+00';
INSERT INTO ev VALUES ('new_unacked', credits._emit('acme', 'usage_alert', '{"percent": 80}', credits._now()));
CREATE FUNCTION pg_temp.left_over() RETURNS text[] LANGUAGE sql AS $$
    SELECT coalesce(array_agg(ev.name ORDER BY ev.name), '{}') FROM ev JOIN credits.events e USING (event_id)
$$;

-- Who may purge.
SELECT ok(has_function_privilege('credits_admin', 'credits_events_purge(interval,boolean,text[])', 'EXECUTE'),
          'credits_admin may purge events');
SELECT ok(NOT has_function_privilege('credits_app', 'credits_events_purge(interval,boolean,text[])', 'EXECUTE'),
          'credits_app may not');
SELECT ok(NOT has_function_privilege('credits_reader', 'credits_events_purge(interval,boolean,text[])', 'EXECUTE'),
          'credits_reader may not');
SELECT ok(NOT has_function_privilege('public', 'credits_events_purge(interval,boolean,text[])', 'EXECUTE'),
          'nor PUBLIC');
SET ROLE t_app_any;
SELECT throws_ok($$SELECT credits_events_purge()$$, '42501', NULL, 'an app role''s purge is refused');
RESET ROLE;
SET ROLE t_reader_any;
SELECT throws_ok($$SELECT credits_events_purge()$$, '42501', NULL, 'a reader''s purge is refused');
RESET ROLE;

-- Bad input, which deletes nothing.
SELECT pg_temp.state() AS before \gset
SELECT throws_ok($$SELECT credits_events_purge(older_than => NULL)$$, '22004', 'older_than must not be NULL',
                 'older_than NULL');
SELECT throws_ok($$SELECT credits_events_purge(unacknowledged => NULL)$$, '22004', 'unacknowledged must not be NULL',
                 'unacknowledged NULL');
SELECT throws_ok($$SELECT credits_events_purge(older_than => '-1 day')$$, '22023', 'older_than must not be negative',
                 'a negative age');
SELECT is(credits_events_purge(older_than => '300000 years', unacknowledged => true), 0::bigint,
          'an age reaching before the first day timestamptz knows purges nothing (no 22008)');
SELECT is(pg_temp.left_over(), '{beta_old,mid_acked,new_unacked,old_acked,old_recharge,old_unacked}',
          'refused purges delete nothing');

-- A caller bound to accounts purges only their events.
SET ROLE t_admin_beta;
SELECT is(credits_events_purge(older_than => '0'), 1::bigint, 'a bound admin purges its account''s acknowledged event');
RESET ROLE;
SELECT is(pg_temp.left_over(), '{mid_acked,new_unacked,old_acked,old_recharge,old_unacked}',
          'and nothing of the accounts it is not bound to');

-- Kinds, then the default: acknowledged more than 30 days ago.
SELECT is(credits_events_purge(kinds => '{recharge_requested}'), 1::bigint, 'kinds limits the purge');
SELECT is(pg_temp.left_over(), '{mid_acked,new_unacked,old_acked,old_unacked}', 'to the kinds given');
SELECT is(credits_events_purge(), 1::bigint, 'by default, events acknowledged more than 30 days ago go');
SELECT is(pg_temp.left_over(), '{mid_acked,new_unacked,old_unacked}',
          'recently acknowledged and unacknowledged events stay, however old');
-- (The cut-offs below fall on the very instants of old_unacked's creation,
-- 1,644 hours before the pinned clock, and of mid_acked's
-- acknowledgement, 228 hours before it: an event that old goes.)
SELECT is(credits_events_purge(older_than => '1644 hours', unacknowledged => true), 1::bigint,
          'unacknowledged => true also purges unacknowledged events created before the cut-off (here: at it)');
SELECT is(pg_temp.left_over(), '{mid_acked,new_unacked}', 'only those');
SELECT is(credits_events_purge(older_than => '228:00:00.000001'), 0::bigint,
          'an event acknowledged a microsecond less than older_than ago stays');
SELECT is(credits_events_purge(older_than => '228 hours'), 1::bigint, 'one acknowledged exactly older_than ago goes');
SELECT is(credits_events_purge(older_than => '0'), 0::bigint, 'a second run finds nothing');
SELECT is(pg_temp.left_over(), '{new_unacked}', 'an unacknowledged event is left');

-- Events are not balance data: the ledger and every balance are untouched.
SELECT is(pg_temp.state(), :'before', 'purging events changes no balance, reservation, ledger row or key');

-- A claim's visibility ends before the year 10000, as every time the API
-- stores must (the clock is pinned at 2026-03-10 12:00 UTC).
SELECT throws_ok($$SELECT * FROM credits_events_claim('c', 10, '300000 years')$$, '22023',
                 'visibility must end before the year 10000', 'a visibility past what timestamptz holds');
SELECT throws_ok($$SELECT * FROM credits_events_claim('c', 10, '10000-01-01 00:00:00+00'::timestamptz - '2026-03-10 12:00:00+00')$$,
                 '22023', 'visibility must end before the year 10000', 'a visibility ending at the start of the year 10000');
SELECT event_id AS claimed FROM credits_events_claim('c', 10, '9999-12-31 23:59:59.999999+00'::timestamptz - '2026-03-10 12:00:00+00') \gset
SELECT is((SELECT visible_at FROM credits.events WHERE event_id = :claimed), '9999-12-31 23:59:59.999999+00'::timestamptz,
          'one ending at the last microsecond of the year 9999 claims the event until then');

SELECT * FROM finish();
ROLLBACK;
