-- Ours A with 2-second holds: by the time a client comes back to an account
-- (every few seconds at these rates), the account's next_event (its last
-- hold's expiry, the hold long committed) has mostly passed with nothing
-- due: a false alarm, as on every account of an app whose users act less
-- often than the ttl. Since 0.3.2 these stay on the fast paths.
\set id random(1, :rows)
SELECT credits_reserve(account_id => 'acct' || :id, amount => 10, product => 'editor', ttl => '2 seconds') AS r \gset
SELECT credits_commit(reservation_id => :r, amount => 7);
