-- One AI action as an app runs it: reserve in one transaction, the AI call,
-- then commit a smaller amount in a second transaction.
\set id random(1, :rows)
SELECT credits_reserve(account_id => 'acct' || :id, amount => 10, product => 'editor') AS r \gset
SELECT credits_commit(reservation_id => :r, amount => 7);
