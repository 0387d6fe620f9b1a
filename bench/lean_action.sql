-- Reference, not ours: the lean hand-written PL/pgSQL reserve + commit of
-- the issue's calibration (bench/setup.sql), one AI action on 10,000 accounts.
\set id random(1, :rows)
SELECT lean_reserve(:id, 10) AS r \gset
SELECT lean_commit(:r, 7);
