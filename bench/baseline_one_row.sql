-- Baseline: Postgres' own ceiling for one durable single-row write transaction.
\set id random(1, :rows)
UPDATE bench_rows SET n = n + 1 WHERE id = :id;
