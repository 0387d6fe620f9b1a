-- Calibration, not ours: the least any reserve + commit with a ledger can
-- write, by plain SQL on the lean reference's tables (bench/setup.sql). The
-- reserve only adds the hold to the balance row; the commit updates that row
-- and appends one ledger row. No reservation row: there is nothing to commit
-- by id, to expire or to list, so no implementation of the spec can be this
-- lean. Its ratio to baseline A is what a design writing that little could
-- reach with logic that costs nothing. run.py derives the hot run (id 0).
\set id random(1, :rows)
UPDATE lean_accounts SET held = held + 10 WHERE id = :id AND balance - held >= 10;
WITH a AS (
    UPDATE lean_accounts SET held = held - 10, balance = balance - 7 WHERE id = :id RETURNING id
)
INSERT INTO lean_ledger (account_id, reservation_id, kind, amount) SELECT id, 0, 'charge', -7 FROM a;
