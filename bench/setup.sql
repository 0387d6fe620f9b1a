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
VACUUM ANALYZE;
