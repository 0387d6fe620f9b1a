-- Calibration, not ours: the cheapest possible action of two transactions,
-- a bare single-row UPDATE in each, on a random row of 10,000. Its ratio to
-- baseline A is the most any reserve-then-commit in two transactions can
-- reach on this server.
\set id random(1, :rows)
UPDATE bench_rows SET n = n + 1 WHERE id = :id;
UPDATE bench_rows SET n = n + 1 WHERE id = :id;
