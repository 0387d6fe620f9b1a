-- Calibration, not ours: two transactions per action, a bare UPDATE of the
-- one hot row in each: the most any reserve-then-commit that locks the
-- account row in both transactions can reach (ratio to baseline B).
UPDATE bench_rows SET n = n + 1 WHERE id = 1;
UPDATE bench_rows SET n = n + 1 WHERE id = 1;
