-- A failed AI action as an app runs it: reserve in one transaction, the AI
-- call fails, then credits_refund releases the whole hold in a second
-- transaction (nothing is charged). The refund takes the general path
-- (PL/pgSQL): there is no refund fast path.
\set id random(1, :rows)
SELECT credits_reserve(account_id => 'acct' || :id, amount => 10, product => 'editor') AS r \gset
SELECT credits_refund(reservation_id => :r, reason => 'provider timeout');
