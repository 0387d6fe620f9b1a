-- Calibration, not ours: the least an implementation of the spec can write
-- per action, by plain SQL on the lean reference's tables (bench/setup.sql).
-- The reserve adds the hold to the balance row and inserts the reservation
-- (the durable record that the commit finds by id, that expires and that the
-- views list); the commit deletes it, updates the balance row and appends one
-- ledger row (no status kept on the reservation, no hold row in the ledger).
-- run.py derives the hot run (id 0).
\set id random(1, :rows)
WITH a AS (
    UPDATE lean_accounts SET held = held + 10 WHERE id = :id AND balance - held >= 10 RETURNING id
)
INSERT INTO lean_reservations (account_id, amount) SELECT id, 10 FROM a
RETURNING id AS r \gset
WITH r AS (
    DELETE FROM lean_reservations WHERE id = :r RETURNING account_id, amount
), a AS (
    UPDATE lean_accounts SET held = held - r.amount, balance = balance - 7 FROM r WHERE lean_accounts.id = r.account_id
)
INSERT INTO lean_ledger (account_id, reservation_id, kind, amount) SELECT account_id, :r, 'charge', -7 FROM r;
