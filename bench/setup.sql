-- Data for the benchmark: the baseline table, 10,000 accounts with more
-- credits than any run can spend (so no run is refused), one hot account,
-- and the app's own table.
CREATE EXTENSION credits;
CREATE TABLE bench_rows (id integer PRIMARY KEY, n bigint NOT NULL DEFAULT 0) WITH (fillfactor = 70);
INSERT INTO bench_rows (id) SELECT generate_series(1, :rows);
CREATE TABLE app_events (id bigserial PRIMARY KEY, account_id text NOT NULL, reservation_id uuid, payload text);
SELECT credits_plan_upsert(plan_id => 'bench', allocation => 10000000000, reset => 'calendar_month');
SELECT count(credits_account_upsert(account_id => 'acct' || i, plan_id => 'bench')) FROM generate_series(1, :rows) i;
SELECT credits_account_upsert(account_id => 'hot', plan_id => 'bench');
CREATE SEQUENCE bench_hold_seq;
CREATE TABLE bench_holds (i bigint PRIMARY KEY, reservation_id uuid NOT NULL);


-- The lean reference of the issue's calibration, for comparison only (it is
-- not part of the extension): a hand-written PL/pgSQL reserve + commit with
-- one conditional UPDATE of a balance row, one reservation row and one
-- ledger row per transaction, no buckets, no checks beyond the balance.
CREATE TABLE lean_accounts (id integer PRIMARY KEY, balance numeric NOT NULL, held numeric NOT NULL DEFAULT 0,
                            CHECK (held <= balance)) WITH (fillfactor = 70);
INSERT INTO lean_accounts (id, balance) SELECT i, 10000000000 FROM generate_series(0, :rows) i;
CREATE TABLE lean_reservations (id bigserial PRIMARY KEY, account_id integer NOT NULL, amount numeric NOT NULL,
                                charged numeric, status text NOT NULL DEFAULT 'pending') WITH (fillfactor = 70);
CREATE TABLE lean_ledger (id bigserial PRIMARY KEY, account_id integer NOT NULL, reservation_id bigint NOT NULL,
                          kind text NOT NULL, amount numeric NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION lean_reserve(p_account integer, p_amount numeric) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE v_id bigint;
BEGIN
    UPDATE lean_accounts SET held = held + p_amount WHERE id = p_account AND balance - held >= p_amount;
    IF NOT FOUND THEN RAISE EXCEPTION USING ERRCODE = 'CR001', MESSAGE = 'insufficient credits'; END IF;
    INSERT INTO lean_reservations (account_id, amount) VALUES (p_account, p_amount) RETURNING id INTO v_id;
    INSERT INTO lean_ledger (account_id, reservation_id, kind, amount) VALUES (p_account, v_id, 'hold', p_amount);
    RETURN v_id;
END $$;
CREATE FUNCTION lean_commit(p_id bigint, p_amount numeric) RETURNS numeric LANGUAGE plpgsql AS $$
DECLARE r lean_reservations;
BEGIN
    UPDATE lean_reservations SET status = 'committed', charged = p_amount WHERE id = p_id AND status = 'pending'
    RETURNING * INTO r;
    IF NOT FOUND THEN RAISE EXCEPTION USING ERRCODE = 'CR005', MESSAGE = 'not pending'; END IF;
    UPDATE lean_accounts SET held = held - r.amount, balance = balance - p_amount WHERE id = r.account_id;
    INSERT INTO lean_ledger (account_id, reservation_id, kind, amount) VALUES (r.account_id, p_id, 'charge', -p_amount);
    RETURN p_amount;
END $$;
-- Calibration, not ours (floor_action*.sql): copies of the tables our
-- action writes, with the same columns, indexes and CHECK constraints (no
-- triggers, foreign keys or row security), and the same accounts and
-- buckets, for the rows of our action written by plain SQL.
CREATE SCHEMA bench_floor;
CREATE TABLE bench_floor.accounts (LIKE credits.accounts INCLUDING ALL) WITH (fillfactor = 70);
CREATE TABLE bench_floor.buckets (LIKE credits.buckets INCLUDING ALL) WITH (fillfactor = 70);
CREATE TABLE bench_floor.reservations (LIKE credits.reservations INCLUDING ALL) WITH (fillfactor = 70);
CREATE TABLE bench_floor.ledger (LIKE credits.ledger INCLUDING ALL);
CREATE TABLE bench_floor.usage_rollup (LIKE credits.usage_rollup INCLUDING ALL) WITH (fillfactor = 70);
INSERT INTO bench_floor.accounts SELECT * FROM credits.accounts;
INSERT INTO bench_floor.buckets SELECT * FROM credits.buckets;
-- For make bench-decompose (the narrow_account variant of floor_action.sql).
CREATE TABLE bench_floor.narrow_accounts (account_id text PRIMARY KEY, balance numeric(20,6) NOT NULL,
                                          held numeric(20,6) NOT NULL, period_used numeric(20,6) NOT NULL,
                                          period_start timestamptz NOT NULL) WITH (fillfactor = 70);
INSERT INTO bench_floor.narrow_accounts SELECT account_id, balance, held, period_used, period_start FROM credits.accounts;
-- For make bench-decompose (the reservation variants of floor_action.sql):
-- the reservation without the sweep's partial pending index, without both
-- secondary indexes, and split in two tables (pending holds, which the
-- commit deletes, and resolved actions with the per-action log's index).
CREATE TABLE bench_floor.reservations_no_pending (LIKE credits.reservations INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    WITH (fillfactor = 70);
ALTER TABLE bench_floor.reservations_no_pending ADD PRIMARY KEY (reservation_id, account_id);
CREATE INDEX ON bench_floor.reservations_no_pending (account_id, created_at);
CREATE TABLE bench_floor.reservations_pk_only (LIKE credits.reservations INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    WITH (fillfactor = 70);
ALTER TABLE bench_floor.reservations_pk_only ADD PRIMARY KEY (reservation_id, account_id);
CREATE TABLE bench_floor.holds (LIKE credits.reservations INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE bench_floor.holds ADD PRIMARY KEY (reservation_id, account_id);
CREATE INDEX ON bench_floor.holds (account_id, expires_at);
CREATE TABLE bench_floor.resolved (LIKE credits.reservations INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE bench_floor.resolved ADD PRIMARY KEY (reservation_id, account_id);
CREATE INDEX ON bench_floor.resolved (account_id, created_at);
-- Warm-up, so that the runs measure the steady state and not the first
-- minutes after loading: with the write tables empty when ANALYZE ran, the
-- planner sees them as empty and the plans a session keeps scan them
-- sequentially until autovacuum analyzes them again. 2,000 actions of ours
-- and of the lean reference on the accounts of the runs, copies of our rows
-- into the floor tables, then ANALYZE.
SELECT count(credits_commit(credits_reserve(account_id => 'acct' || (1 + i % :rows), amount => 10, product => 'editor'), 7))
  FROM generate_series(1, 2000) i;
SELECT count(credits_commit(credits_reserve(account_id => 'hot', amount => 10, product => 'editor'), 7))
  FROM generate_series(1, 200) i;
SELECT count(lean_commit(lean_reserve(1 + i % :rows, 10), 7)) FROM generate_series(1, 2000) i;
INSERT INTO bench_floor.reservations SELECT * FROM credits.reservations;
INSERT INTO bench_floor.reservations_no_pending SELECT * FROM credits.reservations;
INSERT INTO bench_floor.reservations_pk_only SELECT * FROM credits.reservations;
INSERT INTO bench_floor.resolved SELECT * FROM credits.reservations;
INSERT INTO bench_floor.ledger OVERRIDING SYSTEM VALUE SELECT * FROM credits.ledger;
INSERT INTO bench_floor.usage_rollup SELECT * FROM credits.usage_rollup;
SELECT setval(pg_get_serial_sequence('bench_floor.ledger', 'entry_id'), (SELECT max(entry_id) FROM bench_floor.ledger));
VACUUM ANALYZE;
