\ir helpers.inc
SELECT plan(97);

SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100, reset => 'calendar_month');
SELECT credits_plan_upsert(plan_id => 'free', allocation => 10, reset => 'calendar_month', purchases_allowed => false);
SELECT credits_pack_upsert(pack_id => 'p20', credits => 200, price => 20, currency => 'EUR');
SELECT credits_account_upsert(account_id => 'acme', plan_id => 'pro');
SELECT credits_account_upsert(account_id => 'freebie', plan_id => 'free');

-- Purchases.
SELECT credits_purchase(account_id => 'acme', pack => 'p20', payment_ref => 'pi_1')::text AS b1 \gset
SELECT is((SELECT kind || ':' || balance || ':' || coalesce(expires_at::text, 'never') FROM credits.buckets WHERE bucket_id = :'b1'),
          'pack:200.000000:never', 'a purchase is a pack bucket that never expires');
SELECT is(credits_purchase(account_id => 'acme', pack => 'p20', payment_ref => 'pi_1')::text, :'b1',
          'idempotent on the payment reference');
SELECT is((SELECT count(*) FROM credits.purchases WHERE account_id = 'acme'), 1::bigint, 'one purchase');
SELECT ok(EXISTS (SELECT 1 FROM credits.ledger WHERE bucket_id = :'b1' AND kind = 'purchase' AND amount = 200),
          'recorded in the ledger as a purchase');
SELECT credits_pack_upsert(pack_id => 'p50', credits => 600, price => 50, currency => 'EUR');
SELECT throws_ok($$SELECT credits_purchase(account_id => 'acme', pack => 'p50', payment_ref => 'pi_1')$$, 'CR006', NULL,
                 'a payment reference buys one pack');
SELECT pg_temp.state() AS before \gset
SELECT throws_ok($$SELECT credits_purchase(account_id => 'freebie', pack => 'p20', payment_ref => 'pi_2')$$, 'CR010',
                 'purchases are not allowed on plan "free"', 'the free plan must upgrade');
SELECT throws_ok($$SELECT credits_purchase(account_id => 'acme', pack => 'nope', payment_ref => 'pi_3')$$, 'CR016', NULL,
                 'unknown pack');
SELECT is(pg_temp.state(), :'before', 'refused purchases leave nothing behind');
SELECT credits_commit(credits_reserve(account_id => 'acme', amount => 120, product => 'editor'));
SELECT is((SELECT balance FROM credits.buckets WHERE bucket_id = :'b1'), 180::numeric,
          'packs are used only after the allocation');

-- Alerts at 80% and 100% of the allocation, once per period.
SELECT credits_account_upsert(account_id => 'al', plan_id => 'pro');
SELECT credits_commit(credits_reserve(account_id => 'al', amount => 79, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.events WHERE account_id = 'al'), 0::bigint, 'no alert below 80%');
SELECT credits_commit(credits_reserve(account_id => 'al', amount => 1, product => 'editor'));
SELECT results_eq($$SELECT kind, payload->>'percent' FROM credits.events WHERE account_id = 'al' ORDER BY event_id$$,
                  $$VALUES ('usage_alert', '80')$$, 'the 80% alert at 80%');
SELECT credits_commit(credits_reserve(account_id => 'al', amount => 5, product => 'editor'));
SELECT credits_refund(credits_reserve(account_id => 'al', amount => 1, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.events WHERE account_id = 'al'), 1::bigint, 'raised once');
SELECT credits_commit(credits_reserve(account_id => 'al', amount => 15, product => 'editor'));
SELECT results_eq($$SELECT payload->>'percent' FROM credits.events WHERE account_id = 'al' ORDER BY event_id$$,
                  $$VALUES ('80'), ('100')$$, 'then the 100% alert');
SET LOCAL credits.now = '2026-04-02 00:00:00+00';
SELECT credits_commit(credits_reserve(account_id => 'al', amount => 85, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.events WHERE account_id = 'al' AND payload->>'percent' = '80'), 2::bigint,
          'alerts are raised again in the next period');
SET LOCAL credits.now = '2026-03-10 12:00:00+00';
-- Alerts are percentages of the period's allocation: an edit of the plan's
-- allocation applies from the next reset, for alerts too.
SELECT credits_plan_upsert(plan_id => 'grows', allocation => 100, reset => 'calendar_month');
SELECT credits_account_upsert(account_id => 'al2', plan_id => 'grows', alert_percents => '{50,90}');
SELECT credits_commit(credits_reserve(account_id => 'al2', amount => 55, product => 'editor'));
SELECT credits_plan_upsert(plan_id => 'grows', allocation => 200, reset => 'calendar_month');
SELECT credits_commit(credits_reserve(account_id => 'al2', amount => 40, product => 'editor'));
SELECT results_eq($$SELECT payload->>'percent', payload->>'allocation' FROM credits.events WHERE account_id = 'al2' ORDER BY event_id$$,
                  $$VALUES ('50', '100.000000'), ('90', '100.000000')$$,
                  'after an edit of the plan''s allocation, the period''s allocation still counts');
SELECT credits_account_upsert(account_id => 'al2', alert_percents => '{50,90,99}');
SELECT is((SELECT next_alert_at FROM credits.accounts WHERE account_id = 'al2'), 99::numeric,
          'also for new alert percentages');
-- A change of the account that puts its usage past an alert line raises
-- the alert at once, not at the next commit.
SELECT credits_plan_upsert(plan_id => 'small', allocation => 60, reset => 'calendar_month');
SELECT credits_account_upsert(account_id => 'al3', plan_id => 'pro', alert_percents => '{50,90}');
SELECT credits_commit(credits_reserve(account_id => 'al3', amount => 40, product => 'editor'));
SELECT credits_account_upsert(account_id => 'al3', plan_id => 'small');
SELECT results_eq($$SELECT payload->>'percent', payload->>'used', payload->>'allocation' FROM credits.events
                     WHERE account_id = 'al3' ORDER BY event_id$$,
                  $$VALUES ('50', '40.000000', '60.000000')$$,
                  'a plan with a smaller allocation raises the alert that its usage has passed');
SELECT credits_account_upsert(account_id => 'al3', alert_percents => '{50,60}');
SELECT results_eq($$SELECT payload->>'percent' FROM credits.events WHERE account_id = 'al3' ORDER BY event_id$$,
                  $$VALUES ('50'), ('60')$$, 'so does a new alert percentage already passed');

-- credits.notify: on by default; off, events are written all the same, with
-- no NOTIFY (tests/notifications.rs listens, and prepares such transactions).
SELECT is(current_setting('credits.notify'), 'on', 'credits.notify is on by default');
SELECT throws_ok($$SET LOCAL credits.notify = 'sometimes'$$, '22023', NULL, 'credits.notify takes a boolean');
SET LOCAL credits.notify = off;
SELECT credits_account_upsert(account_id => 'quiet', plan_id => 'pro');
SELECT credits_commit(credits_reserve(account_id => 'quiet', amount => 100, product => 'editor'));
SELECT results_eq($$SELECT kind, payload->>'percent' FROM credits.events WHERE account_id = 'quiet' ORDER BY event_id$$,
                  $$VALUES ('usage_alert', '80'), ('usage_alert', '100')$$,
                  'with credits.notify off, alerts are still written to the outbox');
SELECT is((SELECT alerts_raised FROM credits.accounts WHERE account_id = 'quiet'), '{80,100}'::numeric[],
          'and count as raised');
SET LOCAL credits.notify = on;

-- Auto-recharge: once per crossing, within the monthly cap.
SELECT credits_account_upsert(account_id => 'ar', plan_id => 'pro', alert_percents => '{}');

-- Alert percentages: above 0, at most 1000, a flat list.
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'ar', alert_percents => '{80,0}')$$, '22023',
                 'alert_percents must be a list of percentages above 0 and at most 1000', 'an alert at 0% is refused');
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'ar', alert_percents => '{80,NULL}')$$, '22023',
                 NULL, 'an alert at NULL% is refused');
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'ar', alert_percents => '{1000.000001}')$$, '22023',
                 NULL, 'an alert above 1000% is refused');
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'ar', alert_percents => '{{50},{80}}')$$, '22023',
                 NULL, 'alert percentages in two dimensions are refused');
SELECT lives_ok($$SELECT credits_account_upsert(account_id => 'ar', alert_percents => '{1000}')$$, '1000% is allowed');
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'ar', limit_mode => 'soft', override_until => 'infinity')$$,
                 '22023', 'override_until must be a finite timestamp', 'an override without end leaves override_until out');
SELECT credits_account_upsert(account_id => 'ar', alert_percents => '{}');
SELECT throws_ok($$SELECT credits_auto_recharge_set(account_id => 'freebie', enabled => true, pack => 'p20', threshold => 5)$$,
                 'CR010', NULL, 'no auto-recharge where purchases are not allowed');
SELECT credits_auto_recharge_set(account_id => 'ar', enabled => true, pack => 'p20', threshold => 30, monthly_cap => 50);
SELECT credits_commit(credits_reserve(account_id => 'ar', amount => 60, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar'), 0::bigint, 'no request above the threshold');
SELECT credits_commit(credits_reserve(account_id => 'ar', amount => 15, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar' AND status = 'pending'), 1::bigint,
          'a commit crossing the threshold writes a request');
SELECT is((SELECT count(*) FROM credits.events WHERE account_id = 'ar' AND kind = 'recharge_requested'), 1::bigint,
          'and an event');
SELECT credits_commit(credits_reserve(account_id => 'ar', amount => 5, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar'), 1::bigint, 'once per crossing');
SELECT request_id::text AS req FROM credits.recharge_requests WHERE account_id = 'ar' \gset
SELECT throws_ok(format('SELECT credits_purchase(account_id => %L, pack => %L, payment_ref => %L)', 'ar', 'p50', :'req'),
                 'CR006', format('payment_ref "%s" is a recharge request for pack "p20"', :'req'),
                 'a recharge request is completed with its own pack only');
SELECT credits_purchase(account_id => 'ar', pack => 'p20', payment_ref => :'req');
SELECT is((SELECT status FROM credits.recharge_requests WHERE request_id = :'req'), 'completed',
          'the payment worker completes it with credits_purchase');
SELECT ok((SELECT auto_recharge FROM credits.purchases WHERE payment_ref = :'req'), 'as an auto-recharge purchase');
SELECT credits_commit(credits_reserve(account_id => 'ar', amount => 200, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar'), 2::bigint,
          'the next crossing writes a second request (20 + 20 <= 50)');
SELECT request_id::text AS req2 FROM credits.recharge_requests WHERE account_id = 'ar' AND status = 'pending' \gset
SELECT credits_recharge_fail(request_id => :'req2', reason => 'card declined');
SELECT is((SELECT status || ':' || reason FROM credits.recharge_requests WHERE request_id = :'req2'), 'failed:card declined',
          'a failed payment is recorded');
SELECT throws_ok(format('SELECT credits_recharge_fail(request_id => %L)', :'req2'), 'CR017', NULL,
                 'only a pending request can be failed');
SELECT credits_grant(account_id => 'ar', amount => 100, kind => 'adjustment');
SELECT credits_commit(credits_reserve(account_id => 'ar', amount => 100, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar'), 3::bigint,
          'failed requests do not count against the cap');
SELECT credits_purchase(account_id => 'ar', pack => 'p20', payment_ref => (SELECT request_id::text FROM credits.recharge_requests WHERE account_id = 'ar' AND status = 'pending'));
SELECT credits_commit(credits_reserve(account_id => 'ar', amount => 200, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar'), 3::bigint,
          'a third 20 would pass the monthly cap of 50: no request');
SELECT results_eq($$SELECT status, count(*) FROM credits.recharge_requests WHERE account_id = 'ar' GROUP BY 1 ORDER BY 1$$,
                  $$VALUES ('completed', 2::bigint), ('failed', 1::bigint)$$,
                  'completing a request leaves the account''s failed one failed');
-- The cap is in the pack's currency: a pack in another currency starts
-- from what was spent in that one.
SELECT credits_pack_upsert(pack_id => 'usd20', credits => 200, price => 20, currency => 'usd');
SELECT is((SELECT currency FROM credits.packs WHERE pack_id = 'usd20'), 'USD', 'a currency is stored in upper case');
SELECT credits_auto_recharge_set(account_id => 'ar', enabled => true, pack => 'usd20', monthly_cap => 30);
SELECT credits_grant(account_id => 'ar', amount => 100, kind => 'adjustment');
SELECT credits_commit(credits_reserve(account_id => 'ar', amount => 100, product => 'editor'));
SELECT is((SELECT currency || ' ' || price FROM credits.recharge_requests WHERE account_id = 'ar' AND status = 'pending'),
          'USD 20.000000', 'the EUR already spent does not count against a cap in USD');
SELECT credits_recharge_fail(request_id => (SELECT request_id FROM credits.recharge_requests WHERE account_id = 'ar' AND status = 'pending'));
SELECT credits_auto_recharge_set(account_id => 'ar', enabled => true, pack => 'p20', monthly_cap => 50);
SELECT credits_grant(account_id => 'ar', amount => 100, kind => 'adjustment');
SELECT credits_commit(credits_reserve(account_id => 'ar', amount => 100, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar' AND status = 'pending'), 0::bigint,
          'back on the EUR pack, the EUR spent counts again');
-- NULL keeps the pack, the threshold and the cap; a new configuration's cap is 50.
SELECT credits_auto_recharge_set(account_id => 'ar', enabled => true, monthly_cap => 200);
SELECT credits_auto_recharge_set(account_id => 'ar', enabled => false);
SELECT credits_auto_recharge_set(account_id => 'ar', enabled => true);
SELECT is((SELECT pack_id || ' ' || trim_scale(threshold) || ' ' || trim_scale(monthly_cap) FROM credits.auto_recharge
            WHERE account_id = 'ar'), 'p20 30 200', 'turning auto-recharge off and on keeps its pack, threshold and cap');
SELECT credits_account_upsert(account_id => 'ar2', plan_id => 'pro');
SELECT throws_ok($$SELECT credits_auto_recharge_set(account_id => 'ar2', enabled => true, pack => 'p20')$$, '22004',
                 'threshold must not be NULL', 'a first configuration needs a threshold');
SELECT credits_auto_recharge_set(account_id => 'ar2', enabled => true, pack => 'p20', threshold => 10);
SELECT is((SELECT trim_scale(monthly_cap) FROM credits.auto_recharge WHERE account_id = 'ar2'), 50::numeric,
          'a new configuration''s cap is 50');
SELECT credits_pack_upsert(pack_id => 'p20', credits => 200, price => 20, currency => 'EUR', active => false);
SELECT credits_commit(credits_reserve(account_id => 'ar2', amount => 95, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar2'), 0::bigint,
          'a pack switched off is not requested');
SELECT credits_pack_upsert(pack_id => 'p20', credits => 200, price => 20, currency => 'EUR');
-- No requests while the plan allows no purchases; one made before is honoured.
SELECT credits_plan_upsert(plan_id => 'pro2', allocation => 100, reset => 'calendar_month');
SELECT credits_plan_upsert(plan_id => 'nobuy', allocation => 100, reset => 'calendar_month', purchases_allowed => false);
SELECT credits_account_upsert(account_id => 'ar3', plan_id => 'pro2');
SELECT credits_auto_recharge_set(account_id => 'ar3', enabled => true, pack => 'p20', threshold => 50);
SELECT credits_commit(credits_reserve(account_id => 'ar3', amount => 60, product => 'editor'));
SELECT request_id::text AS req3 FROM credits.recharge_requests WHERE account_id = 'ar3' \gset
SELECT credits_plan_upsert(plan_id => 'pro2', allocation => 100, reset => 'calendar_month', purchases_allowed => false);
SELECT credits_grant(account_id => 'ar3', amount => 100, kind => 'adjustment');
SELECT credits_commit(credits_reserve(account_id => 'ar3', amount => 100, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar3'), 1::bigint,
          'no request while the plan allows no purchases');
SELECT throws_ok($$SELECT credits_purchase(account_id => 'ar3', pack => 'p20', payment_ref => 'pi_x')$$, 'CR010', NULL,
                 'nor a purchase');
SELECT isnt(credits_purchase(account_id => 'ar3', pack => 'p20', payment_ref => :'req3'), NULL,
            'but a request made while it allowed them is completed');
SELECT credits_account_upsert(account_id => 'ar2', plan_id => 'nobuy');
SELECT credits_grant(account_id => 'ar2', amount => 100, kind => 'adjustment');
SELECT credits_commit(credits_reserve(account_id => 'ar2', amount => 100, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar2'), 0::bigint,
          'nor after a move to a plan without purchases');
-- A request is completed with what its event asked for, whatever became of its pack.
SELECT credits_account_upsert(account_id => 'ar4', plan_id => 'pro', alert_percents => '{}');
SELECT credits_auto_recharge_set(account_id => 'ar4', enabled => true, pack => 'p50', threshold => 50, monthly_cap => 100);
SELECT credits_commit(credits_reserve(account_id => 'ar4', amount => 60, product => 'editor'));
SELECT request_id::text AS req4 FROM credits.recharge_requests WHERE account_id = 'ar4' \gset
SELECT credits_pack_upsert(pack_id => 'p50', credits => 500, price => 60, currency => 'EUR', active => false);
SELECT credits_purchase(account_id => 'ar4', pack => 'p50', payment_ref => :'req4')::text AS b4 \gset
SELECT is((SELECT amount FROM credits.buckets WHERE bucket_id = :'b4'), 600::numeric, 'a request whose pack was repriced and switched off since is completed with what it asked for');
SELECT is((SELECT credits || ' ' || price FROM credits.purchases WHERE payment_ref = :'req4'), '600.000000 50.000000',
          'and recorded at its price');
SELECT credits_pack_upsert(pack_id => 'p50', credits => 600, price => 50, currency => 'EUR');
SELECT credits_commit(credits_reserve(account_id => 'ar4', amount => 600, product => 'editor'));
SELECT request_id::text AS req5 FROM credits.recharge_requests WHERE account_id = 'ar4' AND status = 'pending' \gset
SELECT credits_account_upsert(account_id => 'ar4', byok => true);
SELECT throws_ok($$SELECT credits_purchase(account_id => 'ar4', pack => 'p50', payment_ref => 'pi_byok')$$, 'CR014', NULL,
                 'a BYOK account buys nothing');
SELECT lives_ok(format('SELECT credits_purchase(account_id => %L, pack => %L, payment_ref => %L)', 'ar4', 'p50', :'req5'),
                'but a request made before its switch to BYOK is completed');

-- Alerts are percentages of the period's allocation: an account whose
-- plan allocates nothing raises none, whatever it spends of its packs.
SELECT credits_plan_upsert(plan_id => 'nothing', allocation => 0, reset => 'calendar_month');
SELECT credits_account_upsert(account_id => 'packs-only', plan_id => 'nothing');
SELECT credits_grant(account_id => 'packs-only', amount => 50, kind => 'pack');
SELECT credits_commit(credits_reserve(account_id => 'packs-only', amount => 50, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.events WHERE account_id = 'packs-only'), 0::bigint,
          'no alert on an allocation of 0, with the default alert percentages');
-- BYOK accounts raise no alerts or recharges.
SELECT credits_account_upsert(account_id => 'own', plan_id => 'pro', byok => true);
SELECT credits_commit(credits_reserve(account_id => 'own', amount => 500, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.events WHERE account_id = 'own'), 0::bigint, 'BYOK usage raises nothing');

-- The outbox: claim, visibility, redelivery, ack.
SELECT is((SELECT count(*) FROM credits_events_claim(consumer => 'w1', max_events => 100)),
          (SELECT count(*) FROM credits.events WHERE visible_at <= credits._now()), 'a consumer claims every visible event');
SELECT is((SELECT count(*) FROM credits_events_claim(consumer => 'w2')), 0::bigint, 'no one else holds them meanwhile');
SET LOCAL credits.now = '2026-03-10 12:01:00+00';
SELECT is((SELECT count(*) FROM credits_events_claim(consumer => 'w2', max_events => 100, kinds => '{recharge_requested}')),
          (SELECT count(*) FROM credits.events WHERE kind = 'recharge_requested'),
          'unacknowledged events come back after their visibility timeout, filtered by kind');
SELECT is((SELECT array_agg(DISTINCT deliveries) FROM credits.events WHERE kind = 'recharge_requested'), ARRAY[2],
          'each delivered a second time');
SELECT is(credits_events_ack((SELECT array_agg(event_id) FROM credits.events WHERE kind = 'recharge_requested')),
          (SELECT count(*)::integer FROM credits.events WHERE kind = 'recharge_requested'),
          'acknowledged');
SET LOCAL credits.now = '2026-03-10 12:05:00+00';
SELECT is((SELECT count(*) FROM credits_events_claim(consumer => 'w3', max_events => 100, kinds => '{recharge_requested}')),
          0::bigint, 'acknowledged events are not delivered again');
SELECT throws_ok($$SELECT * FROM credits_events_claim(consumer => 'w', max_events => 0)$$, '22023', NULL, 'bad claim sizes');
SELECT throws_ok($$SELECT * FROM credits_events_claim(consumer => 'w', visibility => '0')$$, '22023', NULL,
                 'a visibility of 0 is refused');
SELECT lives_ok($$SELECT * FROM credits_events_claim(consumer => 'w', max_events => 1, visibility => '1 microsecond')$$,
                'one event with the shortest visibility is a claim');

-- Auto-recharge looks at the balance whenever it may have gone below the
-- threshold, or what stood in the way may have gone, and writes one
-- request at a time.
SELECT credits_plan_upsert(plan_id => 'zero', allocation => 0, reset => 'calendar_month');
SELECT credits_pack_upsert(pack_id => 'p5', credits => 10, price => 5, currency => 'EUR');
SELECT credits_account_upsert(account_id => 'ar5', plan_id => 'zero', alert_percents => '{}');
SELECT credits_grant(account_id => 'ar5', amount => 50, kind => 'promo', expires_at => '2026-03-10 12:06:00+00');
SELECT credits_grant(account_id => 'ar5', amount => 3, kind => 'adjustment');
SELECT credits_auto_recharge_set(account_id => 'ar5', enabled => true, pack => 'p5', threshold => 20, monthly_cap => 15);
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar5'), 0::bigint,
          'turned on above the threshold: no request');
SET LOCAL credits.now = '2026-03-10 12:07:00+00';
SELECT credits_commit(credits_reserve(account_id => 'ar5', amount => 1, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar5' AND status = 'pending'), 1::bigint,
          'an expiry that takes the balance below the threshold writes a request');
SELECT credits_grant(account_id => 'ar5', amount => 30, kind => 'adjustment');
SELECT credits_commit(credits_reserve(account_id => 'ar5', amount => 25, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar5'), 1::bigint,
          'a crossing while a request is pending writes no other');
SELECT credits_purchase(account_id => 'ar5', pack => 'p5',
                        payment_ref => (SELECT request_id::text FROM credits.recharge_requests WHERE account_id = 'ar5'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar5' AND status = 'pending'), 1::bigint,
          'a pack that leaves the balance below the threshold (7 + 10 < 20) is followed by another');
SELECT credits_purchase(account_id => 'ar5', pack => 'p5',
                        payment_ref => (SELECT request_id::text FROM credits.recharge_requests
                                         WHERE account_id = 'ar5' AND status = 'pending'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar5' AND status = 'pending'), 0::bigint,
          'and stops at the threshold (27)');
SELECT credits_commit(credits_reserve(account_id => 'ar5', amount => 10, product => 'editor'));
SELECT credits_recharge_fail(request_id => (SELECT request_id FROM credits.recharge_requests
                                             WHERE account_id = 'ar5' AND status = 'pending'), reason => 'declined');
SELECT credits_commit(credits_reserve(account_id => 'ar5', amount => 1, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar5' AND status = 'pending'), 0::bigint,
          'after a failed payment, a commit below the threshold does not try again');
SELECT credits_auto_recharge_set(account_id => 'ar5', enabled => true);
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar5' AND status = 'pending'), 1::bigint,
          'credits_auto_recharge_set below the threshold writes a request at once');
SELECT credits_purchase(account_id => 'ar5', pack => 'p5',
                        payment_ref => (SELECT request_id::text FROM credits.recharge_requests
                                         WHERE account_id = 'ar5' AND status = 'pending'));
SELECT credits_commit(credits_reserve(account_id => 'ar5', amount => 10, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar5' AND status = 'pending'), 0::bigint,
          'the monthly cap (15, spent 15) stops the next crossing');
SET LOCAL credits.now = '2026-04-01 00:01:00+00';
SELECT credits_commit(credits_reserve(account_id => 'ar5', amount => 1, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar5' AND status = 'pending'), 1::bigint,
          'a reset that leaves the balance below the threshold writes a request (a new month for the cap)');
SELECT credits_account_upsert(account_id => 'ar6', plan_id => 'pro', alert_percents => '{}');
SELECT credits_auto_recharge_set(account_id => 'ar6', enabled => true, pack => 'p5', threshold => 50);
SELECT credits_commit(credits_reserve(account_id => 'ar6', amount => 40, product => 'editor'));
SELECT credits_account_upsert(account_id => 'ar7', plan_id => 'pro', alert_percents => '{}');
SELECT credits_auto_recharge_set(account_id => 'ar7', enabled => true, pack => 'p5', threshold => 50);
SELECT credits_account_upsert(account_id => 'ar7', byok => true);
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id IN ('ar6', 'ar7')), 0::bigint,
          'a switch to BYOK writes no request');
SELECT credits_account_upsert(account_id => 'ar6', plan_id => 'zero');
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'ar6' AND status = 'pending'), 1::bigint,
          'a plan change that leaves the balance below the threshold writes a request');
-- A purchase pays an account's debt off first.
SELECT credits_account_upsert(account_id => 'owes', plan_id => 'pro');
SELECT credits_commit(credits_reserve(account_id => 'owes', amount => 10, product => 'editor'), 110, force => true);
SELECT is(pg_temp.fig('owes', 'debt'), 10::numeric, 'an account in debt');
SELECT credits_purchase(account_id => 'owes', pack => 'p20', payment_ref => 'pi_owes');
SELECT results_eq($$SELECT trim_scale(balance), trim_scale(debt) FROM credits.accounts WHERE account_id = 'owes'$$,
                  $$VALUES (190::numeric, 0::numeric)$$, 'buys 200 credits, of which 10 pay its debt');
SELECT is(pg_temp.fig('owes', 'available'), 190::numeric, 'and 190 are available');

-- Auto-recharge asks when the balance drops below the threshold, not when
-- it reaches it.
SELECT credits_account_upsert(account_id => 'edge', plan_id => 'pro');
SELECT credits_auto_recharge_set(account_id => 'edge', enabled => true, pack => 'p20', threshold => 30);
SELECT credits_commit(credits_reserve(account_id => 'edge', amount => 70, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'edge'), 0::bigint,
          'no request at a balance equal to the threshold');
SELECT credits_commit(credits_reserve(account_id => 'edge', amount => 1, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'edge'), 1::bigint,
          'a request once it is below');
-- An alert that a commit beyond its hold reaches exactly is raised; an
-- alert above the recharge threshold requests no recharge.
SELECT credits_account_upsert(account_id => 'warn', plan_id => 'pro', alert_percents => '{50}');
SELECT credits_auto_recharge_set(account_id => 'warn', enabled => true, pack => 'p20', threshold => 10);
SELECT credits_commit(credits_reserve(account_id => 'warn', amount => 10, product => 'editor'), 50);
SELECT results_eq($$SELECT kind, payload->>'percent' FROM credits.events WHERE account_id = 'warn'$$,
                  $$VALUES ('usage_alert', '50')$$, 'a commit beyond its hold to exactly 50% raises the 50% alert');
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'warn'), 0::bigint,
          'and, 50 above the threshold of 10, no recharge request');
-- Overage is usage: on a soft account, alerts past 100% of the allocation
-- are raised as the overage reaches them, by a hold's commit as by a
-- commit beyond its hold.
SELECT credits_plan_upsert(plan_id => 'over', allocation => 100, reset => 'calendar_month',
                           limit_mode => 'soft', soft_limit => 50);
SELECT credits_account_upsert(account_id => 'past', plan_id => 'over', alert_percents => '{100,120,140}');
SELECT credits_commit(credits_reserve(account_id => 'past', amount => 100, product => 'editor'));
SELECT credits_commit(credits_reserve(account_id => 'past', amount => 19, product => 'editor'));
SELECT results_eq($$SELECT payload->>'percent' FROM credits.events WHERE account_id = 'past' ORDER BY event_id$$,
                  $$VALUES ('100')$$, '100 used and 19 overage: the 100% alert only');
SELECT credits_commit(credits_reserve(account_id => 'past', amount => 1, product => 'editor'));
SELECT results_eq($$SELECT payload->>'percent' FROM credits.events WHERE account_id = 'past' ORDER BY event_id$$,
                  $$VALUES ('100'), ('120')$$, 'the 120% alert at 20 overage');
SELECT credits_commit(credits_reserve(account_id => 'past', amount => 1, product => 'editor'), 20);
SELECT results_eq($$SELECT payload->>'percent' FROM credits.events WHERE account_id = 'past' ORDER BY event_id$$,
                  $$VALUES ('100'), ('120'), ('140')$$, 'and the 140% alert at 40, by a commit beyond its hold');
-- A commit on the fast path counts the period's overage too.
SELECT credits_account_upsert(account_id => 'past2', plan_id => 'over', alert_percents => '{100,120}');
SELECT credits_commit(credits_reserve(account_id => 'past2', amount => 110, product => 'editor'));
SELECT credits_grant(account_id => 'past2', amount => 50, kind => 'pack');
SELECT credits_commit(credits_reserve(account_id => 'past2', amount => 15, product => 'editor'));
SELECT results_eq($$SELECT payload->>'percent' FROM credits.events WHERE account_id = 'past2' ORDER BY event_id$$,
                  $$VALUES ('100'), ('120')$$, 'after 10 overage, 15 from a pack make 125%: the 120% alert');

-- Turning auto-recharge on at a balance equal to the threshold requests
-- nothing; a pack no longer for sale is refused, whatever else is; a
-- threshold and a cap of 0 are taken (auto-recharge that never buys).
SELECT credits_account_upsert(account_id => 'eqt', plan_id => 'pro');
SELECT credits_auto_recharge_set(account_id => 'eqt', enabled => true, pack => 'p20', threshold => 100);
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'eqt'), 0::bigint,
          'credits_auto_recharge_set at a balance equal to the threshold requests nothing');
SELECT credits_pack_upsert(pack_id => 'retired', credits => 10, price => 1, currency => 'EUR', active => false);
SELECT throws_ok($$SELECT credits_auto_recharge_set(account_id => 'eqt', enabled => true, pack => 'retired', threshold => 5)$$,
                 'CR016', NULL, 'an inactive pack is refused, while other packs are for sale');
SELECT lives_ok($$SELECT credits_auto_recharge_set(account_id => 'eqt', enabled => true, threshold => 0, monthly_cap => 0)$$,
                'a threshold and a monthly cap of 0 are taken');
SELECT results_eq($$SELECT trim_scale(threshold), trim_scale(monthly_cap) FROM credits.auto_recharge WHERE account_id = 'eqt'$$,
                  $$VALUES (0::numeric, 0::numeric)$$, 'and stored');

-- A request made at the first instant of a month counts against that
-- month's cap.
SET LOCAL credits.now = '2026-05-01 00:00:00+00';
SELECT credits_account_upsert(account_id => 'month1', plan_id => 'pro');
SELECT credits_auto_recharge_set(account_id => 'month1', enabled => true, pack => 'p20', threshold => 150, monthly_cap => 30);
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'month1'), 1::bigint,
          'a request at 00:00 on the 1st (100 below 150)');
SELECT credits_purchase(account_id => 'month1', pack => 'p20',
                        payment_ref => (SELECT request_id::text FROM credits.recharge_requests WHERE account_id = 'month1'));
SET LOCAL credits.now = '2026-05-10 00:00:00+00';
SELECT credits_commit(credits_reserve(account_id => 'month1', amount => 200, product => 'editor'));
SELECT is((SELECT count(*) FROM credits.recharge_requests WHERE account_id = 'month1'), 1::bigint,
          'below the threshold again on the 10th: another 20 would pass the cap of 30, so no request');
SELECT is_empty('SELECT * FROM credits_verify()', 'credits_verify() is empty');

SELECT * FROM finish();
ROLLBACK;
