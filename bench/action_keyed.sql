-- Ours A with an idempotency key, as an app that retries safely passes one
-- (a new request id per action, sent as a parameter): the reserve stores
-- the key with the reservation, under the account's lock. Since 0.3.5 on
-- the fast path. (A volatile expression such as gen_random_uuid()::text as
-- the argument would keep Postgres from inlining credits_reserve: see the
-- README, credits_reserve.)
\set id random(1, :rows)
\set key random(1, 9223372036854775806)
SELECT credits_reserve(account_id => 'acct' || :id, amount => 10, product => 'editor',
                       idempotency_key => 'req-' || :key) AS r \gset
SELECT credits_commit(reservation_id => :r, amount => 7);
