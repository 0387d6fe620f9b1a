-- Scale data for the usage views: :accounts accounts (made through the API)
-- and :ledger_rows ledger rows spread over 13 months, with the matching
-- reservations (one per 4 ledger rows) and usage roll-up, loaded directly.
-- The synthetic history is not balanced (credits_verify() will report it):
-- it exists to time the views.
\set ON_ERROR_STOP 1
CREATE EXTENSION credits;
SELECT credits_plan_upsert(plan_id => 'scale', allocation => 1000000, reset => 'calendar_month');
SELECT count(credits_account_upsert(account_id => 'acct' || i, plan_id => 'scale')) FROM generate_series(1, :accounts) i;
ALTER TABLE credits.ledger DISABLE TRIGGER USER;
SET synchronous_commit = off;
SET maintenance_work_mem = '1GB';
SET work_mem = '256MB';

INSERT INTO credits.reservations (reservation_id, account_id, status, product, action, amount, draw_buckets, draw_amounts,
                                  charged, refunded, period_start, expires_at, created_at, resolved_at, metadata)
SELECT gen_random_uuid(), 'acct' || (1 + i % :accounts), 'committed', (ARRAY['editor', 'seo', 'translations'])[1 + i % 3],
       'run', 10, '{}', '{}', 8, CASE WHEN i % 20 = 0 THEN 8 ELSE 0 END,
       date_trunc('month', t), t + interval '15 minutes', t, t + interval '2 seconds',
       jsonb_build_object('subject', (ARRAY['design', 'research', 'marketing'])[1 + i % 7 % 3])
  FROM generate_series(1, :ledger_rows / 4) i,
       LATERAL (SELECT now() - (i % 395) * interval '1 day' - (i % 86400) * interval '1 second' AS t) x;

INSERT INTO credits.ledger (account_id, kind, amount, product, action, actor, created_at, seq, hash)
SELECT 'acct' || (1 + i % :accounts), CASE WHEN i % 20 = 0 THEN 'refund' ELSE 'charge' END,
       CASE WHEN i % 20 = 0 THEN 8 ELSE -8 END, (ARRAY['editor', 'seo', 'translations'])[1 + i % 3], 'run', 'loader',
       now() - (i % 395) * interval '1 day' - (i % 86400) * interval '1 second', i / :accounts + 1, 'synthetic'
  FROM generate_series(1, :ledger_rows) i;

INSERT INTO credits.usage_rollup (account_id, day, product, used, refunded, actions)
SELECT account_id, (created_at AT TIME ZONE 'UTC')::date, product,
       coalesce(-sum(amount) FILTER (WHERE kind = 'charge'), 0), coalesce(sum(amount) FILTER (WHERE kind = 'refund'), 0),
       count(*) FILTER (WHERE kind = 'charge')
  FROM credits.ledger WHERE product IS NOT NULL
 GROUP BY 1, 2, 3;
ALTER TABLE credits.ledger ENABLE TRIGGER USER;
VACUUM ANALYZE;
SELECT (SELECT count(*) FROM credits.ledger) AS ledger_rows, (SELECT count(*) FROM credits.reservations) AS reservations,
       (SELECT count(*) FROM credits.usage_rollup) AS rollup_rows;
