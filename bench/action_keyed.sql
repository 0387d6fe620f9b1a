-- Ours A with an idempotency key, as an app that retries safely passes one
-- (a new request id per action): the reserve stores the key with the
-- reservation, under the account's lock. Since 0.3.5 on the fast path.
\set id random(1, :rows)
SELECT credits_reserve(account_id => 'acct' || :id, amount => 10, product => 'editor',
                       idempotency_key => gen_random_uuid()::text) AS r \gset
SELECT credits_commit(reservation_id => :r, amount => 7);
