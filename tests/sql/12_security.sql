\ir helpers.inc
SELECT plan(74);

SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100);
SELECT credits_account_upsert(account_id => a, plan_id => 'pro') FROM unnest(ARRAY['a1', 'a2']) a;
CREATE ROLE t_app IN ROLE credits_app;
CREATE ROLE t_reader IN ROLE credits_reader;
CREATE ROLE t_app_a1 IN ROLE credits_app;
CREATE ROLE t_reader_a1 IN ROLE credits_reader;
SELECT credits_account_bind(account_id => 'a1', role => 't_app_a1');
SELECT credits_account_bind(account_id => 'a1', role => 't_reader_a1');
SELECT credits_reserve(account_id => 'a2', amount => 5, product => 'editor')::text AS r2 \gset
SELECT credits_commit(credits_reserve(account_id => 'a1', amount => 3, product => 'editor'));
SELECT credits_commit(credits_reserve(account_id => 'a2', amount => 4, product => 'seo'));
SELECT pg_temp.state() AS before \gset

-- The app role: reserve, commit, refund; nothing an admin does, no table writes.
SET ROLE t_app;
SELECT lives_ok($$SELECT credits_refund(credits_reserve(account_id => 'a2', amount => 1, product => 'editor'))$$,
                'an unbound app role reserves and refunds for any account');
SELECT throws_ok($$SELECT credits_grant(account_id => 'a1', amount => 5)$$, '42501', NULL, 'app: grant refused');
SELECT throws_ok($$SELECT credits_purchase(account_id => 'a1', pack => 'x', payment_ref => 'p')$$, '42501', NULL, 'app: purchase refused');
SELECT throws_ok($$SELECT credits_reset()$$, '42501', NULL, 'app: reset refused');
SELECT throws_ok($$SELECT credits_plan_upsert(plan_id => 'x', allocation => 1)$$, '42501', NULL, 'app: plans refused');
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'a1', plan_id => 'pro')$$, '42501', NULL, 'app: accounts refused');
SELECT throws_ok($$CALL credits_maintenance()$$, '42501', NULL, 'app: maintenance refused');
SELECT throws_ok($$INSERT INTO credits.ledger (account_id, kind, amount, actor, created_at) VALUES ('a1', 'topup', 1, 'x', now())$$,
                 '42501', NULL, 'app: writing the ledger refused');
SELECT throws_ok($$UPDATE credits.accounts SET balance = 1e9$$, '42501', NULL, 'app: writing accounts refused');
SELECT throws_ok($$SELECT credits._housekeep('a1', now())$$, '42501', NULL, 'app: internal functions refused');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'a1', amount => 'NaN', product => 'editor')$$, '22023', NULL,
                 'app: bad input keeps its SQLSTATE (NaN)');
SELECT throws_ok($$SELECT credits_reserve(account_id => NULL, amount => 1, product => 'editor')$$, '22004', NULL,
                 'app: bad input keeps its SQLSTATE (NULL)');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'a1', amount => 1e20, product => 'editor')$$, '22003', NULL,
                 'app: bad input keeps its SQLSTATE (huge)');
RESET ROLE;

-- The reader: views and tables, no write function.
SET ROLE t_reader;
SELECT throws_ok($$SELECT credits_reserve(account_id => 'a1', amount => 1, product => 'editor')$$, '42501', NULL, 'reader: reserve refused');
SELECT throws_ok(format('SELECT credits_commit(%L)', :'r2'), '42501', NULL, 'reader: commit refused');
SELECT throws_ok(format('SELECT credits_refund(%L)', :'r2'), '42501', NULL, 'reader: refund refused');
SELECT throws_ok($$SELECT credits_grant(account_id => 'a1', amount => 5)$$, '42501', NULL, 'reader: grant refused');
SELECT throws_ok($$DELETE FROM credits.reservations$$, '42501', NULL, 'reader: deleting refused');
SELECT is((SELECT count(*) FROM credits.account_summary), 2::bigint, 'an unbound reader sees every account');
RESET ROLE;

-- Bound roles see and touch only their accounts.
SET ROLE t_app_a1;
SELECT lives_ok($$SELECT credits_commit(credits_reserve(account_id => 'a1', amount => 1, product => 'editor'))$$,
                'a bound app works on its account');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'a2', amount => 1, product => 'editor')$$, 'CR002', NULL,
                 'but another account is unknown to it');
SELECT throws_ok(format('SELECT credits_commit(reservation_id => %L)', :'r2'), 'CR004', NULL,
                 'another account''s reservation id is unknown to it (commit)');
SELECT throws_ok(format('SELECT credits_refund(reservation_id => %L)', :'r2'), 'CR004', NULL,
                 'another account''s reservation id is unknown to it (refund)');
SELECT throws_ok(format('SELECT credits_commit(reservation_id => %L, account_id => %L)', :'r2', 'a1'), 'CR004', NULL,
                 'also when it names its own account');
SELECT throws_ok($$SELECT credits_balance('a2')$$, 'CR002', NULL, 'and its balance');
SELECT is((credits_balance('a1') -> 'summary' ->> 'used')::numeric, 4::numeric, 'its own balance is readable');
RESET ROLE;
SELECT is((SELECT status FROM credits.reservations WHERE reservation_id = :'r2'), 'pending',
          'the other account''s reservation is untouched');
-- Also when that account's next_event has come with nothing due: the
-- reserve fast path's statement for a false alarm checks the binding too.
SELECT credits_account_upsert(account_id => 'a3', plan_id => 'pro');
SELECT credits_commit(credits_reserve(account_id => 'a3', amount => 1, product => 'editor', ttl => '1 minute'));
SET LOCAL credits.now = '2026-03-10 12:05:00+00';
SELECT pg_temp.state() AS before_a3 \gset
SET ROLE t_app_a1;
SELECT throws_ok($$SELECT credits_reserve(account_id => 'a3', amount => 1, product => 'editor')$$, 'CR002', NULL,
                 'another account is unknown to a bound app also once its next event has come with nothing due');
RESET ROLE;
SELECT is(pg_temp.state(), :'before_a3', 'and is left as it was');
SET LOCAL credits.now = '2026-03-10 12:00:00+00';
SET ROLE t_reader_a1;
SELECT results_eq($$SELECT DISTINCT account_id FROM credits.account_summary$$, $$VALUES ('a1')$$,
                  'a bound reader sees only its account in the views');
SELECT results_eq($$SELECT DISTINCT account_id FROM credits.ledger$$, $$VALUES ('a1')$$, 'and in the tables');
SELECT is((SELECT count(*) FROM credits.usage_daily WHERE account_id = 'a2'), 0::bigint, 'nothing of a2');
SELECT is((SELECT count(*) FROM credits_usage_daily('a2', '2026-03-01', '2026-03-31')), 0::bigint,
          'not through the usage functions either');
RESET ROLE;
-- Bound through membership: a role in a role in a bound role (NOINHERIT
-- too: membership, not privileges, decides) reaches that account alone; an
-- unrelated bound role does not make it bound.
CREATE ROLE t_group_a2;
CREATE ROLE t_team_a2 NOINHERIT IN ROLE t_group_a2;
CREATE ROLE t_app_deep IN ROLE credits_app, t_team_a2;
SELECT credits_account_bind(account_id => 'a2', role => 't_group_a2');
SET ROLE t_app_deep;
SELECT is((credits_balance('a2') -> 'summary' ->> 'allocation')::numeric, 100::numeric,
          'a member of a member of a bound role reaches its account');
SELECT throws_ok($$SELECT credits_balance('a1')$$, 'CR002', NULL, 'and no other');
RESET ROLE;
SET ROLE t_app;
SELECT lives_ok($$SELECT credits_balance('a1'), credits_balance('a2')$$,
                'a role bound to nothing still reaches every account');
RESET ROLE;
-- Only an existing role is bound: a regrole can hold an OID that names no
-- role ('-' is 0), which would bind nothing (credits_verify() reports such
-- a binding). Before 0.3.5 such a binding was stored.
SELECT throws_ok($$SELECT credits_account_bind(account_id => 'a2', role => '-')$$, '42704',
                 'role with OID 0 does not exist', 'binding role ''-'' (OID 0) is refused');
SELECT throws_ok($$SELECT credits_account_bind(account_id => 'a2', role => 4000000000::oid::regrole)$$, '42704',
                 'role with OID 4000000000 does not exist', 'and an OID that names no role');
SELECT is((SELECT count(*) FROM credits.account_roles WHERE role_id::oid IN (0, 4000000000)), 0::bigint,
          'neither left a binding');
-- The binding rule of every write path and of the fast paths,
-- credits._may_touch, which probes one account's bindings (0.3.5), against
-- the expected reach of each role and against the rule the row-level
-- security policies apply with the list of the caller's accounts. Both are
-- asked as the API functions ask them: as the owner, for the role the
-- session acts as.
CREATE FUNCTION pg_temp.rules(a text, OUT may_touch boolean, OUT policy_rule boolean)
LANGUAGE sql SECURITY DEFINER
AS $$SELECT credits._may_touch(a), credits._sees_all() OR a = ANY (credits._bound_accounts())$$;
CREATE FUNCTION pg_temp.reach()
RETURNS TABLE (who text, account text, may_touch boolean, policy_rule boolean)
LANGUAGE plpgsql AS $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['postgres', 't_app', 't_app_a1', 't_reader_a1', 't_group_a2', 't_team_a2', 't_app_deep'] LOOP
        PERFORM set_config('role', r, true);
        RETURN QUERY SELECT r, a, x.may_touch, x.policy_rule
                       FROM unnest(ARRAY['a1', 'a2', 'a9']) a, pg_temp.rules(a) x;
        PERFORM set_config('role', 'none', true);
    END LOOP;
END
$$;
SELECT results_eq($$SELECT who, string_agg(account, ',' ORDER BY account) FILTER (WHERE may_touch)
                      FROM pg_temp.reach() GROUP BY who ORDER BY who$$,
                  $$VALUES ('postgres', 'a1,a2,a9'), ('t_app', 'a1,a2,a9'), ('t_app_a1', 'a1'), ('t_app_deep', 'a2'),
                           ('t_group_a2', 'a2'), ('t_reader_a1', 'a1'), ('t_team_a2', 'a2')$$,
                  'credits._may_touch: superusers and unbound roles reach every account, bound ones (through any membership) theirs');
SELECT is_empty($$SELECT * FROM pg_temp.reach() WHERE may_touch IS DISTINCT FROM policy_rule$$,
                'credits._may_touch agrees with the row-level security rule for every role and account');
SELECT throws_ok($$SET credits.now = '2030-01-01'$$, '42501', NULL, 'the clock setting is superuser-only')
  FROM (SELECT set_config('role', 't_app', true)) x;
RESET ROLE;

-- An admin bound to an account is that tenant's admin: it configures its
-- account, and nothing that every account shares or that decides who
-- reaches which (it could unbind itself, and then reach every account).
CREATE ROLE t_admin_a1 IN ROLE credits_admin;
SELECT credits_account_bind(account_id => 'a1', role => 't_admin_a1');
SELECT credits_pack_upsert(pack_id => 'pk', credits => 10, price => 5);
INSERT INTO credits.recharge_requests (account_id, pack_id, credits, price, currency, status, created_at)
VALUES ('a2', 'pk', 10, 5, 'USD', 'pending', credits._now());
SELECT request_id::text AS rq2 FROM credits.recharge_requests WHERE account_id = 'a2' \gset
SET ROLE t_admin_a1;
SELECT lives_ok($$SELECT credits_account_upsert(account_id => 'a1', alert_percents => '{80,100}')$$,
                'a bound admin configures its account');
SELECT throws_ok($$SELECT credits_account_unbind(account_id => 'a1', role => 't_admin_a1')$$, '42501',
                 'credits_account_unbind needs a role bound to no account', 'but does not unbind itself');
SELECT throws_ok($$SELECT credits_account_bind(account_id => 'a1', role => 't_app')$$, '42501', NULL,
                 'nor binds another role');
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'a2', limit_mode => 'soft')$$, '42501',
                 'account "a2" is not bound to role "t_admin_a1"', 'nor changes another account');
SELECT throws_ok($$SELECT credits_account_upsert(account_id => 'a9', plan_id => 'pro')$$, '42501',
                 'account "a9" is not bound to role "t_admin_a1"', 'nor creates one (the same answer)');
SELECT throws_ok($$SELECT credits_plan_upsert(plan_id => 'pro', allocation => 1000)$$, '42501', NULL,
                 'nor edits a plan');
SELECT throws_ok($$SELECT credits_pack_upsert(pack_id => 'pk', credits => 10, price => 0)$$, '42501', NULL,
                 'nor a pack');
SELECT throws_ok($$SELECT credits_product_upsert(product => 'editor', enabled => false)$$, '42501', NULL,
                 'nor a product for everyone');
SELECT throws_ok($$SELECT credits_price_upsert(product => 'editor', action => 'x', unit => 'call', price => 1)$$,
                 '42501', NULL, 'nor a price');
SELECT throws_ok(format('SELECT credits_recharge_fail(request_id => %L)', :'rq2'), 'CR017',
                 format('recharge request %s is not pending', :'rq2'),
                 'another account''s recharge request does not exist for it');
SELECT results_eq($$SELECT account_id FROM credits.account_summary$$, $$VALUES ('a1')$$, 'and it still sees its account alone');
RESET ROLE;
SELECT is((SELECT status FROM credits.recharge_requests WHERE request_id = :'rq2'), 'pending', 'the request is untouched');
SELECT is((SELECT allocation FROM credits.plans WHERE plan_id = 'pro'), 100::numeric(20,6), 'and so is the plan');

-- Unbinding narrows what a role reaches, never widens it: a role bound to
-- no account reaches every account, so its last binding goes only when
-- asked for by name.
CREATE ROLE t_unbind IN ROLE credits_app;
SELECT credits_account_bind(account_id => a, role => 't_unbind') FROM unnest(ARRAY['a1', 'a2']) a;
SELECT throws_ok($$SELECT credits_account_unbind(account_id => 'a2', role => 't_unbind', last_binding => NULL)$$,
                 '22004', 'last_binding must not be NULL', 'unbind: last_binding NULL refused');
SELECT lives_ok($$SELECT credits_account_unbind(account_id => 'a2', role => 't_unbind')$$,
                'unbind: a binding that is not the role''s last goes');
SET ROLE t_unbind;
SELECT throws_ok($$SELECT credits_reserve(account_id => 'a2', amount => 1, product => 'editor')$$, 'CR002', NULL,
                 'unbind: the role no longer reaches that account');
RESET ROLE;
SELECT throws_ok($$SELECT credits_account_unbind(account_id => 'a1', role => 't_unbind')$$, 'CR019',
                 'account "a1" is the last one bound to role "t_unbind"',
                 'unbind: the role''s last binding is refused (the role would reach every account)');
SELECT results_eq($$SELECT account_id FROM credits.account_roles WHERE role_id = 't_unbind'::regrole$$,
                  $$VALUES ('a1')$$, 'unbind: and stays');
SET ROLE t_unbind;
SELECT throws_ok($$SELECT credits_reserve(account_id => 'a2', amount => 1, product => 'editor')$$, 'CR002', NULL,
                 'unbind: so the role still reaches its account alone');
RESET ROLE;
SELECT lives_ok($$SELECT credits_account_unbind(account_id => 'a1', role => 't_unbind', last_binding => true)$$,
                'unbind: last_binding => true removes the last binding');
SELECT is_empty($$SELECT 1 FROM credits.account_roles WHERE role_id = 't_unbind'::regrole$$, 'unbind: none left');
CREATE ROLE t_group;
CREATE ROLE t_member IN ROLE t_group, credits_app;
SELECT credits_account_bind(account_id => 'a2', role => 't_group');
SELECT credits_account_bind(account_id => 'a1', role => 't_member');
SELECT lives_ok($$SELECT credits_account_unbind(account_id => 'a1', role => 't_member')$$,
                'unbind: a role''s own last binding goes while a role it is a member of is bound');
SET ROLE t_member;
SELECT throws_ok($$SELECT credits_reserve(account_id => 'a1', amount => 1, product => 'editor')$$, 'CR002', NULL,
                 'unbind: and the role reaches that role''s accounts alone');
RESET ROLE;
SELECT throws_ok($$SELECT credits_account_unbind(account_id => 'a2', role => 't_group')$$, 'CR019',
                 'account "a2" is the last one bound to role "t_group"',
                 'unbind: the group''s last binding is refused (it and its members would reach every account)');
CREATE ROLE t_gone;
SELECT credits_account_bind(account_id => 'a2', role => 't_gone');
SELECT 't_gone'::regrole::oid AS gone \gset
DROP ROLE t_gone;
SELECT lives_ok(format('SELECT credits_account_unbind(account_id => %L, role => %s::oid::regrole)', 'a2', :'gone'),
                'unbind: a dropped role''s last binding goes without last_binding (it widens nothing)');
SELECT is_empty(format('SELECT 1 FROM credits.account_roles WHERE role_id::oid = %s', :'gone'),
                'unbind: the dropped role''s binding is gone');

-- Hostile objects on the caller's search_path are never picked up.
CREATE SCHEMA hostile;
CREATE FUNCTION hostile.trim_scale(numeric) RETURNS numeric LANGUAGE sql AS 'SELECT 999999::numeric';
CREATE FUNCTION hostile.numeric_sub(numeric, numeric) RETURNS numeric LANGUAGE sql AS 'SELECT 0::numeric';
CREATE OPERATOR hostile.- (LEFTARG = numeric, RIGHTARG = numeric, FUNCTION = hostile.numeric_sub);
CREATE FUNCTION hostile.gen_random_uuid() RETURNS uuid LANGUAGE sql AS $$SELECT '00000000-0000-0000-0000-000000000000'::uuid$$;
SET LOCAL search_path = hostile, public, pg_catalog;
SELECT credits_reserve(account_id => 'a1', amount => 7, product => 'editor')::text AS h1 \gset
SELECT isnt(:'h1'::text, '00000000-0000-0000-0000-000000000000'::text, 'a shadowing gen_random_uuid is not used');
SELECT is(credits_commit(reservation_id => :'h1', amount => 5), 5::numeric, 'a shadowing trim_scale is not used');
SELECT is((credits_balance('a1') -> 'summary' ->> 'available')::numeric, 91::numeric,
          'a shadowing minus operator is not used (100 - 4 - 5)');
RESET search_path;

-- Tamper evidence: editing a ledger row behind the guard breaks the hash chain.
SELECT is_empty('SELECT * FROM credits_verify()', 'credits_verify() is empty before');
ALTER TABLE credits.ledger DISABLE TRIGGER ledger_append_only;
UPDATE credits.ledger SET metadata = '{"edited": true}'
 WHERE entry_id = (SELECT min(entry_id) FROM credits.ledger WHERE account_id = 'a2' AND kind = 'charge');
ALTER TABLE credits.ledger ENABLE TRIGGER ledger_append_only;
SELECT results_eq($$SELECT invariant, account_id FROM credits_verify()$$,
                  $$VALUES ('ledger hash chain is intact', 'a2')$$, 'credits_verify() reports the broken chain');
SET ROLE t_admin_a1;
SELECT is_empty('SELECT * FROM credits_verify()', 'an admin bound to a1 is told about a1 only');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
