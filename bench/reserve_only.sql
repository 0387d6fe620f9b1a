-- credits_reserve alone.
\set id random(1, :rows)
SELECT credits_reserve(account_id => 'acct' || :id, amount => 10, product => 'editor');
