-- A walk through `credits`: a plan, an account, an AI action reserved and
-- committed, a failed one refunded, a top-up, the limit, and the balance.
\pset footer off
\set SHOW_CONTEXT never
\echo '--- a plan with 100 credits a month (up to 50 unused roll over), hard limit, and an account on it'
SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100, reset => 'calendar_month', rollover_cap => 50);
SELECT credits_account_upsert(account_id => 'acme', plan_id => 'pro');

\echo '--- reserve 30 credits for an editor action, then commit what it really cost (25)'
SELECT credits_reserve(account_id => 'acme', amount => 30, product => 'editor', action => 'rewrite',
                       metadata => '{"project": "p1"}') AS reservation \gset
SELECT credits_commit(reservation_id => :'reservation', amount => 25) AS charged;

\echo '--- an image generation that failed: reserved, then refunded whole'
SELECT credits_reserve(account_id => 'acme', amount => 50, product => 'images', action => 'generate') AS failed \gset
SELECT credits_refund(reservation_id => :'failed', reason => 'provider timeout') AS returned;

\echo '--- a top-up of 20 credits (expires at the next reset)'
SELECT credits_grant(account_id => 'acme', amount => 20, kind => 'topup') IS NOT NULL AS granted;

\echo '--- the hard limit: 95 left, asking for 500 fails with SQLSTATE CR001'
\set ON_ERROR_STOP 0
SELECT credits_reserve(account_id => 'acme', amount => 500, product => 'editor');
\set ON_ERROR_STOP 1

\echo '--- the price catalogue: an image costs 25 credits; preview the cost of a large action'
SELECT credits_price_upsert(product => 'images', action => 'generate', unit => 'image', price => 25);
SELECT credits_quote(product => 'images', action => 'generate', images => 3) AS quote;

\echo '--- a pack of 200 credits (used after the allocation, never expires), and auto-recharge below 250'
SELECT credits_pack_upsert(pack_id => 'p200', credits => 200, price => 20, currency => 'EUR');
SELECT credits_purchase(account_id => 'acme', pack => 'p200', payment_ref => 'pi_demo_1') IS NOT NULL AS bought;
SELECT credits_auto_recharge_set(account_id => 'acme', enabled => true, pack => 'p200', threshold => 250);

\echo '--- a reserve made from the quote and committed: usage alerts and a recharge request land in the outbox'
SELECT credits_commit(credits_reserve(account_id => 'acme', product => 'images', action => 'generate',
       amount => credits_quote(product => 'images', action => 'generate', images => 3))) AS charged;
SELECT event_id, kind, payload->>'percent' AS percent, payload->>'pack' AS pack
  FROM credits_events_claim(consumer => 'demo', max_events => 10) ORDER BY event_id;

\echo '--- balance and history in one call'
SELECT jsonb_pretty(credits_balance('acme') #- '{transactions}') AS balance;
SELECT e->>'kind' AS kind, e->>'amount' AS amount, e->>'product' AS product
  FROM jsonb_array_elements(credits_balance('acme')->'transactions') e;

\echo '--- next month: the period rolls over (the clock is moved with the superuser-only setting'
\echo '--- credits.now, inside a transaction that is rolled back afterwards)'
BEGIN;
SELECT set_config('credits.now', (date_trunc('month', now()) + interval '1 month 2 days')::text, true) AS clock;
SELECT credits_reset() AS periods_rolled;
SELECT kind, trim_scale(amount) AS amount, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day
  FROM credits.ledger WHERE account_id = 'acme' AND kind IN ('expire', 'rollover', 'allocation')
 ORDER BY entry_id;
SELECT s->>'used' AS used, s->>'available' AS available, s->>'period_start' AS period_start, s->>'next_reset' AS next_reset
  FROM (SELECT credits_balance('acme')->'summary' AS s) x;
ROLLBACK;

\echo '--- invariants: credits_verify() returns nothing on a healthy database'
SELECT count(*) AS violations FROM credits_verify();
