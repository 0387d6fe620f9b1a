-- credits_verify(): every invariant it checks is reported when that
-- invariant is broken behind the API (and only the invariants that the
-- tampering breaks), and it reads the ledger a bounded number of times, not
-- once per reservation.
\ir helpers.inc
SELECT plan(46);

SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100, reset => 'calendar_month',
                           limit_mode => 'soft', soft_limit => 20, overage_rate => 2);
SELECT credits_account_upsert(account_id => 'v', plan_id => 'pro');
SELECT credits_account_upsert(account_id => 'w', plan_id => 'pro');
-- v: a commit, a commit partly refunded, a pending hold.
SELECT credits_reserve(account_id => 'v', amount => 30, product => 'editor')::text AS c1 \gset
SELECT credits_commit(:'c1', 25);
SELECT credits_reserve(account_id => 'v', amount => 10, product => 'seo')::text AS c2 \gset
SELECT credits_commit(:'c2');
SELECT credits_refund(:'c2', 4);
SELECT credits_reserve(account_id => 'v', amount => 5, product => 'editor')::text AS p1 \gset
-- w: 10 into overage, and a pending hold of 5 more overage.
SELECT credits_commit(credits_reserve(account_id => 'w', amount => 110, product => 'editor'));
SELECT credits_reserve(account_id => 'w', amount => 5, product => 'editor');
-- b: BYOK, a commit partly refunded; z: a soft limit of 0 of its own.
SELECT credits_account_upsert(account_id => 'b', plan_id => 'pro', byok => true);
SELECT credits_reserve(account_id => 'b', amount => 10, product => 'editor')::text AS b1 \gset
SELECT credits_commit(:'b1');
SELECT credits_refund(:'b1', 3);
SELECT credits_account_upsert(account_id => 'z', plan_id => 'pro', limit_mode => 'soft', soft_limit => 0);

-- The invariants credits_verify() reports after running tamper (SQL that
-- writes the tables behind the API), as 'invariant: account' lines in
-- order; the tampering is rolled back (the block's subtransaction).
CREATE FUNCTION pg_temp.reported(tamper text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    found text;
BEGIN
    EXECUTE tamper;
    SELECT string_agg(x, '; ' ORDER BY x) INTO found
      FROM (SELECT DISTINCT invariant || ': ' || account_id AS x FROM credits_verify()) s;
    RAISE EXCEPTION USING ERRCODE = 'T0001', MESSAGE = coalesce(found, 'nothing');
EXCEPTION WHEN SQLSTATE 'T0001' THEN
    RETURN SQLERRM;
END
$$;

SELECT is(pg_temp.reported('SELECT 1'), 'nothing', 'a healthy database: credits_verify() reports nothing');
SELECT is(pg_temp.reported($$CREATE ROLE credits_test_dropped; SELECT credits_account_bind('v', 'credits_test_dropped');
                              DROP ROLE credits_test_dropped$$),
          'bindings name existing roles: v', 'a binding to a role dropped without credits_account_unbind');
SELECT is(pg_temp.reported($$UPDATE credits.buckets SET balance = balance + 1 WHERE account_id = 'v' AND kind = 'allocation';
                              UPDATE credits.accounts SET balance = balance + 1 WHERE account_id = 'v'$$),
          'bucket balance equals its ledger rows: v', 'a bucket balance that its ledger rows do not add up to');
SELECT is(pg_temp.reported($$INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, actor, created_at)
                              VALUES ('v', 'adjustment', 1, gen_random_uuid(), 'tamper', credits._now())$$),
          'ledger rows belong to a bucket of their account: v', 'a ledger row of a bucket that does not exist');
SELECT is(pg_temp.reported($$UPDATE credits.buckets SET held = held + 1 WHERE account_id = 'v' AND kind = 'allocation';
                              UPDATE credits.accounts SET held = held + 1 WHERE account_id = 'v'$$),
          'bucket held equals its pending draws: v', 'a bucket hold that no pending reservation draws');
SELECT is(pg_temp.reported($$SET LOCAL session_replication_role = replica;
                              UPDATE credits.accounts SET plan_id = 'gone' WHERE account_id = 'v'$$),
          'account plan exists: v', 'an account on a plan that does not exist (its guard off)');
SELECT is(pg_temp.reported($$UPDATE credits.accounts SET balance = balance + 1 WHERE account_id = 'v'$$),
          'account balance and holds equal its buckets: v', 'an account balance that is not its buckets''');
SELECT is(pg_temp.reported($$UPDATE credits.accounts SET overage_held = overage_held + 1 WHERE account_id = 'w'$$),
          'account overage hold equals its pending reservations: w', 'an overage hold that no pending reservation takes');
SELECT is(pg_temp.reported($$UPDATE credits.accounts SET debt = 1 WHERE account_id = 'v'$$),
          'account debt equals its ledger rows: v', 'a debt without its ledger rows');
SELECT is(pg_temp.reported($$UPDATE credits.accounts SET period_used = period_used + 1 WHERE account_id = 'v'$$),
          'period usage equals the ledger rows of the period: v', 'period usage that the period''s ledger rows do not add up to');
SELECT is(pg_temp.reported($$UPDATE credits.accounts SET period_overage = -1 WHERE account_id = 'v'$$),
          'account is within its limits: v; period usage equals the ledger rows of the period: v; stored values are valid: v',
          'a negative overage: outside the limits, not the ledger''s, not a valid value');
SELECT is(pg_temp.reported($$ALTER TABLE credits.accounts DROP CONSTRAINT accounts_within_limits;
                              UPDATE credits.accounts SET held = balance + 1 WHERE account_id = 'v'$$),
          'account balance and holds equal its buckets: v; account is within its limits: v',
          'an account holding more than its balance (with the CHECK constraint that refuses it dropped)');
SELECT is(pg_temp.reported($$UPDATE credits.buckets SET priority = 7 WHERE account_id = 'v' AND kind = 'allocation'$$),
          'stored values are valid: v', 'a bucket priority that is not its kind''s');
SELECT is(pg_temp.reported($$UPDATE credits.accounts SET next_event = period_end + interval '1 day' WHERE account_id = 'v'$$),
          'account next_event is not after anything due: v', 'a next_event after the period end');
SELECT is(pg_temp.reported(format('UPDATE credits.reservations SET charged = 1 WHERE reservation_id = %L', :'p1')),
          'reservation state is consistent: v', 'a pending reservation with a charge');
SELECT is(pg_temp.reported($$UPDATE credits.usage_rollup SET used = used + 1 WHERE account_id = 'v' AND product = 'editor'$$),
          'usage roll-up equals the ledger: v', 'a roll-up figure that the ledger does not add up to');
SELECT is(pg_temp.reported($$UPDATE credits.usage_rollup SET actions = actions + 1 WHERE account_id = 'v' AND product = 'editor'$$),
          'usage roll-up counts every commit: v', 'a roll-up action count that is not the commits''');
SELECT is(pg_temp.reported(format('UPDATE credits.reservations SET refunded = refunded + 1 WHERE reservation_id = %L', :'c1')),
          'committed charges equal their ledger rows: v', 'a refund that has no ledger row');
SELECT is(pg_temp.reported($$UPDATE credits.accounts SET products_off = '{seo}' WHERE account_id = 'v'$$),
          'account products_off copies its switched-off products: v', 'an account row that names a product not switched off');
SELECT is(pg_temp.reported($$INSERT INTO credits.account_products VALUES ('w', 'editor', false, now())$$),
          'account products_off copies its switched-off products: w', 'a switch-off that the account row does not carry');

-- Each part of the invariants written as one condition is reported on its
-- own (a mutation of one OR into AND went unnoticed: README, Mutation
-- check). The CHECK constraint and the ledger's triggers that would refuse
-- some of these are dropped for the tampering, inside its subtransaction.
SELECT is(pg_temp.reported($$ALTER TABLE credits.accounts DROP CONSTRAINT accounts_within_limits;
                              UPDATE credits.accounts SET overage_held = overage_held - 6 WHERE account_id = 'w'$$),
          'account overage hold equals its pending reservations: w; stored values are valid: w', 'a negative overage hold');
SELECT is(pg_temp.reported($$ALTER TABLE credits.accounts DROP CONSTRAINT accounts_within_limits;
                              UPDATE credits.accounts SET debt = -1 WHERE account_id = 'v'$$),
          'account debt equals its ledger rows: v; stored values are valid: v', 'a negative debt');
SELECT is(pg_temp.reported($$UPDATE credits.accounts SET soft_limit = -1 WHERE account_id = 'v'$$),
          'stored values are valid: v', 'a negative soft limit');
SELECT is(pg_temp.reported($$UPDATE credits.accounts SET limit_mode = 'loose' WHERE account_id = 'v'$$),
          'stored values are valid: v', 'an unknown limit mode');
SELECT is(pg_temp.reported($$UPDATE credits.accounts SET period_end = period_start WHERE account_id = 'v'$$),
          'account next_event is not after anything due: v; stored values are valid: v', 'an empty period');
SELECT is(pg_temp.reported($$UPDATE credits.buckets SET amount = -1 WHERE account_id = 'v' AND kind = 'allocation'$$),
          'stored values are valid: v', 'a negative bucket amount');
SELECT is(pg_temp.reported(format('UPDATE credits.reservations SET status = %L WHERE reservation_id = %L', 'lost', :'c1')),
          'period usage equals the ledger rows of the period: v; stored values are valid: v; usage roll-up counts every commit: v',
          'an unknown reservation status');
SELECT is(pg_temp.reported(format('UPDATE credits.reservations SET amount = 0 WHERE reservation_id = %L', :'c1')),
          'stored values are valid: v', 'a reservation of nothing');
SELECT is(pg_temp.reported(format('UPDATE credits.reservations SET overage = -1 WHERE reservation_id = %L', :'c1')),
          'reservation state is consistent: v; stored values are valid: v', 'a negative reservation overage');
SELECT is(pg_temp.reported(format('UPDATE credits.reservations SET debt = -1 WHERE reservation_id = %L', :'c1')),
          'reservation state is consistent: v; stored values are valid: v', 'a negative reservation debt');
SELECT is(pg_temp.reported(format('UPDATE credits.reservations SET refunded = -1 WHERE reservation_id = %L', :'c1')),
          'committed charges equal their ledger rows: v; stored values are valid: v', 'a negative refund');
SELECT is(pg_temp.reported(format('UPDATE credits.reservations SET refunded = charged + 1 WHERE reservation_id = %L', :'c2')),
          'committed charges equal their ledger rows: v; stored values are valid: v', 'a refund beyond the charge');
SELECT is(pg_temp.reported(format('UPDATE credits.reservations SET draw_amounts = draw_amounts || 0::numeric WHERE reservation_id = %L',
                                  :'c1')),
          'stored values are valid: v', 'draws with more amounts than buckets');
SELECT is(pg_temp.reported($$ALTER TABLE credits.ledger DISABLE TRIGGER USER;
                              UPDATE credits.ledger SET kind = 'gift'
                               WHERE entry_id = (SELECT max(entry_id) FROM credits.ledger WHERE account_id = 'v' AND kind = 'charge')$$),
          'committed charges equal their ledger rows: v; ledger hash chain is intact: v; '
          || 'period usage equals the ledger rows of the period: v; stored values are valid: v; usage roll-up equals the ledger: v',
          'a ledger row of an unknown kind');
SELECT is(pg_temp.reported(format('UPDATE credits.reservations SET refunded = 1 WHERE reservation_id = %L', :'p1')),
          'reservation state is consistent: v; stored values are valid: v', 'a pending reservation with a refund');
SELECT is(pg_temp.reported(format('UPDATE credits.reservations SET debt = 1 WHERE reservation_id = %L', :'p1')),
          'reservation state is consistent: v', 'a pending reservation with debt');
SELECT is(pg_temp.reported(format('UPDATE credits.reservations SET amount = amount + 1 WHERE reservation_id = %L', :'p1')),
          'reservation state is consistent: v', 'a pending reservation whose amount is not its draws and overage');
SELECT is(pg_temp.reported(format('UPDATE credits.reservations SET charged = NULL WHERE reservation_id = %L', :'c1')),
          'reservation state is consistent: v', 'a committed reservation without a charge');
SELECT is(pg_temp.reported(format('UPDATE credits.reservations SET charged = charged + 1 WHERE reservation_id = %L', :'c1')),
          'committed charges equal their ledger rows: v; reservation state is consistent: v',
          'a committed reservation whose charge is not its draws, overage and debt');
SELECT is(pg_temp.reported(format($$UPDATE credits.accounts
                                      SET next_event = (SELECT expires_at FROM credits.reservations WHERE reservation_id = %L)
                                                       + interval '1 minute'
                                    WHERE account_id = 'v'$$, :'p1')),
          'account next_event is not after anything due: v', 'a next_event after a pending hold expires');
SAVEPOINT late_event;
UPDATE credits.accounts SET next_event = period_end - interval '1 minute' WHERE account_id = 'v';
SELECT is((SELECT detail FROM credits_verify() WHERE invariant = 'account next_event is not after anything due'),
          (SELECT format('next_event %s, earliest due %s', a.next_event, r.expires_at)
             FROM credits.accounts a, credits.reservations r WHERE a.account_id = 'v' AND r.reservation_id = :'p1'),
          'its detail names the earliest due: the pending hold''s expiry, before the period end');
ROLLBACK TO SAVEPOINT late_event;
SELECT is(pg_temp.reported($$SELECT credits_grant(account_id => 'v', amount => 5, kind => 'promo',
                                                  expires_at => credits._now() + interval '5 minutes');
                              UPDATE credits.accounts SET next_event = credits._now() + interval '10 minutes'
                               WHERE account_id = 'v'$$),
          'account next_event is not after anything due: v',
          'a next_event after a promo expires (and before the pending hold does)');
SELECT is(pg_temp.reported($$UPDATE credits.usage_rollup SET overage = overage + 1 WHERE account_id = 'w'$$),
          'usage roll-up equals the ledger: w', 'a roll-up overage that the ledger does not add up to');
SELECT is(pg_temp.reported($$UPDATE credits.usage_rollup SET refunded = refunded + 1 WHERE account_id = 'v' AND product = 'seo'$$),
          'usage roll-up equals the ledger: v', 'a roll-up refund that the ledger does not add up to');
SELECT is(pg_temp.reported($$UPDATE credits.usage_rollup SET overage_refunded = overage_refunded + 1
                               WHERE account_id = 'v' AND product = 'seo'$$),
          'usage roll-up equals the ledger: v', 'a roll-up overage refund that the ledger does not add up to');

-- At scale: 400 actions of one account. credits_verify() reads the ledger in
-- a few passes; until 0.3.5 it read all of an account's ledger rows once for
-- each of its committed reservations (400 x 400 rows here; minutes for
-- hundreds of thousands of rows), whatever the statistics.
SELECT credits_plan_upsert(plan_id => 'big', allocation => 100000);
SELECT credits_account_upsert(account_id => 'big', plan_id => 'big');
DO $$
BEGIN
    FOR i IN 1..400 LOOP
        PERFORM credits_commit(credits_reserve(account_id => 'big', amount => 3, product => 'editor'), 2);
    END LOOP;
END
$$;
-- With statistics, as autovacuum keeps them (tables never analyzed look
-- nearly empty to the planner, which then joins them by nested loops).
ANALYZE credits.accounts, credits.buckets, credits.reservations, credits.ledger, credits.usage_rollup;
SET LOCAL max_parallel_workers_per_gather = 0;
SELECT count(*) AS ledger_rows FROM credits.ledger \gset
SELECT pg_temp.tuples_read('credits.ledger') AS read_before \gset
SELECT count(*) FROM credits_verify() \gset
SELECT pg_temp.tuples_read('credits.ledger') AS read_after \gset
SELECT cmp_ok(:read_after - :read_before, '<=', 20 * :ledger_rows,
              format('credits_verify() reads the ledger (%s rows) in a few passes: %s rows read',
                     :ledger_rows, :read_after - :read_before));

SELECT * FROM finish();
ROLLBACK;
