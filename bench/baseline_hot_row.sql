-- Baseline, hot: every client updates the same row.
UPDATE bench_rows SET n = n + 1 WHERE id = 1;
