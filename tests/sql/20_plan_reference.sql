-- An account's plan exists, kept without a foreign key (sql/guards.sql): a
-- foreign key to credits.plans locked the plan's row, which all of its
-- accounts share, at every second write of an account row in one
-- transaction (that no such write locks it now: tests/concurrency.rs,
-- actions_in_one_transaction_lock_no_shared_row). Here: a plan in use is
-- not deleted, renamed or truncated; an account's plan_id changes only to
-- a plan that exists.
\ir helpers.inc
SELECT plan(15);

SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100, reset => 'calendar_month');
SELECT credits_plan_upsert(plan_id => 'spare', allocation => 10);
SELECT credits_account_upsert(account_id => 'a', plan_id => 'pro');

SELECT is_empty($$SELECT conname FROM pg_constraint
                   WHERE conrelid = 'credits.accounts'::regclass AND confrelid = 'credits.plans'::regclass$$,
                'no foreign key from credits.accounts to credits.plans');

SELECT pg_temp.state() AS before \gset
SELECT is(pg_temp.error_fields($$DELETE FROM credits.plans WHERE plan_id = 'pro'$$),
          ARRAY['23503', 'plan "pro" is in use', 'Account "a" is on it, and accounts keep their plan.',
                'Move its accounts to another plan first with credits_account_upsert(account_id => ..., plan_id => ...).'],
          'a plan that an account is on is not deleted');
SELECT throws_ok($$UPDATE credits.plans SET plan_id = 'pro2' WHERE plan_id = 'pro'$$,
                 '23503', 'plan "pro" is in use: UPDATE of credits.plans is refused', 'nor renamed');
SELECT throws_ok($$TRUNCATE credits.plans$$,
                 '23503', 'plan "pro" is in use: TRUNCATE of credits.plans is refused', 'nor truncated');
SELECT is(pg_temp.state(), :'before', 'and nothing changed');

SELECT lives_ok($$UPDATE credits.plans SET plan_id = plan_id, overage_rate = 2 WHERE plan_id = 'pro'$$,
                'its other columns change (and plan_id to itself)');
SELECT lives_ok($$UPDATE credits.plans SET plan_id = 'spare2' WHERE plan_id = 'spare'$$,
                'a plan no account is on is renamed');
SELECT lives_ok($$DELETE FROM credits.plans WHERE plan_id = 'spare2'$$, 'and deleted');
SELECT is((SELECT array_agg(plan_id ORDER BY plan_id) FROM credits.plans), ARRAY['pro'], 'it is gone');

-- An account's plan_id, written behind the API.
SELECT is(pg_temp.error_fields($$UPDATE credits.accounts SET plan_id = 'nope' WHERE account_id = 'a'$$),
          ARRAY['23503', 'unknown plan "nope" for account "a"', 'No plan has this plan_id.',
                'Create it first with credits_plan_upsert().'],
          'an account''s plan_id does not change to a plan that does not exist');
SELECT credits_plan_upsert(plan_id => 'team', allocation => 50);
SELECT lives_ok($$UPDATE credits.accounts SET plan_id = 'team' WHERE account_id = 'a'$$, 'but to one that does');
SELECT is((SELECT plan_id FROM credits.accounts WHERE account_id = 'a'), 'team', 'and it changed');
SELECT lives_ok($$DELETE FROM credits.plans WHERE plan_id = 'pro'$$, 'then the plan it left is deleted');

-- Through the API (the lock it takes on the plan's row:
-- tests/concurrency.rs, a_plan_being_deleted_and_an_account_being_put_on_it_wait_for_each_other).
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'b', plan_id => 'gone')$$,
                 'CR003', 'unknown plan "gone"', 'a new account on a plan that does not exist is refused');

SELECT is_empty('SELECT * FROM credits_verify()', 'credits_verify() is empty');

SELECT * FROM finish();
ROLLBACK;
