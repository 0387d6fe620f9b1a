-- credits_reserve alone. Its holds are committed by the commit-alone run,
-- and those left over stay pending: their ttl outlasts the benchmark, so
-- that none expires during a later run (BENCH_REPEAT), whose first
-- reserve on each such account would then sweep it.
\set id random(1, :rows)
SELECT credits_reserve(account_id => 'acct' || :id, amount => 10, product => 'editor', ttl => '1 day');
