-- Calibration, not ours: the rows of min_reservation_action.sql (the least
-- an implementation of the spec writes per action), written below the
-- executor by the heap and index calls of bench/heap_calls (make
-- bench-decompose builds and installs it). run.py derives the hot run (id 0).
\set id random(1, :rows)
SELECT bench_heap_min_reserve(:id, 10) AS r \gset
SELECT bench_heap_min_commit(:r, 7);
