-- Calibration, not ours: the rows the lean reference writes (bench/setup.sql:
-- a balance row, a reservation row, a ledger row per transaction), written
-- by plain SQL with none of its PL/pgSQL: the floor of the leanest data
-- model the benchmark issue describes, on a random account of 10,000.
\set id random(1, :rows)
WITH a AS (
    UPDATE lean_accounts SET held = held + 10 WHERE id = :id AND balance - held >= 10 RETURNING id
), r AS (
    INSERT INTO lean_reservations (account_id, amount) SELECT id, 10 FROM a RETURNING id
)
INSERT INTO lean_ledger (account_id, reservation_id, kind, amount) SELECT :id, id, 'hold', 10 FROM r
RETURNING reservation_id AS r \gset
WITH r AS (
    UPDATE lean_reservations SET status = 'committed', charged = 7 WHERE id = :r AND status = 'pending'
    RETURNING account_id, amount
), a AS (
    UPDATE lean_accounts SET held = held - r.amount, balance = balance - 7 FROM r WHERE lean_accounts.id = r.account_id
)
INSERT INTO lean_ledger (account_id, reservation_id, kind, amount) SELECT account_id, :r, 'charge', -7 FROM r;
