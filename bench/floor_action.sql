-- Calibration, not ours: the rows one of our actions writes, written by
-- plain SQL on copies of our tables (bench_floor, bench/setup.sql: same
-- columns, indexes and CHECK constraints, no triggers or foreign keys), with
-- none of the logic: no validation, product or binding check, lock order,
-- expiry, hash chain or alerts. Reserve: the account's hold, the bucket's
-- hold, the reservation. Commit: the reservation, the bucket, a ledger row,
-- the usage roll-up, the account. Its ratio to baseline A is the most our
-- data model allows, whatever the functions do. run.py derives its hot-account
-- run and the variants of make bench-decompose from this text.
\set id random(1, :rows)
WITH a AS (
    UPDATE bench_floor.accounts SET held = held + 10 WHERE account_id = 'acct' || :id
    RETURNING account_id, period_start
), b AS (
    UPDATE bench_floor.buckets SET held = held + 10 WHERE account_id = 'acct' || :id
    RETURNING bucket_id
)
INSERT INTO bench_floor.reservations (reservation_id, account_id, status, product, amount, draw_buckets,
                                      draw_amounts, period_start, expires_at, created_at)
SELECT gen_random_uuid(), a.account_id, 'pending', 'editor', 10, ARRAY[b.bucket_id], ARRAY[10],
       a.period_start, now() + interval '1 hour', now()
  FROM a, b
RETURNING reservation_id AS r \gset
WITH r AS (
    UPDATE bench_floor.reservations
       SET status = 'committed', charged = 7, draw_amounts = ARRAY[7], resolved_at = now()
     WHERE reservation_id = :r AND status = 'pending'
    RETURNING account_id, draw_buckets[1] AS bucket_id
), b AS (
    UPDATE bench_floor.buckets SET held = held - 10, balance = balance - 7
     WHERE account_id = (SELECT account_id FROM r) AND bucket_id = (SELECT bucket_id FROM r)
), l AS (
    INSERT INTO bench_floor.ledger (account_id, kind, amount, bucket_id, reservation_id, product, actor,
                                    created_at, seq, hash)
    SELECT r.account_id, 'charge', -7, r.bucket_id, :r, 'editor', 'postgres', now(), 0, '' FROM r
), u AS (
    INSERT INTO bench_floor.usage_rollup AS u (account_id, day, product, used, actions)
    SELECT r.account_id, current_date, 'editor', 7, 1 FROM r
    ON CONFLICT (account_id, day, product) DO UPDATE SET used = u.used + EXCLUDED.used, actions = u.actions + 1
)
UPDATE bench_floor.accounts a SET held = held - 10, balance = balance - 7, period_used = period_used + 7
  FROM r WHERE a.account_id = r.account_id;
