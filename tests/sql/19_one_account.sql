\ir helpers.inc
SELECT plan(37);

-- Beyond one machine (README): every table that holds account data has an
-- account_id column in its keys, so that Citus can distribute it by that
-- column; the other tables are small reference tables; and every API call
-- for one account, with the triggers it fires, writes that account's rows
-- only (and a reference table only where the README says so), so that it
-- can run on the account's shard.

-- The tables that hold account data, found by their account_id column, so
-- that a table added later is checked without being listed here.
CREATE FUNCTION pg_temp.account_tables() RETURNS SETOF regclass LANGUAGE sql AS $$
    SELECT c.oid::regclass FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'account_id' AND NOT a.attisdropped
     WHERE c.relnamespace = 'credits'::regnamespace AND c.relkind IN ('r', 'p')
     ORDER BY c.relname
$$;

SELECT set_eq($$SELECT c.relname::text FROM pg_catalog.pg_class c
                 WHERE c.relnamespace = 'credits'::regnamespace AND c.relkind IN ('r', 'p')
                   AND c.oid NOT IN (SELECT pg_temp.account_tables())$$,
              ARRAY['plans', 'products', 'prices', 'packs'],
              'every table without an account_id column is one of the four small reference tables');
SELECT cmp_ok((SELECT count(*) FROM pg_temp.account_tables()), '>=', 12::bigint, 'at least twelve tables hold account data');
SELECT is_empty($$SELECT t::text FROM pg_temp.account_tables() t
                   WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_constraint k WHERE k.conrelid = t AND k.contype = 'p')$$,
                'every table of account data has a primary key');
SELECT is_empty($$SELECT i.indexrelid::regclass::text FROM pg_catalog.pg_index i
                    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attname = 'account_id'
                   WHERE i.indrelid IN (SELECT pg_temp.account_tables()) AND i.indisunique
                     AND NOT a.attnum = ANY (i.indkey::int2[])$$,
                'the primary key and every unique index of a table of account data include account_id');
SELECT is_empty($$SELECT k.conname::text FROM pg_catalog.pg_constraint k
                   WHERE k.contype = 'f' AND k.conrelid IN (SELECT pg_temp.account_tables())
                     AND k.confrelid IN (SELECT pg_temp.account_tables())
                     AND NOT EXISTS (SELECT FROM generate_subscripts(k.conkey, 1) n
                                      WHERE (SELECT attname FROM pg_catalog.pg_attribute
                                              WHERE attrelid = k.conrelid AND attnum = k.conkey[n]) = 'account_id'
                                        AND (SELECT attname FROM pg_catalog.pg_attribute
                                              WHERE attrelid = k.confrelid AND attnum = k.confkey[n]) = 'account_id')$$,
                'a foreign key between tables of account data pairs account_id with account_id');
SELECT is_empty($$SELECT k.conname::text FROM pg_catalog.pg_constraint k
                   WHERE k.contype = 'f' AND k.confrelid IN (SELECT pg_temp.account_tables())
                     AND k.conrelid NOT IN (SELECT pg_temp.account_tables())$$,
                'no reference table has a foreign key to a table of account data');

-- Every row that is not account a's: the rows of the other accounts in the
-- tables of account data, and every row of the reference tables, each with
-- its ctid, which every UPDATE changes (also one that leaves the row as it
-- was, and a HOT one).
CREATE FUNCTION pg_temp.not_mine() RETURNS TABLE (tbl text, tid tid, content text) LANGUAGE plpgsql AS $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT c.oid FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'credits'::regnamespace AND c.relkind IN ('r', 'p') LOOP
        IF t IN (SELECT pg_temp.account_tables()) THEN
            RETURN QUERY EXECUTE format('SELECT %L, x.ctid, x::text FROM %s x WHERE x.account_id IS DISTINCT FROM %L', t, t, 'a');
        ELSE
            RETURN QUERY EXECUTE format('SELECT %L, x.ctid, x::text FROM %s x', t, t);
        END IF;
    END LOOP;
END
$$;
CREATE TEMP TABLE marked AS SELECT * FROM pg_temp.not_mine() WITH NO DATA;
CREATE FUNCTION pg_temp.mark() RETURNS void LANGUAGE sql AS $$
    DELETE FROM marked;
    INSERT INTO marked SELECT * FROM pg_temp.not_mine();
$$;
-- What changed since the last mark among the rows that are not a's: a row
-- written (inserted, or the new version of an update) or gone (deleted, or
-- the old version of an update).
CREATE FUNCTION pg_temp.changes() RETURNS TABLE (change text, tbl text, content text) LANGUAGE sql AS $$
    (SELECT 'written', n.tbl, n.content FROM (SELECT * FROM pg_temp.not_mine() EXCEPT SELECT * FROM marked) n)
    UNION ALL
    (SELECT 'gone', o.tbl, o.content FROM (SELECT * FROM marked EXCEPT SELECT * FROM pg_temp.not_mine()) o)
    ORDER BY 2, 1, 3
$$;
-- The assertion after each call: nothing but a's rows changed (the rows
-- that did are named on failure); then a new mark for the next call.
CREATE FUNCTION pg_temp.only_mine(what text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    res text := is_empty('SELECT change || '' '' || tbl || '' '' || content FROM pg_temp.changes()',
                         what || ': writes no row of another account or of a reference table');
BEGIN
    PERFORM pg_temp.mark();
    RETURN res;
END
$$;

-- Account b has rows in every table of account data: a pending hold that
-- will expire, an idempotency key "k" (which a will use too), a usage
-- alert, a recharge request, a purchase, a product switched off, a role.
SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100, reset => 'calendar_month', limit_mode => 'soft',
                           soft_limit => 50, rollover_cap => 20);
SELECT credits_plan_upsert(plan_id => 'max', allocation => 300, reset => 'calendar_month');
SELECT credits_pack_upsert(pack_id => 'p10', credits => 10, price => 5);
SELECT credits_account_upsert(account_id => 'b', plan_id => 'pro');
SELECT credits_auto_recharge_set(account_id => 'b', enabled => true, pack => 'p10', threshold => 30);
SELECT credits_commit(credits_reserve(account_id => 'b', amount => 85, product => 'editor', idempotency_key => 'k'));
SELECT credits_purchase(account_id => 'b', pack => 'p10', payment_ref => 'pay-b');
SELECT credits_account_product_set(account_id => 'b', product => 'seo', enabled => false);
CREATE ROLE t_app_b IN ROLE credits_app;
CREATE ROLE t_app_a IN ROLE credits_app;
SELECT credits_account_bind(account_id => 'b', role => 't_app_b');
SELECT credits_reserve(account_id => 'b', amount => 1, product => 'editor', ttl => '1 minute');
SELECT is_empty($$SELECT t::text FROM pg_temp.account_tables() t
                   WHERE NOT EXISTS (SELECT FROM pg_temp.not_mine() m WHERE m.tbl = t::text)$$,
                'account b has rows in every table of account data');

SELECT pg_temp.mark();

-- Account a, through every API call for one account, on the paths the
-- calls can take (scripts/test.sh runs this file again with
-- credits.fast_paths = off, where reserve and commit take the general
-- paths).
SELECT credits_account_upsert(account_id => 'a', plan_id => 'pro');
SELECT pg_temp.only_mine('credits_account_upsert of a new account');
SELECT credits_grant(account_id => 'a', amount => 5, kind => 'topup');
SELECT credits_grant(account_id => 'a', amount => 7, kind => 'promo', expires_at => '2026-03-20 00:00+00');
SELECT credits_grant(account_id => 'a', amount => 3, kind => 'pack', idempotency_key => 'k');
SELECT pg_temp.only_mine('credits_grant of a top-up, a promo and a pack with a key');

SELECT credits_reserve(account_id => 'a', amount => 10, product => 'editor') AS r1 \gset
SELECT pg_temp.only_mine('credits_reserve');
SELECT credits_commit(reservation_id => :'r1', amount => 4);
SELECT pg_temp.only_mine('credits_commit of less than reserved');
SELECT credits_reserve(account_id => 'a', amount => 10, product => 'editor', idempotency_key => 'k') AS r2 \gset
SELECT credits_reserve(account_id => 'a', amount => 10, product => 'editor', idempotency_key => 'k');
SELECT pg_temp.only_mine('credits_reserve with the key account b used, and its replay');
SELECT credits_commit(reservation_id => :'r2', amount => 12, account_id => 'a');
SELECT pg_temp.only_mine('credits_commit of more than reserved');
SELECT credits_refund(reservation_id => :'r1', amount => 1, account_id => 'a');
SELECT credits_refund(reservation_id => :'r2', idempotency_key => 'k');
SELECT pg_temp.only_mine('credits_refund of committed reservations, one with its account_id, one with a key');
SELECT credits_refund(reservation_id => credits_reserve(account_id => 'a', amount => 2, product => 'editor'));
SELECT pg_temp.only_mine('credits_refund of a pending hold');
SELECT credits_reserve(account_id => 'a', amount => 1, product => 'editor', ttl => '1 minute');
SELECT pg_temp.only_mine('credits_reserve with a short ttl');

-- Two minutes later a's hold and b's have expired: a's next write path
-- expires a's hold only.
SET LOCAL credits.now = '2026-03-10 12:02:00+00';
SELECT credits_commit(credits_reserve(account_id => 'a', amount => 1, product => 'editor'));
SELECT pg_temp.only_mine('credits_reserve and credits_commit after a hold of a and one of b expired');
SELECT is((SELECT string_agg(account_id || ':' || status, ',' ORDER BY account_id) FROM credits.reservations
            WHERE expires_at = '2026-03-10 12:01:00+00'),
          'a:expired,b:pending', 'the reserve expired a''s hold and left b''s for b''s own write paths');

SELECT credits_reserve(account_id => 'a', amount => 1, product => 'translations');
SELECT results_eq($$SELECT change, tbl FROM pg_temp.changes()$$,
                  $$VALUES ('written', 'credits.products')$$,
                  'credits_reserve for a product never seen registers it in credits.products, and writes nothing else');
SELECT pg_temp.mark();
SELECT credits_account_product_set(account_id => 'a', product => 'seo', enabled => false);
SELECT credits_account_product_set(account_id => 'a', product => 'seo', enabled => NULL);
SELECT pg_temp.only_mine('credits_account_product_set of a registered product');
-- A call is decided by its own account's rows: b's switch of a product
-- does not decide a's.
SELECT credits_account_product_set(account_id => 'b', product => 'images', enabled => true);
SELECT credits_account_product_set(account_id => 'a', product => 'images', enabled => false);
SELECT throws_ok($$SELECT credits_reserve(account_id => 'a', amount => 1, product => 'images')$$, 'CR009',
                 'product "images" is disabled', 'a product a switched off stays off for a although b switched it on');
SELECT pg_temp.mark();
SELECT credits_account_bind(account_id => 'a', role => 't_app_a');
SELECT credits_account_unbind(account_id => 'a', role => 't_app_a', last_binding => true);
SELECT pg_temp.only_mine('credits_account_bind and credits_account_unbind');

-- Auto-recharge: a's commit crosses the threshold and requests a pack,
-- whose payment fails; then a purchase.
SELECT credits_auto_recharge_set(account_id => 'a', enabled => true, pack => 'p10', threshold => 100);
SELECT pg_temp.only_mine('credits_auto_recharge_set');
SELECT credits_commit(credits_reserve(account_id => 'a', amount => 20, product => 'editor'));
SELECT pg_temp.only_mine('credits_commit that crosses a usage alert and the recharge threshold');
SELECT credits_recharge_fail(request_id => (SELECT request_id FROM credits.recharge_requests
                                             WHERE account_id = 'a' AND status = 'pending'),
                             reason => 'card declined');
SELECT pg_temp.only_mine('credits_recharge_fail');
SELECT credits_auto_recharge_set(account_id => 'a', enabled => false);
SELECT credits_purchase(account_id => 'a', pack => 'p10', payment_ref => 'pay-b');
SELECT pg_temp.only_mine('credits_purchase with the payment reference account b used');

-- The soft limit's overage, then debt, paid off by a pack.
SELECT credits_reserve(account_id => 'a', amount => 1, product => 'editor') AS r3 \gset
SELECT credits_commit(credits_reserve(account_id => 'a', amount => 140, product => 'editor'));
SELECT pg_temp.only_mine('credits_commit into overage');
SELECT credits_commit(reservation_id => :'r3', amount => 30, force => true);
SELECT ok((SELECT debt > 0 FROM credits.accounts WHERE account_id = 'a'), 'a is in debt');
SELECT pg_temp.only_mine('credits_commit with force into debt');
SELECT credits_grant(account_id => 'a', amount => 100, kind => 'adjustment');
SELECT pg_temp.only_mine('credits_grant that pays off debt');

-- A new period: b is due as well, and only a's write paths roll a.
SET LOCAL credits.now = '2026-04-02 00:00:00+00';
SELECT credits_commit(credits_reserve(account_id => 'a', amount => 1, product => 'editor'));
SELECT pg_temp.only_mine('credits_reserve that rolls the account into a new period');
SET LOCAL credits.now = '2026-05-02 00:00:00+00';
SELECT is(credits_reset(account_id => 'a'), 1, 'credits_reset of a rolls a period');
SELECT pg_temp.only_mine('credits_reset of one account');
SELECT credits_account_upsert(account_id => 'a', plan_id => 'max');
SELECT pg_temp.only_mine('credits_account_upsert to another plan');
SELECT credits_account_upsert(account_id => 'a', byok => true);
SELECT credits_commit(credits_reserve(account_id => 'a', amount => 5, product => 'editor'));
SELECT pg_temp.only_mine('credits_account_upsert to BYOK, and a BYOK reserve and commit');
SELECT FROM credits_balance('a');
SELECT pg_temp.only_mine('credits_balance');

-- The check itself: a write of one of b's rows is seen.
UPDATE credits.buckets SET expires_at = expires_at WHERE account_id = 'b' AND kind = 'pack';
SELECT results_eq($$SELECT change, tbl FROM pg_temp.changes()$$,
                  $$VALUES ('gone', 'credits.buckets'), ('written', 'credits.buckets')$$,
                  'an update of another account''s row, even one that changes nothing, is seen');

SELECT * FROM finish();
ROLLBACK;
