-- credits 0.3.4 -> 0.3.5
-- credits_maintenance() rolls due accounts in batches of 100 by default
-- instead of 1000. The accounts a batch has rolled stay locked until the
-- batch commits, so an application's reserve on one of them waited for the
-- rest of the batch: up to 347-411 ms with batches of 1000 while rolling a
-- month start, 41-67 ms with batches of 100, for at most a few percent more
-- time per account (README, Scheduling with pg_cron). Jobs that pass
-- batch_size keep their value. The procedure keeps its owner, privileges and
-- comment.
-- Credits an account could not hold through its next reset are refused
-- (22003): credits_grant, credits_purchase, credits_plan_upsert and
-- credits_account_upsert ask the new credits._room_check. Until now a pack
-- or a plan that carried an account's balance past numeric(20,6) at its
-- next reset left it unable to roll forward: every write path on it failed.
--
-- A batch that fails (an account that cannot be rolled forward) no longer
-- fails the run before any other account is rolled: the run rolls that
-- batch's accounts one at a time, sets aside those that fail with a
-- WARNING, brings every other due account up to date, and then fails with
-- CR018 naming them. credits._maintenance_batch takes the accounts set
-- aside (a new signature: dropped and created again, granted to
-- credits_admin as before); credits._maintenance_one is new.
--
-- Five internal SQL functions that Postgres cannot inline (a FROM clause,
-- sub-selects or an INSERT) become PL/pgSQL, so that their plans are kept
-- for the session instead of being parsed and planned again by every
-- statement or transaction that calls them: credits._next_alert_at (every
-- roll-forward at a reset), credits._may_touch (every general path; see
-- below for what it became), credits._idempotent_store, credits._roll_input
-- and credits._rollup. Same results; an account's roll-forward at a reset
-- takes about 15% less time.
--
-- credits_verify() sums each reservation's ledger rows in one pass over the
-- ledger, which has no index by reservation, instead of reading all of the
-- account's ledger rows once per committed reservation: quadratic in an
-- account's history: 32-57 s against 0.5-0.6 s now for 44,000 ledger
-- rows (README, credits_verify). Same result rows.
--
-- New: credits_events_purge(older_than, unacknowledged, kinds), the events
-- outbox's retention. Acknowledged events were kept forever; an admin (or a
-- pg_cron job) now deletes those acknowledged more than older_than ago.
--
-- The views read the clock through credits._now_stable(), a STABLE
-- wrapper of credits._now(): a view whose columns call a VOLATILE function
-- is not merged into the query that reads it, so in credits.actions "the
-- last 20 actions of an account" read and sorted all of the account's
-- reservations instead of 20 index entries (README, At scale).
-- credits.account_summary and credits.metrics use it too. Same columns and
-- rows.
--
-- Consumption order breaks the tie of a period's allocation and rollover
-- buckets (made at the same instant, with the same priority and expiry)
-- by kind, the allocation first, instead of by their random ids: which one
-- a reserve drew from, and so what a plan change finds used of the
-- allocation, depended on chance. The index buckets_consumption_order is
-- built again with kind; credits._draw and credits._roll_input order by it.
--
-- Reads of an account with nothing due take its stored row as its state:
-- credits._account_state (credits_balance's summary, credits.account_summary)
-- and credits._live_buckets (credits_balance's buckets) build the roll-forward
-- plan only when next_event has come (a lower bound of the period end and of
-- every expiry). Same results; account_summary over 10,000 accounts in
-- 0.96 s instead of 3.6-3.8 s. credits._live_buckets becomes PL/pgSQL.
--
-- New setting credits.notify (on by default): off, writing an event sends
-- no NOTIFY credits_events, so that a transaction that raised a usage
-- alert or a recharge request can still be prepared for two-phase commit
-- (PREPARE TRANSACTION refuses a transaction that sent a NOTIFY, 0A000).
-- credits._emit becomes PL/pgSQL and asks credits._notify_enabled().
--
-- Timestamps outside the years 1 to 9999 (UTC) no longer get in: the reset
-- planner reads an account's anchor and its buckets' expiries back as ISO
-- 8601 text with four-digit years, so a promo grant expiring in year
-- 10000 or later, or a billing anchor there or before year 1, left the
-- account unable to roll forward (every later call failed with XX001,
-- "cannot bring the account up to date"), and an anchor in year 290000
-- failed with XX000. credits_grant refuses such an expiry (22023), the
-- library's period functions such an anchor (22008). Rows that earlier
-- versions let in are repaired: such expiries become the last instant of
-- year 9999, such anchors keep their month, day and time in year 9999 (or
-- year 1). (The library's planner also reads the five-digit years, BC
-- dates and offsets with seconds that Postgres writes in some session time
-- zones: src/roll.rs.)
--
-- credits.account_roles.role_id becomes regrole instead of oid: pg_dump
-- wrote the OID, and a restore into another cluster (where pg_dumpall
-- --roles-only gives the roles new OIDs) kept bindings that named no role
-- there, so a role bound to some accounts was bound to nothing and saw
-- every account. pg_dump now writes the role's name. credits._bindings_of,
-- credits_account_bind and credits_account_unbind follow; _bindings_of
-- finds the caller's roles upward through pg_auth_members and their
-- bindings through the new index account_roles_by_role, instead of asking
-- pg_has_role about the role of every binding, and it, credits._sees_all
-- and credits._bound_accounts become PL/pgSQL, so that their plans are
-- kept for the session (with 10,000 bindings a bound role's reserve +
-- commit took 7.1 ms, now 1.2 ms; a superuser's 1.6 ms, now 1.0 ms).
-- The caller's roles come from a new helper, credits._roles_of; _sees_all
-- stops at the first binding of one of them; credits._may_touch, which
-- every write path and the library's fast paths ask about one account,
-- probes that account's bindings by key (SECURITY DEFINER, since it reads
-- account_roles itself) instead of listing the caller's accounts: a role
-- bound to 10,000 accounts took 13 ms per reserve + commit.
--
-- Auto-recharge's monthly cap counts what was requested or bought this
-- month in the pack's currency only (credits._after_usage): a cap is an
-- amount of one currency, and after the account's recharge pack changed to
-- one priced in another, the sum had added euros to dollars.
-- credits_pack_upsert stores the currency in upper case, and the cap
-- compares currencies without regard to case: 'usd' (as Stripe writes it)
-- and 'USD' are one currency.
--
-- credits_purchase refuses to complete a recharge request with another
-- pack than the one it asks for (CR006): it completed the request and
-- granted the other pack, although the request's event had told the
-- payment worker what to charge.
--
-- Auto-recharge requests nothing while the account's plan allows no
-- purchases (the plan was edited, or the account moved to another): the
-- request's event went to the payment worker, which took the payment, and
-- credits_purchase then refused it with CR010. A request made while the
-- plan allowed purchases is completed by credits_purchase after a change,
-- with the credits and price that its event asked for, also when its pack
-- was switched off or repriced since (until now CR016, or the pack's new
-- credits), or the account switched to BYOK (until now CR014; a BYOK
-- account keeps its packs for when it is switched back).
--
-- credits_auto_recharge_set's monthly_cap defaults to NULL, which keeps the
-- account's cap (50 for a new configuration), as pack and threshold do: a
-- call that only turned auto-recharge off or on again set the cap back to
-- 50.
--
-- credits_account_upsert refuses alert_percents with more than one
-- dimension (22023), and its message names the upper bound of 1000. It
-- forgets an override that has ended before it applies the values given:
-- a new limit_mode or soft_limit given without override_until after an
-- override had ended took that end too, and so had no effect at all.
--
-- Usage alerts are percentages of the current period's allocation, the
-- figure credits_balance shows (the new credits._period_allocation): they
-- took the plan's allocation, so that after an edit of it, which applies
-- from the next reset, a commit was judged against the new figure (an
-- alert at 90% of 100 not raised at 95 once the plan said 200), and the
-- alert's payload named it.
--
-- A BYOK reserve lowers the account's next_event to its hold's expiry, as
-- every other reserve does: it left next_event where it was, so that the
-- hold was marked expired only at the account's next event, and
-- credits_verify() reported the account meanwhile ("account next_event is
-- not after anything due"). Accounts with such holds are repaired below.
--
-- credits_reset with an infinite as_of says so (22023, as before) instead
-- of "as_of may not be later than the clock", which '-infinity' is not.
--
-- credits_maintenance() keeps overlapping runs apart with a transaction's
-- advisory lock, taken again after each COMMIT, instead of a session's:
-- a run that was cancelled or failed (inside a transaction block, or on a
-- statement timeout) kept the session's lock, and every later run in other
-- sessions, pg_cron's included, did nothing ("another run is in progress",
-- a NOTICE) until that session ended. Inside a transaction block it now
-- refuses to start (25001), asking the new credits._in_transaction_block().
--
-- Auto-recharge looks at the balance at more moments than a commit that
-- takes it below the threshold (the new credits._auto_recharge): also when
-- a roll-forward's expiries take it below or a reset leaves it below, when
-- a plan or BYOK change or a purchase (a recharge request's completion
-- included) leaves it below, and when credits_auto_recharge_set turns it on
-- (or sets it again) below the threshold; and it writes no request while
-- another of the account's is pending. An account that went below its
-- threshold by anything but a commit, bought a pack smaller than the gap,
-- or was refused a request by its monthly cap or a failed payment, asked
-- for nothing more until a grant took it back above the threshold: once at
-- zero it could make no commit that crosses it. credits._after_usage,
-- credits._housekeep, credits_account_upsert, credits_purchase and
-- credits_auto_recharge_set call it.
--
-- credits_account_upsert raises the usage alerts that a change of the
-- account puts its usage past (a plan with a smaller allocation, a switch
-- back from BYOK, a new alert percentage already passed) at once, by
-- asking credits._after_usage: they waited for the account's next commit.
--
-- credits.actions shows no overage for a hold released or expired without
-- a commit (it showed what the hold had held past the buckets, although
-- nothing was charged). Same columns.
--
-- A role bound to accounts works on those accounts only, also as a
-- credits_admin (the new credits._require_unbound; 42501 otherwise): a
-- credits_admin bound to one account could unbind itself and then reach
-- every account (grant credits to all of them), bind other roles, create
-- accounts, and edit what every account shares. credits_account_bind,
-- credits_account_unbind, credits_plan_upsert, credits_pack_upsert,
-- credits_product_upsert and credits_price_upsert need a role bound to no
-- account (or a superuser); credits_account_upsert refuses an account the
-- caller is not bound to, new or not (it answered CR002 for another
-- tenant's account and created a new one); credits_recharge_fail answers
-- CR017 for another account's request, as if it did not exist (it named
-- the account in a CR002); credits_verify() reports the caller's accounts
-- only.
--
-- credits_quote refuses a quote beyond numeric(20,6) (22003): it returned
-- it, and a reserve of it then failed with 22003.
--
-- Quotes and usage alerts are exact to the micro-credit at any size: they
-- divided (by 1000000, 1000 and 100), which Postgres rounds to about 16
-- significant digits, so a quote above about 10^12 came out rounded to 3
-- or 4 decimals (up or down), and a usage alert of a vast allocation was
-- due up to a micro-credit early. A next_alert_at stored before is worked
-- out again when the account's usage reaches it (raising no alert before
-- the exact line) or at its next reset.
--
-- A replayed keyed reserve returns its first result also once its product
-- has been disabled for the account or everyone: credits._reserve checked
-- the product before the key and failed with CR009.
--
-- credits_plan_upsert rolls the plan's accounts whose period has ended
-- forward first, with the plan as it was: an account that nothing had
-- rolled since its period ended (no call, maintenance not yet run) was
-- later rolled with the edited plan, and so got the new allocation for a
-- period that began before the edit, unlike an account rolled on time.
--
-- credits_account_upsert moves the end of the account's current period
-- only for another plan or a new anchor: after an edit of the plan's reset
-- rule (which applies from each account's next reset), any later call on
-- the account, one that only changed its alerts say, moved its current
-- period's end to the new rule's at once, while the plan's other accounts
-- kept theirs.
--
-- An account's next_event counts the expiry of every live bucket, also of
-- one whose credits are all held or spent (credits._next_event; the
-- library's reserve fast path likewise when it settles a false alarm):
-- worked out while a bucket had nothing free, next_event left its expiry
-- out, and credits a refund or a release gave back to it later stayed
-- available past its expiry (a reserve could count on them, and its
-- commit then failed with 23514). Accounts with such a next_event are
-- repaired below.
--
-- A reserve that waited for the account's lock while
-- credits_account_product_set switched its product off for the account is
-- refused (CR009), as the general path refuses it: the library's reserve
-- fast path read the switches in the snapshot its guarded UPDATE took
-- before the wait, and let such a reserve through. The account row carries
-- a copy of its switched-off products (credits.accounts.products_off, kept
-- by credits_account_product_set under the account's lock), which the fast
-- path reads on the locked row's newest version; credits_verify() checks
-- the copy.
--
-- credits_recharge_fail writes the account row, not only its lock: a call
-- at REPEATABLE READ or SERIALIZABLE that waited for its lock went on with
-- a snapshot in which the request was still pending, so a commit that
-- took the balance below the threshold requested no new recharge. It now
-- fails with 40001 there and, retried, requests.
--
-- credits_account_unbind refuses to remove the last binding that keeps an
-- existing role bound (CR019) unless called with the new last_binding =>
-- true: a role bound to no account reaches every account. Two unbindings
-- of one role from two accounts take turns on the role's bindings.
--
-- credits_commit's and credits_refund's refusals print amounts as the
-- reserve's do, without trailing zeros: CR001's DETAIL "It needs 39; the
-- account has 38 available for it." and its HINT "Commit at most 38, ..."
-- (it printed 38.000000), CR011's DETAIL "It was committed for 25; ..."
-- (25.000000), CR012's "It was charged 30, of which 10 is already
-- refunded; 20 is left to refund."; so does the soft limit's trigger on a
-- direct write (credits._overage_within_limit). The DETAILs and HINTs of
-- CR001 and CR012 are sentences, as every other error's are (they were
-- fragments such as "needs 39, available 38" and "top up, or wait for the
-- reset on ..."). Only messages change.
--
-- The extension's own errors are raised by the function that refuses the
-- call (RAISE EXCEPTION USING ERRCODE, MESSAGE, DETAIL, HINT) instead of
-- through credits._raise, which is dropped: an error's CONTEXT had that
-- helper's frame and the whole text of the statement that called it, the
-- format() arguments of its message, DETAIL and HINT included (eight
-- lines of CONTEXT for the reserve's CR001, now one, in the client's error
-- and in the server log of every refusal). Same SQLSTATEs, messages,
-- DETAILs and HINTs.
-- credits._unknown_account becomes PL/pgSQL for the same reason.
--
-- Every column of the usage views and of the tables has a comment (\d+,
-- and BI tools that show column descriptions).
--
-- credits._commit's path for a commit of more than its hold loses a
-- write-off it could never make: there every draw of the hold is charged
-- whole, even from a bucket that expired meanwhile. Same results.
--
-- credits.accounts.plan_id is no longer a foreign key to credits.plans:
-- Postgres checks a foreign key again, locking the plan's row FOR KEY
-- SHARE, on every update of an account row that its own transaction has
-- already written, so an application that reserves and commits in one
-- transaction locked the row that all of the plan's accounts share, and
-- each two such transactions that overlapped needed a new MultiXact (one
-- per transaction of the benchmark's reserve + INSERT + commit, with 4
-- members on average at 8 clients and 14 at 32: README, Tables). The
-- reference is kept as before by credits_account_upsert, which now locks
-- the plan's row itself, and by new guards: credits._plan_in_use refuses
-- to delete, rename or truncate a plan that accounts are on (23503, as the
-- foreign key did; outside READ COMMITTED it refuses to delete or rename
-- any plan, 0A000), credits._plan_exists an account's plan_id changed to
-- a plan that does not exist (23503); credits_verify() checks it.
--
-- Released upgrade scripts are never edited: a fix ships in the next one.
\echo Use "ALTER EXTENSION credits UPDATE TO '0.3.5'" to load this file. \quit

-- The account row's copy of its switched-off products, filled below.
ALTER TABLE credits.accounts ADD COLUMN products_off text[];

-- The products switched off for the account, sorted (NULL: none): what its
-- row's copy, credits.accounts.products_off, must hold. The reserve fast
-- path reads that copy on the locked row's newest version;
-- credits_account_product_set writes it under the account's lock and
-- credits_verify() checks it.
CREATE FUNCTION credits._products_off(p_account text) RETURNS text[]
LANGUAGE sql STABLE
AS $$
    SELECT array_agg(ap.product ORDER BY ap.product) FROM credits.account_products ap
     WHERE ap.account_id = p_account AND NOT ap.enabled
$$;
REVOKE ALL ON FUNCTION credits._products_off(text) FROM PUBLIC;

UPDATE credits.accounts a
   SET products_off = credits._products_off(a.account_id)
 WHERE a.account_id IN (SELECT ap.account_id FROM credits.account_products ap WHERE NOT ap.enabled);

DROP FUNCTION credits._maintenance_batch(integer);
CREATE FUNCTION credits._maintenance_batch(batch_size integer, skip text[] DEFAULT '{}') RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a record;
    n integer := 0;
BEGIN
    FOR a IN
        SELECT c.account_id FROM credits.accounts c
         WHERE c.next_event <= credits._now() AND c.account_id <> ALL (skip)
         ORDER BY c.next_event
         LIMIT batch_size
           FOR NO KEY UPDATE SKIP LOCKED
    LOOP
        PERFORM credits._housekeep(a.account_id, credits._now());
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- The maintenance run's way past an account that cannot be brought up to
-- date: locks the first due account not in skip (SKIP LOCKED) and rolls
-- it in a subtransaction. Returns the account (NULL: none is due) and, if
-- rolling it failed, the error (the account is left as it was).
CREATE FUNCTION credits._maintenance_one(skip text[], OUT account text, OUT failure text, OUT failure_state text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT c.account_id INTO account FROM credits.accounts c
     WHERE c.next_event <= credits._now() AND c.account_id <> ALL (skip)
     ORDER BY c.next_event
     LIMIT 1
       FOR NO KEY UPDATE SKIP LOCKED;
    IF account IS NULL THEN
        RETURN;
    END IF;
    BEGIN
        PERFORM credits._housekeep(account, credits._now());
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS failure = MESSAGE_TEXT, failure_state = RETURNED_SQLSTATE;
    END;
END
$$;

-- Whether the caller is inside a transaction block (src/session.rs).
CREATE FUNCTION credits._in_transaction_block() RETURNS bool
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_in_transaction_block_wrapper';
REVOKE ALL ON FUNCTION credits._in_transaction_block() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits._in_transaction_block() TO credits_admin;

-- The pg_cron entry point: CALL credits_maintenance().
-- Brings every due account up to date in batches, committing after each so
-- that no lock is held long, while reservations go on. The accounts a batch
-- has rolled stay locked until it commits, so a reserve on one of them waits
-- for the rest of the batch: the default of 100 (1000 until 0.3.4) keeps
-- that wait to tens of milliseconds for at most a few percent more time per
-- account (README, Scheduling with pg_cron). A batch runs without
-- subtransactions (a hundred of them with writes would overflow each
-- backend's cache of 64 and slow every other session's snapshots); when one
-- fails, the run rolls its accounts one at a time, a transaction each, sets
-- aside those that fail with a WARNING, goes on with the others, and at
-- the end, with all the others committed, fails with CR018 naming them
-- (until 0.3.5 one such account failed every run before any other account
-- was rolled). A session-level advisory lock keeps two overlapping runs
-- apart (the second one returns at once). An invoker procedure: PostgreSQL
-- forbids COMMIT in a SECURITY DEFINER procedure or one with a SET clause,
-- so every name is qualified.
CREATE OR REPLACE PROCEDURE public.credits_maintenance(batch_size integer DEFAULT 100)
LANGUAGE plpgsql
AS $$
DECLARE
    n integer;
    total integer := 0;
    v_failed boolean;
    v_skip text[] := '{}';
    v_reasons text[] := '{}';
    v_lock CONSTANT integer := 7472616;
    r record;
BEGIN
    IF batch_size IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'batch_size must not be NULL',
            DETAIL = 'batch_size is required.', HINT = 'Pass a positive batch size such as 100.';
    END IF;
    IF batch_size < 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'batch_size must be positive',
            DETAIL = pg_catalog.format('batch_size is %s.', batch_size), HINT = 'Pass a positive batch size such as 100.';
    END IF;
    IF credits._in_transaction_block() THEN
        RAISE EXCEPTION USING ERRCODE = '25001',
            MESSAGE = 'credits_maintenance() cannot run inside a transaction block',
            DETAIL = 'It commits after each batch of accounts, and Postgres allows no COMMIT in a procedure called inside a transaction block.',
            HINT = 'Run CALL credits_maintenance() as a statement of its own, outside BEGIN ... COMMIT, as pg_cron does.';
    END IF;
    -- A transaction's lock, taken again after each COMMIT: an error or a
    -- cancel releases it with the transaction.
    IF NOT pg_catalog.pg_try_advisory_xact_lock(v_lock, 1) THEN
        RAISE NOTICE 'credits_maintenance: another run is in progress, nothing to do';
        RETURN;
    END IF;
    <<batches>>
    LOOP
        BEGIN
            n := credits._maintenance_batch(batch_size, v_skip);
            v_failed := false;
        EXCEPTION WHEN OTHERS THEN
            v_failed := true;
        END;
        IF NOT v_failed THEN
            total := total + n;
            COMMIT;
            EXIT batches WHEN n < batch_size;
            IF NOT pg_catalog.pg_try_advisory_xact_lock(v_lock, 1) THEN
                RAISE NOTICE 'credits_maintenance: another run took over between two batches';
                EXIT batches;
            END IF;
        ELSE
            FOR i IN 1 .. batch_size LOOP
                r := credits._maintenance_one(v_skip);
                EXIT WHEN r.account IS NULL;
                IF r.failure IS NULL THEN
                    total := total + 1;
                ELSE
                    v_skip := v_skip || r.account;
                    v_reasons := v_reasons || pg_catalog.format('"%s": %s (%s)', r.account, r.failure, r.failure_state);
                    RAISE WARNING USING
                        MESSAGE = pg_catalog.format('credits_maintenance: account "%s" cannot be brought up to date', r.account),
                        DETAIL = pg_catalog.format('%s (SQLSTATE %s). The run goes on with the other accounts.',
                                                   r.failure, r.failure_state),
                        HINT = pg_catalog.format('Every write path on "%s" rolls it forward first and fails the same way: '
                                                 'SELECT credits_reset(%L) shows the error.', r.account, r.account);
                END IF;
                COMMIT;
                IF NOT pg_catalog.pg_try_advisory_xact_lock(v_lock, 1) THEN
                    RAISE NOTICE 'credits_maintenance: another run took over between two batches';
                    EXIT batches;
                END IF;
            END LOOP;
        END IF;
    END LOOP;
    RAISE NOTICE 'credits_maintenance: % accounts brought up to date', total;
    IF pg_catalog.cardinality(v_skip) > 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'CR018',
            MESSAGE = pg_catalog.format('credits_maintenance: %s of the due accounts could not be brought up to date',
                                        pg_catalog.cardinality(v_skip)),
            DETAIL = pg_catalog.format('%s. The other %s due accounts were brought up to date and committed.',
                                       pg_catalog.array_to_string(v_reasons, '; '), total),
            HINT = 'Each of these accounts fails its write paths the same way until it is repaired: '
                   'run credits_reset(account_id) on one to see the error.';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION credits._maintenance_batch(integer, text[]), credits._maintenance_one(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits._maintenance_batch(integer, text[]), credits._maintenance_one(text[]) TO credits_admin;

CREATE OR REPLACE FUNCTION credits._next_alert_at(p_percents numeric[], p_raised numeric[], p_allocation numeric)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    RETURN (SELECT ceil(min(x) * p_allocation * 10000) * 0.000001
              FROM unnest(p_percents) x
             WHERE p_allocation > 0 AND NOT x = ANY (p_raised));
END
$$;

CREATE OR REPLACE FUNCTION credits._idempotent_store(p_account text, p_fn text, p_key text, p_request jsonb, p_result text, p_at timestamptz)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_key IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO credits.idempotency_keys (account_id, fn, key, request, result, created_at)
    VALUES (p_account, p_fn, p_key, p_request, p_result, p_at)
    ON CONFLICT (account_id, fn, key) DO NOTHING;
END
$$;

CREATE OR REPLACE FUNCTION credits._roll_input(p_account text, p_now timestamptz) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (SELECT jsonb_build_object(
            'now', p_now, 'period_start', a.period_start, 'period_end', a.period_end,
            'anchor', a.billing_anchor, 'reset', p.reset, 'allocation', p.allocation,
            'rollover_cap', p.rollover_cap, 'byok', a.byok, 'debt', a.debt,
            'buckets', coalesce((
                SELECT jsonb_agg(jsonb_build_object(
                           'id', b.bucket_id, 'kind', b.kind, 'priority', b.priority, 'balance', b.balance,
                           'held', b.held, 'expires_at', b.expires_at, 'created_at', b.created_at)
                       ORDER BY b.priority, b.expires_at, b.created_at, b.kind, b.bucket_id)
                  FROM credits.buckets b
                 WHERE b.account_id = p_account AND (b.balance > 0 OR b.held > 0)), '[]'),
            'holds', coalesce((
                SELECT jsonb_agg(jsonb_build_object(
                           'id', r.reservation_id, 'expires_at', r.expires_at, 'overage', r.overage,
                           'buckets', r.draw_buckets, 'amounts', r.draw_amounts))
                  FROM credits.reservations r
                 WHERE r.account_id = p_account AND r.status = 'pending' AND r.expires_at <= p_now), '[]'))
          FROM credits.accounts a
          JOIN credits.plans p ON p.plan_id = a.plan_id
         WHERE a.account_id = p_account);
END
$$;

CREATE OR REPLACE FUNCTION credits._rollup(p_account text, p_at timestamptz, p_product text, p_used numeric, p_overage numeric,
                                p_refunded numeric, p_overage_refunded numeric, p_billable numeric,
                                p_actions integer, p_byok numeric)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO credits.usage_rollup AS u (account_id, day, product, used, overage, refunded, overage_refunded,
                                           billable_overage, actions, byok_used)
    VALUES (p_account, (p_at AT TIME ZONE 'UTC')::date, p_product, p_used, p_overage, p_refunded, p_overage_refunded,
            p_billable, p_actions, p_byok)
    ON CONFLICT (account_id, day, product) DO UPDATE
       SET used = u.used + EXCLUDED.used, overage = u.overage + EXCLUDED.overage,
           refunded = u.refunded + EXCLUDED.refunded, overage_refunded = u.overage_refunded + EXCLUDED.overage_refunded,
           billable_overage = u.billable_overage + EXCLUDED.billable_overage,
           actions = u.actions + EXCLUDED.actions, byok_used = u.byok_used + EXCLUDED.byok_used;
END
$$;

CREATE OR REPLACE FUNCTION public.credits_verify()
RETURNS TABLE (invariant text, account_id text, detail text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH ledger_by_bucket AS (
        SELECT l.account_id, l.bucket_id, sum(l.amount) AS amount
          FROM credits.ledger l WHERE l.bucket_id IS NOT NULL
         GROUP BY 1, 2
    ), pending_draws AS (
        SELECT r.account_id, u.bucket_id, sum(u.amount) AS amount
          FROM credits.reservations r, unnest(r.draw_buckets, r.draw_amounts) AS u(bucket_id, amount)
         WHERE r.status = 'pending'
         GROUP BY 1, 2
    ), by_account AS (
        SELECT b.account_id, sum(b.balance) AS balance, sum(b.held) AS held
          FROM credits.buckets b GROUP BY 1
    ), pending_overage AS (
        SELECT r.account_id, sum(r.overage) AS overage
          FROM credits.reservations r WHERE r.status = 'pending' GROUP BY 1
    ), debt_ledger AS (
        SELECT l.account_id,
               sum(CASE l.kind WHEN 'debt' THEN -l.amount WHEN 'debt_refund' THEN -l.amount
                               WHEN 'debt_payment' THEN l.amount END) AS debt
          FROM credits.ledger l WHERE l.kind IN ('debt', 'debt_refund', 'debt_payment')
         GROUP BY 1
    ), reservation_ledger AS (
        -- What each reservation's ledger rows add up to, in one pass over
        -- the ledger: it has no index by reservation, so a look-up per
        -- reservation would read all of the account's ledger rows each time.
        SELECT l.account_id, l.reservation_id, -sum(l.amount) AS amount
          FROM credits.ledger l
         WHERE l.reservation_id IS NOT NULL
           AND l.kind IN ('charge', 'overage', 'debt', 'refund', 'overage_refund', 'debt_refund')
         GROUP BY 1, 2
    ), period_usage AS (
        SELECT a.account_id,
               coalesce(-sum(l.amount) FILTER (WHERE l.kind IN ('charge', 'refund', 'debt', 'debt_refund')), 0) AS used,
               coalesce(-sum(l.amount) FILTER (WHERE l.kind IN ('overage', 'overage_refund')), 0) AS overage
          FROM credits.accounts a
          JOIN credits.reservations r ON r.account_id = a.account_id AND r.period_start = a.period_start
                                      AND r.status = 'committed'
          JOIN credits.ledger l ON l.account_id = r.account_id AND l.reservation_id = r.reservation_id
         GROUP BY 1
    ), violations (invariant, account_id, detail) AS (
    SELECT 'bucket balance equals its ledger rows', b.account_id,
           format('bucket %s: stored %s, ledger %s', b.bucket_id, b.balance, coalesce(lb.amount, 0))
      FROM credits.buckets b
      LEFT JOIN ledger_by_bucket lb ON lb.account_id = b.account_id AND lb.bucket_id = b.bucket_id
     WHERE b.balance <> coalesce(lb.amount, 0)
    UNION ALL
    SELECT 'ledger rows belong to a bucket of their account', lb.account_id,
           format('bucket %s has ledger rows but no row in credits.buckets', lb.bucket_id)
      FROM ledger_by_bucket lb
     WHERE NOT EXISTS (SELECT 1 FROM credits.buckets b WHERE b.account_id = lb.account_id AND b.bucket_id = lb.bucket_id)
    UNION ALL
    SELECT 'bucket held equals its pending draws', b.account_id,
           format('bucket %s: held %s, pending draws %s', b.bucket_id, b.held, coalesce(pd.amount, 0))
      FROM credits.buckets b
      LEFT JOIN pending_draws pd ON pd.account_id = b.account_id AND pd.bucket_id = b.bucket_id
     WHERE b.held <> coalesce(pd.amount, 0)
    UNION ALL
    SELECT 'account balance and holds equal its buckets', a.account_id,
           format('stored balance %s held %s, buckets balance %s held %s',
                  a.balance, a.held, coalesce(ba.balance, 0), coalesce(ba.held, 0))
      FROM credits.accounts a
      LEFT JOIN by_account ba ON ba.account_id = a.account_id
     WHERE a.balance <> coalesce(ba.balance, 0) OR a.held <> coalesce(ba.held, 0)
    UNION ALL
    SELECT 'account overage hold equals its pending reservations', a.account_id,
           format('stored %s, pending reservations %s', a.overage_held, coalesce(po.overage, 0))
      FROM credits.accounts a
      LEFT JOIN pending_overage po ON po.account_id = a.account_id
     WHERE a.overage_held <> coalesce(po.overage, 0)
    UNION ALL
    SELECT 'account debt equals its ledger rows', a.account_id,
           format('stored %s, ledger %s', a.debt, coalesce(dl.debt, 0))
      FROM credits.accounts a
      LEFT JOIN debt_ledger dl ON dl.account_id = a.account_id
     WHERE a.debt <> coalesce(dl.debt, 0)
    UNION ALL
    SELECT 'period usage equals the ledger rows of the period', a.account_id,
           format('stored used %s overage %s, ledger used %s overage %s',
                  a.period_used, a.period_overage, coalesce(pu.used, 0), coalesce(pu.overage, 0))
      FROM credits.accounts a
      LEFT JOIN period_usage pu ON pu.account_id = a.account_id
     WHERE (a.period_used <> coalesce(pu.used, 0) OR a.period_overage <> coalesce(pu.overage, 0))
       AND NOT a.byok
    UNION ALL
    SELECT 'account is within its limits', a.account_id,
           format('held %s of balance %s, overage %s + held %s, allowance %s',
                  a.held, a.balance, a.period_overage, a.overage_held,
                  CASE WHEN coalesce(a.limit_mode, p.limit_mode) = 'soft' THEN coalesce(a.soft_limit, p.soft_limit) ELSE 0 END)
      FROM credits.accounts a LEFT JOIN credits.plans p ON p.plan_id = a.plan_id
     WHERE a.held > a.balance OR a.held < 0 OR a.period_overage < 0
    UNION ALL
    SELECT 'account plan exists', a.account_id, format('plan "%s" is not in credits.plans', a.plan_id)
      FROM credits.accounts a
     WHERE NOT EXISTS (SELECT 1 FROM credits.plans p WHERE p.plan_id = a.plan_id)
    UNION ALL
    SELECT 'stored values are valid', x.account_id, x.detail
      FROM (SELECT a.account_id, format('account: overage %s, overage held %s, debt %s, limit_mode %s, soft_limit %s, period %s - %s',
                   a.period_overage, a.overage_held, a.debt, a.limit_mode, a.soft_limit, a.period_start, a.period_end) AS detail
              FROM credits.accounts a
             WHERE a.period_overage < 0 OR a.overage_held < 0 OR a.debt < 0 OR a.soft_limit < 0
                OR a.limit_mode NOT IN ('hard', 'soft') OR a.period_end <= a.period_start
            UNION ALL
            SELECT b.account_id, format('bucket %s: kind %s, priority %s, amount %s', b.bucket_id, b.kind, b.priority, b.amount)
              FROM credits.buckets b
             WHERE b.amount < 0 OR (b.kind, b.priority) NOT IN (('allocation', 0), ('rollover', 0), ('topup', 1),
                                                             ('promo', 1), ('pack', 2), ('adjustment', 2))
            UNION ALL
            SELECT r.account_id, format('reservation %s: status %s, amount %s, refunded %s of %s',
                                        r.reservation_id, r.status, r.amount, r.refunded, r.charged)
              FROM credits.reservations r
             WHERE r.status NOT IN ('pending', 'committed', 'released', 'expired') OR r.amount <= 0
                OR r.overage < 0 OR r.debt < 0 OR r.refunded < 0 OR r.refunded > coalesce(r.charged, 0)
                OR cardinality(r.draw_buckets) <> cardinality(r.draw_amounts)
            UNION ALL
            SELECT l.account_id, format('ledger row %s: kind %s', l.entry_id, l.kind)
              FROM credits.ledger l
             WHERE l.kind NOT IN ('allocation', 'rollover', 'topup', 'promo', 'pack', 'adjustment', 'plan_change', 'purchase',
                                  'charge', 'overage', 'debt', 'refund', 'overage_refund', 'debt_refund',
                                  'debt_payment', 'expire', 'hold_expired')) x
    UNION ALL
    SELECT 'account next_event is not after anything due', a.account_id,
           format('next_event %s, earliest due %s', a.next_event,
                  least(a.period_end, b.first_expiry, r.first_expiry))
      FROM credits.accounts a
      LEFT JOIN LATERAL (SELECT min(expires_at) AS first_expiry FROM credits.buckets b
                          WHERE b.account_id = a.account_id AND b.balance > b.held AND b.expires_at IS NOT NULL) b ON true
      LEFT JOIN LATERAL (SELECT min(expires_at) AS first_expiry FROM credits.reservations r
                          WHERE r.account_id = a.account_id AND r.status = 'pending') r ON true
     WHERE a.next_event > least(a.period_end, b.first_expiry, r.first_expiry)
    UNION ALL
    SELECT 'reservation state is consistent', r.account_id,
           format('reservation %s (%s): amount %s, draws %s, overage %s, debt %s, charged %s, refunded %s',
                  r.reservation_id, r.status, r.amount,
                  (SELECT coalesce(sum(x), 0) FROM unnest(r.draw_amounts) x), r.overage, r.debt, r.charged, r.refunded)
      FROM credits.reservations r
     WHERE NOT r.byok AND CASE
        WHEN r.status IN ('pending', 'released', 'expired') THEN
             r.charged IS NOT NULL OR r.refunded <> 0 OR r.debt <> 0
             OR r.amount <> (SELECT coalesce(sum(x), 0) FROM unnest(r.draw_amounts) x) + r.overage
        ELSE r.charged IS NULL
             OR r.charged <> (SELECT coalesce(sum(x), 0) FROM unnest(r.draw_amounts) x) + r.overage + r.debt
        END
    UNION ALL
    SELECT 'usage roll-up equals the ledger', coalesce(x.account_id, y.account_id),
           format('%s %s: roll-up used %s overage %s refunded %s, ledger used %s overage %s refunded %s',
                  coalesce(x.day, y.day), coalesce(x.product, y.product), x.used, x.overage, x.refunded,
                  y.used, y.overage, y.refunded)
      FROM credits.usage_rollup x
      FULL JOIN (
            SELECT l.account_id, (l.created_at AT TIME ZONE 'UTC')::date AS day, r.product,
                   coalesce(-sum(l.amount) FILTER (WHERE l.kind IN ('charge', 'debt')), 0) AS used,
                   coalesce(-sum(l.amount) FILTER (WHERE l.kind = 'overage'), 0) AS overage,
                   coalesce(sum(l.amount) FILTER (WHERE l.kind IN ('refund', 'debt_refund', 'overage_refund')), 0) AS refunded,
                   coalesce(sum(l.amount) FILTER (WHERE l.kind = 'overage_refund'), 0) AS overage_refunded
              FROM credits.ledger l
              JOIN credits.reservations r ON r.reservation_id = l.reservation_id AND r.account_id = l.account_id
             WHERE l.kind IN ('charge', 'debt', 'overage', 'refund', 'debt_refund', 'overage_refund')
             GROUP BY 1, 2, 3) y
        ON x.account_id = y.account_id AND x.day = y.day AND x.product = y.product
     WHERE coalesce(x.used, 0) <> coalesce(y.used, 0) OR coalesce(x.overage, 0) <> coalesce(y.overage, 0)
        OR coalesce(x.refunded, 0) <> coalesce(y.refunded, 0)
        OR coalesce(x.overage_refunded, 0) <> coalesce(y.overage_refunded, 0)
    UNION ALL
    SELECT 'usage roll-up counts every commit', coalesce(x.account_id, y.account_id),
           format('%s %s: roll-up %s actions, %s BYOK; reservations %s, %s',
                  coalesce(x.product, y.product), coalesce(x.day::text, 'any day'), x.actions, x.byok_used,
                  y.actions, y.byok_used)
      FROM (SELECT account_id, product, day, actions, NULL::numeric AS byok_used FROM credits.usage_rollup
            UNION ALL
            SELECT account_id, product, NULL, NULL, sum(byok_used) FROM credits.usage_rollup GROUP BY 1, 2) x
      FULL JOIN (SELECT account_id, product, (resolved_at AT TIME ZONE 'UTC')::date AS day, count(*) AS actions,
                        NULL::numeric AS byok_used
                   FROM credits.reservations WHERE status = 'committed' GROUP BY 1, 2, 3
                 UNION ALL
                 SELECT account_id, product, NULL, NULL, sum(charged - refunded)
                   FROM credits.reservations WHERE status = 'committed' AND byok GROUP BY 1, 2) y
        ON x.account_id = y.account_id AND x.product = y.product AND x.day IS NOT DISTINCT FROM y.day
       AND (x.actions IS NULL) = (y.actions IS NULL)
     WHERE coalesce(x.actions, 0) <> coalesce(y.actions, 0) OR coalesce(x.byok_used, 0) <> coalesce(y.byok_used, 0)
    UNION ALL
    SELECT 'ledger hash chain is intact', x.account_id,
           format('entry %s: seq %s (expected %s), hash %s', x.entry_id, x.seq, x.n,
                  CASE WHEN x.hash = x.expected THEN 'ok' ELSE 'does not match its content and predecessor' END)
      FROM (SELECT (c.l).account_id, (c.l).entry_id, (c.l).seq, (c.l).hash, c.n,
                   credits._ledger_hash(coalesce(c.prev, ''), credits._ledger_content(c.l)) AS expected
              FROM (SELECT l, lag(l.hash) OVER w AS prev, row_number() OVER w AS n
                      FROM credits.ledger l
                    WINDOW w AS (PARTITION BY l.account_id ORDER BY l.entry_id)) c) x
     WHERE x.seq <> x.n OR x.hash <> x.expected
    UNION ALL
    SELECT 'committed charges equal their ledger rows', r.account_id,
           format('reservation %s: charged %s, refunded %s, ledger %s', r.reservation_id, r.charged, r.refunded,
                  coalesce(lr.amount, 0))
      FROM credits.reservations r
      LEFT JOIN reservation_ledger lr ON lr.account_id = r.account_id AND lr.reservation_id = r.reservation_id
     WHERE r.status = 'committed' AND NOT r.byok AND r.charged - r.refunded <> coalesce(lr.amount, 0)
    UNION ALL
    SELECT 'account products_off copies its switched-off products', a.account_id,
           format('products_off %s, switched off %s', coalesce(a.products_off::text, 'NULL'), coalesce(o.off::text, 'NULL'))
      FROM credits.accounts a
      CROSS JOIN LATERAL (SELECT credits._products_off(a.account_id) AS off) o
     WHERE a.products_off IS DISTINCT FROM o.off
    UNION ALL
    -- Postgres does not track bindings as dependencies of a role: a role
    -- dropped without credits_account_unbind leaves its OID behind, which
    -- a role made later could be given.
    SELECT 'bindings name existing roles', ar.account_id,
           format('role OID %s is bound to the account but names no role', ar.role_id::oid)
      FROM credits.account_roles ar
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = ar.role_id::oid)
    )
    -- A caller bound to accounts is told about its accounts only.
    SELECT v.invariant, v.account_id, v.detail FROM violations v WHERE credits._may_touch(v.account_id)
$$;

-- Retention: acknowledged events are only history once handled, and the
-- table would otherwise grow by every alert and recharge request forever.
-- Deletes the events acknowledged more than older_than ago and, only when
-- asked (a deployment that consumes no events, or not these kinds), the
-- unacknowledged ones created more than older_than ago. Rows that another
-- session holds locked (a claim or an ack in flight) are skipped, so a purge
-- never waits for a consumer and never deadlocks with one; the next run
-- takes them. A caller bound to accounts purges only their events.
CREATE FUNCTION public.credits_events_purge(
    older_than     interval DEFAULT '30 days',
    unacknowledged boolean DEFAULT false,
    kinds          text[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_cutoff timestamptz;
    n        bigint;
BEGIN
    PERFORM credits._required(credits_events_purge.older_than IS NULL, 'older_than');
    PERFORM credits._required(credits_events_purge.unacknowledged IS NULL, 'unacknowledged');
    IF credits_events_purge.older_than < interval '0' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'older_than must not be negative',
            DETAIL = format('older_than is %s.', credits_events_purge.older_than),
            HINT = 'Pass how old a handled event must be to go, such as ''30 days''; ''0'' purges every acknowledged event.';
    END IF;
    BEGIN
        v_cutoff := credits._now() - credits_events_purge.older_than;
    EXCEPTION WHEN datetime_field_overflow THEN
        -- Before the first day timestamptz knows: no event is that old.
        RETURN 0;
    END;
    WITH doomed AS (
        SELECT e.event_id, e.account_id FROM credits.events e
         WHERE (e.acked_at <= v_cutoff
                OR (credits_events_purge.unacknowledged AND e.acked_at IS NULL AND e.created_at <= v_cutoff))
           AND (credits_events_purge.kinds IS NULL OR e.kind = ANY (credits_events_purge.kinds))
           -- The binding rule of credits._may_touch(), evaluated once per
           -- purge (as the row-level security policies do), not per event.
           AND ((SELECT credits._sees_all()) OR e.account_id = ANY ((SELECT credits._bound_accounts())::text[]))
           FOR UPDATE SKIP LOCKED
    )
    DELETE FROM credits.events e
     USING doomed d
     WHERE e.event_id = d.event_id AND e.account_id = d.account_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION public.credits_events_purge(interval, boolean, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.credits_events_purge(interval, boolean, text[]) TO credits_admin;
COMMENT ON FUNCTION public.credits_events_purge(interval, boolean, text[]) IS
    'Deletes events acknowledged more than older_than ago (and unacknowledged ones created before then, if asked). Returns how many.';

-- The views' clock: credits._now(), declared STABLE. Postgres does not
-- merge a view whose columns call a VOLATILE function into the query that
-- reads it, so "the last 20 actions of an account" would read and sort
-- every reservation of the account instead of 20 rows of
-- reservations_by_account_time, and a page of the usage ring would compute
-- every account's state. A read needs no more than STABLE: nothing here
-- writes, and whether a hold shows as expired may use any moment of the
-- query. Every view reads the clock through it, never credits._now().
CREATE FUNCTION credits._now_stable() RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN credits._now();
END
$$;

-- The usage ring: one row per account, in its rolled-forward state. (The
-- account columns come from the table so that a WHERE on them reaches the
-- index before the per-account function runs.)
CREATE OR REPLACE VIEW credits.account_summary WITH (security_invoker = true) AS
SELECT a.account_id, a.plan_id, a.byok, s.limit_mode, s.soft_limit AS soft_allowance,
       trim_scale(s.allocation) AS allocation, trim_scale(s.used) AS used,
       CASE WHEN s.allocation > 0 THEN round(100 * s.used / s.allocation, 2) END AS percent_used,
       trim_scale(s.reserved) AS reserved, trim_scale(s.available) AS available,
       trim_scale(s.overage) AS overage, trim_scale(s.overage_available) AS overage_available,
       trim_scale(s.debt) AS debt, s.period_start, s.period_end, s.period_end AS next_reset,
       s.days_until_reset, s.override_until
  FROM credits.accounts a,
       LATERAL credits._account_state(a.account_id, credits._now_stable()) s;

-- The per-action log: one row per reservation. Failed actions show as refunded.
CREATE OR REPLACE VIEW credits.actions WITH (security_invoker = true) AS
SELECT r.reservation_id, r.account_id, r.created_at, r.resolved_at, r.product, r.action,
       CASE WHEN r.status = 'released' THEN 'refunded'
            WHEN r.status = 'committed' AND r.refunded > 0 AND r.refunded = r.charged THEN 'refunded'
            WHEN r.status = 'committed' AND r.refunded > 0 THEN 'partially_refunded'
            WHEN r.status = 'pending' AND r.expires_at <= credits._now_stable() THEN 'expired'
            ELSE r.status END AS status,
       trim_scale(r.amount) AS reserved, trim_scale(coalesce(r.charged, 0)) AS charged,
       trim_scale(r.refunded) AS refunded, trim_scale(coalesce(r.charged, 0) - r.refunded) AS net,
       -- What a pending hold holds past the buckets, what a commit charged
       -- past them; nothing for a hold released or expired uncommitted.
       trim_scale(CASE WHEN r.status = 'committed' OR (r.status = 'pending' AND r.expires_at > credits._now_stable())
                       THEN r.overage ELSE 0 END) AS overage, r.byok, r.expires_at,
       r.metadata->>'project' AS project, r.metadata->>'session' AS session, r.metadata
  FROM credits.reservations r;

-- Counters for scraping (Prometheus exporters, Grafana): totals per account
-- and product since the beginning, with the time of the scrape.
CREATE OR REPLACE VIEW credits.metrics WITH (security_invoker = true) AS
SELECT account_id, product, sum(actions)::bigint AS actions_total,
       trim_scale(sum(used)) AS used_total, trim_scale(sum(overage)) AS overage_total,
       trim_scale(sum(refunded)) AS refunded_total, trim_scale(sum(billable_overage)) AS billable_overage_total,
       trim_scale(sum(byok_used)) AS byok_used_total, credits._now_stable() AS scrape_time
  FROM credits.usage_rollup
 GROUP BY account_id, product;
REVOKE ALL ON FUNCTION credits._now_stable() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits._now_stable() TO credits_reader, credits_app, credits_admin;

-- Consumption order: a period's allocation before its rollover.
DROP INDEX credits.buckets_consumption_order;
CREATE INDEX buckets_consumption_order
    ON credits.buckets (account_id, priority, expires_at, created_at, kind, bucket_id);

CREATE OR REPLACE FUNCTION credits._draw(
    p_account text, p_amount numeric, p_now timestamptz, p_hold boolean,
    OUT buckets uuid[], OUT amounts numeric[], OUT total numeric)
LANGUAGE plpgsql
AS $$
DECLARE
    b    record;
    take numeric;
BEGIN
    buckets := '{}';
    amounts := '{}';
    total := 0;
    FOR b IN
        SELECT bucket_id, balance - held AS free
          FROM credits.buckets
         WHERE account_id = p_account AND balance > held
           AND (expires_at IS NULL OR expires_at > p_now)
         ORDER BY priority, expires_at, created_at, kind, bucket_id
    LOOP
        take := least(b.free, p_amount - total);
        IF p_hold THEN
            UPDATE credits.buckets SET held = held + take
             WHERE account_id = p_account AND bucket_id = b.bucket_id;
        ELSE
            UPDATE credits.buckets SET balance = balance - take
             WHERE account_id = p_account AND bucket_id = b.bucket_id;
        END IF;
        buckets := buckets || b.bucket_id;
        amounts := amounts || take;
        total := total + take;
        EXIT WHEN total = p_amount;
    END LOOP;
END
$$;

-- Reads of an account with nothing due: its stored row.
CREATE OR REPLACE FUNCTION credits._live_buckets(p_account text, p_now timestamptz)
RETURNS TABLE (bucket_id uuid, kind text, priority smallint, amount numeric, remaining numeric,
               held numeric, expires_at timestamptz, created_at timestamptz, metadata jsonb)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM credits.accounts a WHERE a.account_id = p_account AND a.next_event > p_now) THEN
        RETURN QUERY
        SELECT b.bucket_id, b.kind, b.priority, b.amount, b.balance - b.held, b.held, b.expires_at, b.created_at,
               b.metadata
          FROM credits.buckets b
         WHERE b.account_id = p_account AND (b.balance > 0 OR b.held > 0);
        RETURN;
    END IF;
    RETURN QUERY
    SELECT x.id, x.kind, x.priority, CASE WHEN x.new THEN x.amount ELSE b.amount END,
           x.balance - x.held, x.held, x.expires_at, x.created_at, coalesce(b.metadata, '{}')
      FROM jsonb_to_recordset(credits._roll_plan(credits._roll_input(p_account, p_now)) -> 'buckets')
           AS x(id uuid, kind text, priority smallint, amount numeric, balance numeric, held numeric,
                expires_at timestamptz, created_at timestamptz, new boolean)
      LEFT JOIN credits.buckets b ON b.account_id = p_account AND b.bucket_id = x.id
     WHERE x.balance > 0 OR x.held > 0;
END
$$;

CREATE OR REPLACE FUNCTION credits._account_state(p_account text, p_now timestamptz)
RETURNS TABLE (account_id text, plan_id text, byok boolean, limit_mode text, soft_limit numeric,
               allocation numeric, used numeric, overage numeric, reserved numeric, available numeric,
               overage_available numeric, debt numeric, period_start timestamptz, period_end timestamptz,
               days_until_reset integer, override_until timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    a       credits.accounts;
    p       credits.plans;
    v       jsonb;
    v_mode  text;
    v_soft  numeric;
    v_roll  boolean;
    v_end   timestamptz;
    v_held  numeric;
    v_free  numeric;
    v_ov_held numeric;
    v_debt  numeric;
    v_start timestamptz;
BEGIN
    SELECT * INTO a FROM credits.accounts WHERE account_id = p_account;
    IF NOT FOUND THEN
        PERFORM credits._unknown_account(p_account);
    END IF;
    SELECT * INTO p FROM credits.plans WHERE plan_id = a.plan_id;
    IF a.next_event > p_now THEN
        -- Nothing is due (next_event is a lower bound of the period end
        -- and of every expiry, a credits_verify() invariant): the stored
        -- row is the state, and the plan would change nothing (0.3.5).
        v_roll := false;
        v_end := a.period_end;
        v_held := a.held;
        v_free := a.balance - a.held;
        v_ov_held := a.overage_held;
        v_debt := a.debt;
        v_start := a.period_start;
    ELSE
        v := credits._roll_plan(credits._roll_input(p_account, p_now));
        v_roll := (v->>'rolled')::integer > 0;
        v_end := (v->>'period_end')::timestamptz;
        SELECT coalesce(sum(x.held), 0), coalesce(sum(x.balance - x.held), 0) INTO v_held, v_free
          FROM jsonb_to_recordset(v->'buckets') AS x(balance numeric, held numeric);
        v_ov_held := a.overage_held - (v->>'overage_released')::numeric;
        v_debt := (v->>'debt')::numeric;
        v_start := (v->>'period_start')::timestamptz;
    END IF;
    SELECT l.mode, l.soft INTO v_mode, v_soft FROM credits._limit(a, p_now) l;
    RETURN QUERY
    SELECT a.account_id, a.plan_id, a.byok, v_mode, v_soft,
           CASE WHEN a.byok THEN 0
                WHEN v_roll THEN p.allocation
                ELSE coalesce((SELECT b.amount FROM credits.buckets b
                                WHERE b.account_id = p_account AND b.kind = 'allocation' AND b.expires_at = a.period_end
                                ORDER BY b.created_at DESC LIMIT 1), p.allocation) END,
           CASE WHEN v_roll THEN 0 ELSE a.period_used END,
           CASE WHEN v_roll THEN 0 ELSE a.period_overage END,
           v_held + v_ov_held,
           v_free,
           greatest(v_soft - CASE WHEN v_roll THEN 0 ELSE a.period_overage END - v_ov_held, 0),
           v_debt, v_start, v_end,
           greatest(ceil(extract(epoch FROM v_end - p_now) / 86400), 0)::integer,
           CASE WHEN a.override_until > p_now THEN a.override_until END;
END
$$;

CREATE FUNCTION credits._notify_enabled() RETURNS bool
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_notify_enabled_wrapper';
REVOKE ALL ON FUNCTION credits._notify_enabled() FROM PUBLIC;

CREATE OR REPLACE FUNCTION credits._emit(p_account text, p_kind text, p_payload jsonb, p_now timestamptz) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO credits.events (account_id, kind, payload, created_at, visible_at)
    VALUES (p_account, p_kind, p_payload, p_now, p_now)
    RETURNING event_id INTO v_id;
    -- credits.notify = off (src/notify.rs): no NOTIFY, so that the
    -- transaction can still be prepared for two-phase commit.
    IF credits._notify_enabled() THEN
        PERFORM pg_catalog.pg_notify('credits_events', p_kind);
    END IF;
    RETURN v_id;
END
$$;

CREATE OR REPLACE FUNCTION public.credits_grant(
    account_id      text,
    amount          numeric,
    kind            text DEFAULT 'topup',
    expires_at      timestamptz DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    metadata        jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account  text    := credits._ident(credits_grant.account_id, 'account_id', 255);
    v_amount   numeric := credits._amount(credits_grant.amount, 'amount', false);
    v_kind     text    := credits._choice(credits_grant.kind, 'kind', '{topup,pack,promo,adjustment}');
    v_expires  timestamptz := credits_grant.expires_at;
    v_key      text := CASE WHEN credits_grant.idempotency_key IS NULL THEN NULL
                            ELSE credits._ident(credits_grant.idempotency_key, 'idempotency_key', 255) END;
    v_metadata jsonb := credits._metadata(credits_grant.metadata);
    v_request  jsonb;
    v_result   text;
    v_now      timestamptz;
    a          credits.accounts;
    nb         record;
BEGIN
    IF v_expires IS NOT NULL AND v_kind <> 'promo' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('expires_at is only for promo grants, not %s', v_kind),
            DETAIL = 'Top-ups expire at the next reset; packs and adjustments never expire.',
            HINT = 'Leave expires_at out, or grant kind => ''promo''.';
    END IF;
    v_request := jsonb_build_object('amount', v_amount, 'kind', v_kind, 'expires_at', v_expires, 'metadata', v_metadata);
    a := credits._lock_account(v_account);
    v_now := credits._now();
    v_result := credits._idempotent_result(v_account, 'grant', v_key, v_request);
    IF v_result IS NOT NULL THEN
        RETURN v_result::uuid;
    END IF;
    IF a.byok THEN
        RAISE EXCEPTION USING ERRCODE = 'CR014',
            MESSAGE = format('account "%s" is BYOK', v_account),
            DETAIL = 'BYOK accounts bring their own keys: they have no allocation and no buckets.',
            HINT = 'Switch the account off BYOK with credits_account_upsert(byok => false) to give it credits.';
    END IF;
    IF v_kind = 'topup' OR (v_kind = 'promo' AND v_expires IS NULL) THEN
        v_expires := a.period_end;
    ELSIF v_kind = 'promo' AND (NOT isfinite(v_expires) OR v_expires <= v_now) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'expires_at must be a finite time in the future',
            DETAIL = format('expires_at is %s, now is %s.', v_expires, v_now),
            HINT = 'Pass a later expires_at, or leave it out to expire at the next reset.';
    ELSIF v_kind = 'promo' AND extract(year FROM v_expires AT TIME ZONE 'UTC') >= 10000 THEN
        -- The reset planner reads bucket expiries back as ISO 8601 text,
        -- four-digit years: a bucket expiring in year 10000 or later left
        -- its account unable to roll forward (0.3.5).
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'expires_at must be before the year 10000',
            DETAIL = format('expires_at is %s.', v_expires),
            HINT = 'Pass an expiry before 10000-01-01, or grant kind => ''pack'' for credits that never expire.';
    END IF;

    PERFORM credits._room_check(v_account, v_amount, v_kind IN ('pack', 'adjustment') OR v_expires > a.period_end);
    SELECT * INTO nb FROM credits._new_bucket(v_account, v_kind, v_amount, v_expires, v_now, a.debt, v_key, v_metadata);
    UPDATE credits.accounts
       SET balance = balance + v_amount - nb.settled, debt = debt - nb.settled,
           next_event = least(next_event, v_expires)
     WHERE account_id = v_account;
    PERFORM credits._idempotent_store(v_account, 'grant', v_key, v_request, nb.bucket_id::text, v_now);
    RETURN nb.bucket_id;
END
$$;

UPDATE credits.buckets SET expires_at = '9999-12-31 23:59:59.999999+00'
 WHERE extract(year FROM expires_at AT TIME ZONE 'UTC') >= 10000;
UPDATE credits.accounts
   SET billing_anchor = billing_anchor + make_interval(
           years => 9999 - extract(year FROM billing_anchor AT TIME ZONE 'UTC')::integer)
 WHERE extract(year FROM billing_anchor AT TIME ZONE 'UTC') >= 10000;
-- A BC year y reads as -y here, and Postgres counts 1 BC as year 0:
-- adding -y years lands in year 1.
UPDATE credits.accounts
   SET billing_anchor = billing_anchor + make_interval(
           years => -extract(year FROM billing_anchor AT TIME ZONE 'UTC')::integer)
 WHERE extract(year FROM billing_anchor AT TIME ZONE 'UTC') < 1;

ALTER TABLE credits.account_roles ALTER COLUMN role_id TYPE regrole USING role_id::regrole;

CREATE INDEX account_roles_by_role ON credits.account_roles (role_id);

CREATE FUNCTION credits._roles_of(p_role text) RETURNS regrole[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN ARRAY(
        WITH RECURSIVE member_of(oid) AS (
            SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = p_role
            UNION
            SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN member_of ON m.member = member_of.oid
        )
        SELECT member_of.oid::regrole FROM member_of);
END
$$;
REVOKE ALL ON FUNCTION credits._roles_of(text) FROM PUBLIC;

-- The accounts bound to p_role or to a role it is a member of.
CREATE OR REPLACE FUNCTION credits._bindings_of(p_role text)
RETURNS TABLE (account_id text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY
    SELECT ar.account_id FROM credits.account_roles ar WHERE ar.role_id = ANY (credits._roles_of(p_role));
END
$$;

-- Whether the caller (credits._actor(): the session's role, or the one it
-- SET ROLE to) sees every account: superusers, and roles bound to nothing
-- (the first binding of one of its roles settles it).
-- SECURITY DEFINER: the row-level security policies call it, and it reads
-- credits.account_roles, which has a policy of its own.
CREATE OR REPLACE FUNCTION credits._sees_all() RETURNS boolean
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
DECLARE
    v_actor text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM credits.account_roles) THEN
        RETURN true;
    END IF;
    v_actor := credits._actor();
    RETURN coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = v_actor), false)
        OR NOT EXISTS (SELECT 1 FROM credits.account_roles ar WHERE ar.role_id = ANY (credits._roles_of(v_actor)));
END
$$;

-- The accounts bound to the caller's roles: the row-level security
-- policies compare each row with it, once per query.
CREATE OR REPLACE FUNCTION credits._bound_accounts() RETURNS text[]
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT coalesce(array_agg(DISTINCT b.account_id), '{}') FROM credits._bindings_of(credits._actor()) b);
END
$$;

-- Whether the caller of an API function may touch p_account: no account is
-- bound at all (one probe of an empty table), or p_account is bound to one
-- of the caller's roles (asked first: a bound application's usual case,
-- which then finds the caller's roles once), or the caller sees every
-- account (credits._sees_all(): a superuser, a role bound to nothing). Every write path and
-- the fast paths ask it (src/fast_path.rs, may_touch!) about one account,
-- so it probes that account's bindings by key instead of listing the
-- caller's accounts (until 0.3.5 it did, with credits._bound_accounts(): a
-- role bound to 10,000 accounts paid 13 ms per reserve + commit). Only the
-- SECURITY DEFINER API functions call it, as the owner.
CREATE OR REPLACE FUNCTION credits._may_touch(p_account text) RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN NOT EXISTS (SELECT 1 FROM credits.account_roles)
        OR EXISTS (SELECT 1 FROM credits.account_roles ar
                    WHERE ar.account_id = p_account AND ar.role_id = ANY (credits._roles_of(credits._actor())))
        OR credits._sees_all();
END
$$;

CREATE OR REPLACE FUNCTION public.credits_account_bind(account_id text, role regrole) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits._ident(credits_account_bind.account_id, 'account_id', 255);
BEGIN
    PERFORM credits._required(credits_account_bind.role IS NULL, 'role');
    PERFORM credits._require_unbound('credits_account_bind');
    -- A regrole can hold an OID that names no role ('-' is 0, and any
    -- number casts): such a binding would bind nothing, and credits_verify()
    -- reports it. (Unbinding takes any OID, to remove what a dropped role
    -- left behind.)
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = credits_account_bind.role::oid) THEN
        RAISE EXCEPTION USING ERRCODE = '42704',
            MESSAGE = format('role with OID %s does not exist', credits_account_bind.role::oid),
            DETAIL = 'Only an existing role can be bound to an account.',
            HINT = 'Pass the role''s name, such as ''app_acme''.';
    END IF;
    PERFORM credits._lock_account(v_account);
    INSERT INTO credits.account_roles (account_id, role_id, created_at)
    VALUES (v_account, credits_account_bind.role, credits._now())
    ON CONFLICT DO NOTHING;
END
$$;

DROP FUNCTION public.credits_account_unbind(text, regrole);
CREATE FUNCTION public.credits_account_unbind(account_id text, role regrole, last_binding boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits._ident(credits_account_unbind.account_id, 'account_id', 255);
    v_role    name;
    v_reach   regrole[];
BEGIN
    PERFORM credits._required(credits_account_unbind.role IS NULL, 'role');
    PERFORM credits._required(credits_account_unbind.last_binding IS NULL, 'last_binding');
    PERFORM credits._require_unbound('credits_account_unbind');
    PERFORM credits._lock_account(v_account);
    -- The roles whose bindings keep the role bound: itself and the roles
    -- it is a member of (none but itself for a dropped role's OID). Their
    -- bindings are locked, after the account, in one order: two
    -- unbindings from two accounts take turns, so that the second sees
    -- the first's and both cannot remove the last.
    SELECT r.rolname INTO v_role FROM pg_catalog.pg_roles r WHERE r.oid = credits_account_unbind.role::oid;
    v_reach := credits._roles_of(v_role) || credits_account_unbind.role;
    PERFORM 1 FROM credits.account_roles ar WHERE ar.role_id = ANY (v_reach)
     ORDER BY ar.account_id, ar.role_id FOR UPDATE;
    DELETE FROM credits.account_roles WHERE account_id = v_account AND role_id = credits_account_unbind.role;
    -- A role bound to no account (itself or through a role it is a member
    -- of) sees and touches every account: removing an existing role's last
    -- binding would widen what it reaches, not narrow it, so it takes
    -- last_binding => true. (A dropped role's leftover binding goes
    -- without it.)
    IF FOUND AND NOT credits_account_unbind.last_binding AND v_role IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM credits.account_roles ar WHERE ar.role_id = ANY (v_reach)) THEN
        RAISE EXCEPTION USING ERRCODE = 'CR019',
            MESSAGE = format('account "%s" is the last one bound to role "%s"', v_account, credits_account_unbind.role),
            DETAIL = 'A role bound to no account sees and touches every account: without this binding the role would reach them all.',
            HINT = 'Bind the role to its next account first. To retire the role, revoke credits_app, credits_reader and '
                   || 'credits_admin from it, then pass last_binding => true (as to let it reach every account).';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION public.credits_account_unbind(text, regrole, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.credits_account_unbind(text, regrole, boolean) TO credits_admin;
COMMENT ON FUNCTION public.credits_account_unbind(text, regrole, boolean) IS
    'Removes a binding of an account to a role; a role''s last binding only with last_binding => true (a role bound to no account reaches every account).';

-- The most an account holds: its stored figures are numeric(20,6). A write
-- that adds credits (a grant, a purchase) or raises what a reset grants (a
-- plan's allocation or rollover cap, a change of plan) is refused (22003)
-- when the account could then not be rolled forward: its next reset keeps
-- the buckets that outlive the period, carries up to the rollover cap of
-- what is left of the allocation and rollover, and grants the allocation,
-- and the sum must fit. Until 0.3.5 nothing checked it: the reset failed
-- with 22003, and so did every write path on the account, each of which
-- rolls it forward first (and, until credits_maintenance learned to set
-- such accounts aside, every maintenance run). p_add: the credits the write
-- adds; p_outlives: whether they outlive the current period. The plan row
-- is read FOR SHARE, so that a credits_plan_upsert raising it waits for
-- this write, and then finds its buckets.
CREATE FUNCTION credits._room_check(p_account text, p_add numeric, p_outlives boolean)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_max CONSTANT numeric := 99999999999999.999999;
    a credits.accounts;
    p credits.plans;
    v_outliving numeric;
    v_unused numeric;
BEGIN
    SELECT * INTO a FROM credits.accounts WHERE account_id = p_account;
    SELECT * INTO p FROM credits.plans WHERE plan_id = a.plan_id FOR SHARE;
    IF a.balance + p_add > v_max THEN
        RAISE EXCEPTION USING ERRCODE = '22003',
            MESSAGE = format('account "%s" cannot hold more credits', p_account),
            DETAIL = format('Its balance of %s and the %s added would pass %s, the most an account holds.',
                            trim_scale(a.balance), trim_scale(p_add), v_max),
            HINT = 'Add fewer credits.';
    END IF;
    IF a.byok THEN
        RETURN;
    END IF;
    SELECT coalesce(sum(b.balance) FILTER (WHERE b.expires_at IS NULL OR b.expires_at > a.period_end), 0),
           coalesce(sum(b.balance) FILTER (WHERE b.kind IN ('allocation', 'rollover') AND b.expires_at <= a.period_end), 0)
      INTO v_outliving, v_unused
      FROM credits.buckets b
     WHERE b.account_id = p_account;
    IF p_outlives THEN
        v_outliving := v_outliving + p_add;
    END IF;
    IF v_outliving + least(p.rollover_cap, v_unused) + p.allocation > v_max THEN
        RAISE EXCEPTION USING ERRCODE = '22003',
            MESSAGE = format('account "%s" would not fit its next reset', p_account),
            DETAIL = format('At the reset on %s it would keep %s that outlive the period, carry up to %s and get the %s of plan "%s": '
                            'more than %s, the most an account holds.',
                            to_char(a.period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD'), trim_scale(v_outliving),
                            trim_scale(least(p.rollover_cap, v_unused)), trim_scale(p.allocation), p.plan_id, v_max),
            HINT = 'Add fewer credits, or put the account on a plan with a smaller allocation or rollover cap.';
    END IF;
END
$$;

REVOKE ALL ON FUNCTION credits._room_check(text, numeric, boolean) FROM PUBLIC;

CREATE OR REPLACE FUNCTION public.credits_purchase(account_id text, pack text, payment_ref text) RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits._ident(credits_purchase.account_id, 'account_id', 255);
    v_pack    text := credits._ident(credits_purchase.pack, 'pack', 255);
    v_ref     text := credits._ident(credits_purchase.payment_ref, 'payment_ref', 255);
    v_now     timestamptz;
    v_auto    boolean;
    a         credits.accounts;
    pk        credits.packs;
    pu        credits.purchases;
    rq        credits.recharge_requests;
    nb        record;
BEGIN
    a := credits._lock_account(v_account);
    v_now := credits._now();
    SELECT * INTO pu FROM credits.purchases WHERE account_id = v_account AND payment_ref = v_ref;
    IF FOUND THEN
        IF pu.pack_id <> v_pack THEN
            RAISE EXCEPTION USING ERRCODE = 'CR006',
                MESSAGE = format('payment_ref "%s" was already used for pack "%s"', v_ref, pu.pack_id),
                DETAIL = format('Account "%s" bought pack "%s" with it; this call asks for pack "%s".', v_account, pu.pack_id, v_pack),
                HINT = 'Each payment buys one pack: use the payment''s own reference.';
        END IF;
        RETURN pu.bucket_id;
    END IF;
    -- A payment_ref equal to a recharge request's id completes it (also a
    -- failed one: the payment went through after all), with the pack, the
    -- credits and the price that its event asked the payment worker for,
    -- whatever became of the pack, the plan or the account's BYOK switch
    -- since (a BYOK account keeps its packs for when it is switched back):
    -- the payment may already have been taken.
    SELECT * INTO rq FROM credits.recharge_requests r
     WHERE r.account_id = v_account AND r.request_id::text = v_ref AND r.status IN ('pending', 'failed');
    IF FOUND AND rq.pack_id <> v_pack THEN
        RAISE EXCEPTION USING ERRCODE = 'CR006',
            MESSAGE = format('payment_ref "%s" is a recharge request for pack "%s"', v_ref, rq.pack_id),
            DETAIL = format('The request asks for pack "%s" (%s credits for %s %s); this call buys pack "%s".',
                            rq.pack_id, trim_scale(rq.credits), trim_scale(rq.price), rq.currency, v_pack),
            HINT = 'Complete the request with its own pack, or buy another pack with the payment''s own reference.';
    ELSIF FOUND THEN
        pk.pack_id := rq.pack_id;
        pk.credits := rq.credits;
        pk.price := rq.price;
        pk.currency := rq.currency;
    ELSE
        SELECT * INTO pk FROM credits.packs WHERE pack_id = v_pack AND active;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'CR016',
                MESSAGE = format('unknown pack "%s"', v_pack),
                DETAIL = 'No active pack has this pack_id.',
                HINT = 'Create it with credits_pack_upsert(), or pass an active pack.';
        END IF;
        IF NOT (SELECT p.purchases_allowed FROM credits.plans p WHERE p.plan_id = a.plan_id) THEN
            RAISE EXCEPTION USING ERRCODE = 'CR010',
                MESSAGE = format('purchases are not allowed on plan "%s"', a.plan_id),
                DETAIL = format('Account "%s" is on a plan without purchases.', v_account),
                HINT = 'Upgrade the account to a plan that allows purchases.';
        END IF;
        IF a.byok THEN
            RAISE EXCEPTION USING ERRCODE = 'CR014',
                MESSAGE = format('account "%s" is BYOK', v_account),
                DETAIL = 'BYOK accounts bring their own keys: they have no allocation and no buckets.',
                HINT = 'Switch the account off BYOK with credits_account_upsert(byok => false) to give it credits.';
        END IF;
    END IF;

    PERFORM credits._room_check(v_account, pk.credits, true);
    SELECT * INTO nb FROM credits._new_bucket(v_account, 'pack', pk.credits, NULL, v_now, a.debt, v_ref,
        jsonb_build_object('pack', v_pack, 'payment_ref', v_ref, 'price', pk.price, 'currency', pk.currency), 'purchase');
    UPDATE credits.accounts SET balance = balance + pk.credits - nb.settled, debt = debt - nb.settled
     WHERE account_id = v_account;
    -- The recharge request found above, if any, is completed by this purchase.
    v_auto := rq.request_id IS NOT NULL;
    IF v_auto THEN
        UPDATE credits.recharge_requests SET status = 'completed', resolved_at = v_now
         WHERE account_id = v_account AND request_id = rq.request_id;
    END IF;
    INSERT INTO credits.purchases (account_id, pack_id, credits, price, currency, payment_ref, bucket_id, auto_recharge, created_at)
    VALUES (v_account, v_pack, pk.credits, pk.price, pk.currency, v_ref, nb.bucket_id, v_auto, v_now);
    -- A pack that left the balance below the threshold (smaller than the
    -- gap, or bought while debt took its credits) is followed by another.
    PERFORM credits._auto_recharge(v_account, v_now);
    RETURN nb.bucket_id;
END
$$;

CREATE OR REPLACE FUNCTION public.credits_plan_upsert(
    plan_id           text,
    allocation        numeric,
    reset             text DEFAULT 'billing_date',
    limit_mode        text DEFAULT 'hard',
    soft_limit        numeric DEFAULT 0,
    rollover_cap      numeric DEFAULT 0,
    overage_rate      numeric DEFAULT 1,
    purchases_allowed boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_plan  text    := credits._ident(credits_plan_upsert.plan_id, 'plan_id', 255);
    v_alloc numeric := credits._amount(credits_plan_upsert.allocation, 'allocation', true);
    v_reset text    := credits._choice(credits_plan_upsert.reset, 'reset', '{billing_date,calendar_month}');
    v_mode  text    := credits._choice(credits_plan_upsert.limit_mode, 'limit_mode', '{hard,soft}');
    v_soft  numeric := credits._amount(credits_plan_upsert.soft_limit, 'soft_limit', true);
    v_cap   numeric := credits._amount(credits_plan_upsert.rollover_cap, 'rollover_cap', true);
    v_rate  numeric := credits._amount(credits_plan_upsert.overage_rate, 'overage_rate', true);
    v_now   timestamptz := credits._now();
    v_max   CONSTANT numeric := 99999999999999.999999;
    v_account text;
BEGIN
    PERFORM credits._required(credits_plan_upsert.purchases_allowed IS NULL, 'purchases_allowed');
    PERFORM credits._require_unbound('credits_plan_upsert');
    -- A new account gets the allocation, and its first reset carries up to
    -- the rollover cap of it and grants it again: both must fit in an
    -- account (credits._room_check).
    IF v_alloc + least(v_cap, v_alloc) > v_max THEN
        RAISE EXCEPTION USING ERRCODE = '22003',
            MESSAGE = format('plan "%s" grants more than an account holds', v_plan),
            DETAIL = format('An allocation of %s with a rollover of up to %s would pass %s, the most an account holds.',
                            trim_scale(v_alloc), trim_scale(least(v_cap, v_alloc)), v_max),
            HINT = 'Pass a smaller allocation or rollover cap.';
    END IF;
    -- An edit applies from each account's next reset. An account whose
    -- period has ended but that nothing has rolled forward yet (no call,
    -- maintenance not yet run) is rolled first, with the plan as it was, as
    -- if on time (credits._lock_account rolls a due account as every write
    -- path does); otherwise its late reset would grant the new allocation
    -- for a period that began before the edit. In account_id order, as
    -- credits_reset() locks them.
    FOR v_account IN
        SELECT a.account_id FROM credits.accounts a
         WHERE a.plan_id = v_plan AND a.period_end <= v_now
         ORDER BY a.account_id
    LOOP
        PERFORM credits._lock_account(v_account);
    END LOOP;
    INSERT INTO credits.plans (plan_id, allocation, reset, limit_mode, soft_limit, rollover_cap,
                               overage_rate, purchases_allowed, created_at, updated_at)
    VALUES (v_plan, v_alloc, v_reset, v_mode, v_soft, v_cap, v_rate,
            credits_plan_upsert.purchases_allowed, v_now, v_now)
    ON CONFLICT (plan_id) DO UPDATE
       SET allocation = EXCLUDED.allocation, reset = EXCLUDED.reset,
           limit_mode = EXCLUDED.limit_mode, soft_limit = EXCLUDED.soft_limit,
           rollover_cap = EXCLUDED.rollover_cap, overage_rate = EXCLUDED.overage_rate,
           purchases_allowed = EXCLUDED.purchases_allowed, updated_at = EXCLUDED.updated_at;
    -- And each of the plan's accounts must still fit its next reset. What
    -- an account keeps and carries is part of its balance, so only accounts
    -- whose balance and the allocation pass the most an account holds need
    -- the exact check (one pass over the accounts: there is no index by plan).
    FOR v_account IN
        SELECT a.account_id FROM credits.accounts a
         WHERE a.plan_id = v_plan AND NOT a.byok AND a.balance + v_alloc > v_max
         ORDER BY a.account_id
    LOOP
        PERFORM credits._room_check(v_account, 0, false);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION public.credits_account_upsert(
    account_id     text,
    plan_id        text DEFAULT NULL,
    billing_anchor timestamptz DEFAULT NULL,
    byok           boolean DEFAULT NULL,
    limit_mode     text DEFAULT NULL,
    soft_limit     numeric DEFAULT NULL,
    override_until timestamptz DEFAULT NULL,
    alert_percents numeric[] DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits._ident(credits_account_upsert.account_id, 'account_id', 255);
    v_plan    text := CASE WHEN credits_account_upsert.plan_id IS NULL THEN NULL
                           ELSE credits._ident(credits_account_upsert.plan_id, 'plan_id', 255) END;
    v_anchor  timestamptz := credits_account_upsert.billing_anchor;
    v_byok    boolean := credits_account_upsert.byok;
    v_mode    text := CASE WHEN credits_account_upsert.limit_mode IS NULL THEN NULL
                           ELSE credits._choice(credits_account_upsert.limit_mode, 'limit_mode', '{hard,soft,plan}') END;
    v_soft    numeric := CASE WHEN credits_account_upsert.soft_limit IS NULL THEN NULL
                              ELSE credits._amount(credits_account_upsert.soft_limit, 'soft_limit', true) END;
    v_until   timestamptz := credits_account_upsert.override_until;
    v_alerts  numeric[] := credits_account_upsert.alert_percents;
    v_now     timestamptz;
    v_end     timestamptz;
    p         credits.plans;
    a         credits.accounts;
    rt        record;
    v_recheck boolean := false;
    v_moves   boolean;
BEGIN
    -- A role bound to accounts changes those accounts only, and creates
    -- none (whether another account exists, it does not learn).
    IF NOT credits._may_touch(v_account) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('account "%s" is not bound to role "%s"', v_account, credits._actor()),
            DETAIL = 'A role bound to accounts may change those accounts only; creating an account needs a role bound to no account.',
            HINT = 'Call it as a credits_admin role bound to no account, or as a superuser.';
    END IF;
    IF v_until IS NOT NULL AND NOT isfinite(v_until) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'override_until must be a finite timestamp',
            DETAIL = format('override_until is %s.', v_until),
            HINT = 'Leave it out for an override without end.';
    END IF;
    IF v_alerts IS NOT NULL AND (array_ndims(v_alerts) > 1
                                 OR EXISTS (SELECT 1 FROM unnest(v_alerts) x WHERE x IS NULL OR x <= 0 OR x > 1000)) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'alert_percents must be a list of percentages above 0 and at most 1000',
            DETAIL = format('alert_percents is %s.', v_alerts),
            HINT = 'Pass percentages of the period allocation, such as {50,80,100}.';
    END IF;
    IF v_anchor IS NOT NULL AND NOT isfinite(v_anchor) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'billing_anchor must be a finite timestamp',
            DETAIL = format('billing_anchor is %s.', v_anchor),
            HINT = 'Pass the date the account''s billing started.';
    END IF;
    IF v_plan IS NOT NULL THEN
        -- Held FOR KEY SHARE until this transaction ends, so that the plan
        -- is not deleted meanwhile (credits._plan_in_use, sql/guards.sql).
        SELECT * INTO p FROM credits.plans WHERE plan_id = v_plan FOR KEY SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'CR003',
                MESSAGE = format('unknown plan "%s"', v_plan),
                DETAIL = 'No plan has this plan_id.',
                HINT = 'Create it first with credits_plan_upsert().';
        END IF;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM credits.accounts WHERE account_id = v_account) THEN
        IF v_plan IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '22004',
                MESSAGE = 'plan_id must not be NULL for a new account',
                DETAIL = format('Account "%s" does not exist yet.', v_account),
                HINT = 'Pass plan_id to create the account.';
        END IF;
        v_now := credits._now();
        v_anchor := coalesce(v_anchor, v_now);
        v_byok := coalesce(v_byok, false);
        v_end := credits._period_after(v_anchor, p.reset, v_now);
        v_alerts := coalesce(v_alerts, '{80,100}');
        INSERT INTO credits.accounts (account_id, plan_id, billing_anchor, byok, limit_mode, soft_limit, override_until,
                                      period_start, period_end, balance, next_event, alert_percents, next_alert_at,
                                      created_at)
        VALUES (v_account, v_plan, v_anchor, v_byok, nullif(v_mode, 'plan'), v_soft, v_until,
                credits._period_start(v_anchor, p.reset, v_now), v_end,
                CASE WHEN v_byok THEN 0 ELSE p.allocation END, v_end, v_alerts,
                credits._next_alert_at(v_alerts, '{}', CASE WHEN v_byok THEN 0 ELSE p.allocation END), v_now)
        ON CONFLICT (account_id) DO NOTHING;
        IF FOUND THEN
            -- The full allocation for the first period, even a partial one.
            IF NOT v_byok AND p.allocation > 0 THEN
                PERFORM credits._new_bucket(v_account, 'allocation', p.allocation, v_end, v_now, 0);
            END IF;
            RETURN;
        END IF;
    END IF;

    a := credits._lock_account(v_account);
    v_now := credits._now();
    IF v_plan IS NULL THEN
        SELECT * INTO p FROM credits.plans WHERE plan_id = a.plan_id;
    END IF;
    -- An override that has ended is forgotten, so that the values given
    -- now start a new one (without end unless override_until is given).
    IF v_mode = 'plan' OR a.override_until <= v_now THEN
        a.limit_mode := NULL;
        a.soft_limit := NULL;
        a.override_until := NULL;
    END IF;
    IF v_mode IS NOT NULL AND v_mode <> 'plan' THEN
        a.limit_mode := v_mode;
    END IF;
    a.soft_limit := coalesce(v_soft, a.soft_limit);
    a.override_until := coalesce(v_until, a.override_until);
    a.alert_percents := coalesce(v_alerts, a.alert_percents);
    v_moves := p.plan_id <> a.plan_id OR v_anchor <> a.billing_anchor;
    a.billing_anchor := coalesce(v_anchor, a.billing_anchor);

    -- Another plan (with its reset rule) or a new anchor moves the end of
    -- the current period (and the expiry of what was due to expire with
    -- it). Nothing else does: an edit of the plan's own reset rule applies
    -- from the next reset (credits_plan_upsert), also for an account whose
    -- alerts or limits are changed meanwhile.
    v_end := credits._period_after(a.billing_anchor, p.reset, v_now);
    IF v_moves AND v_end <> a.period_end THEN
        UPDATE credits.buckets SET expires_at = v_end
         WHERE account_id = v_account AND expires_at = a.period_end;
        a.period_end := v_end;
    END IF;

    -- Plan and BYOK changes take effect at once on the current allocation.
    IF p.plan_id <> a.plan_id OR coalesce(v_byok, a.byok) <> a.byok THEN
        a.plan_id := p.plan_id;
        a.byok := coalesce(v_byok, a.byok);
        -- The new allocation must fit now (and its resets, checked below).
        PERFORM credits._room_check(v_account, CASE WHEN a.byok THEN 0 ELSE p.allocation END, false);
        SELECT * INTO rt FROM credits._retarget_allocation(
            v_account, CASE WHEN a.byok THEN 0 ELSE p.allocation END, a.period_end, a.debt, v_now);
        a.balance := a.balance + rt.delta;
        a.debt := a.debt - rt.settled;
        v_recheck := true;
    END IF;

    UPDATE credits.accounts
       SET plan_id = a.plan_id, billing_anchor = a.billing_anchor, byok = a.byok,
           limit_mode = a.limit_mode, soft_limit = a.soft_limit, override_until = a.override_until,
           period_end = a.period_end, balance = a.balance, debt = a.debt,
           alert_percents = a.alert_percents,
           next_alert_at = credits._next_alert_at(a.alert_percents, a.alerts_raised,
                                                  credits._period_allocation(v_account, a.period_end, a.byok,
                                                                             p.allocation)),
           next_event = credits._next_event(v_account, a.period_end, v_now)
     WHERE account_id = v_account;
    IF v_recheck THEN
        PERFORM credits._room_check(v_account, 0, false);
        -- A plan with a smaller allocation may leave the balance below the
        -- auto-recharge threshold.
        PERFORM credits._auto_recharge(v_account, v_now);
    END IF;
    -- A plan with a smaller allocation, a switch back from BYOK or new
    -- alert percentages may put the period's usage past an alert line:
    -- raised now, not at the next commit (no balance before: no recharge).
    PERFORM credits._after_usage(v_account, NULL, v_now);
END
$$;

-- A hold's ttl and a claim's visibility must end before the year 10000, as
-- a promo grant's expiry must: 22023 with the times. Before, a hold ending
-- in the years 10000 to 294276 was stored, and a longer ttl or visibility
-- failed with timestamptz's bare 22008. The library's reserve fast path
-- leaves a ttl of 1,000 years or more to this general path.
CREATE OR REPLACE FUNCTION credits._reserve(
    account_id      text,
    amount          numeric,
    product         text,
    action          text,
    idempotency_key text,
    ttl             interval,
    metadata        jsonb)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account  text     := _reserve.account_id;
    v_amount   numeric  := _reserve.amount;
    v_product  text     := _reserve.product;
    v_action   text     := _reserve.action;
    v_key      text     := _reserve.idempotency_key;
    v_ttl      interval := _reserve.ttl;
    v_metadata jsonb    := _reserve.metadata;
    v_id       uuid     := gen_random_uuid();
    v_now      timestamptz := credits._now();
    v_request  jsonb;
    v_result   text;
    v_mode     text;
    v_soft     numeric;
    v_free     numeric;
    v_overage  numeric := 0;
    v_allowed  boolean;
    a          credits.accounts;
    d          record;
BEGIN
    -- Cheap checks first; the validators raise the precise error.
    IF v_account IS NULL OR length(v_account) NOT BETWEEN 1 AND 255 OR btrim(v_account) = '' THEN
        PERFORM credits._ident(v_account, 'account_id', 255);
    END IF;
    IF v_amount IS NULL OR NOT (v_amount > 0 AND v_amount < 1e14 AND scale(v_amount) <= 6) THEN
        v_amount := credits._amount(v_amount, 'amount', false);
    END IF;
    IF v_product IS NULL OR length(v_product) NOT BETWEEN 1 AND 255 OR btrim(v_product) = '' THEN
        PERFORM credits._ident(v_product, 'product', 255);
    END IF;
    IF v_action IS NOT NULL AND (length(v_action) NOT BETWEEN 1 AND 255 OR btrim(v_action) = '') THEN
        PERFORM credits._ident(v_action, 'action', 255);
    END IF;
    IF v_key IS NOT NULL AND (length(v_key) NOT BETWEEN 1 AND 255 OR btrim(v_key) = '') THEN
        PERFORM credits._ident(v_key, 'idempotency_key', 255);
    END IF;
    IF v_ttl IS NULL OR v_ttl <= interval '0' THEN
        PERFORM credits._required(v_ttl IS NULL, 'ttl');
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'ttl must be positive',
            DETAIL = format('ttl is %s.', v_ttl),
            HINT = 'Pass how long the hold may stay pending, such as ''15 minutes''.';
    END IF;
    -- A hold must end before the year 10000, as a promo grant must (and
    -- now + ttl must not overflow timestamptz: 22008 without a word of why).
    IF v_ttl >= interval '10000 years' OR extract(year FROM (v_now + v_ttl) AT TIME ZONE 'UTC') >= 10000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'ttl must end before the year 10000',
            DETAIL = format('ttl is %s, now is %s.', v_ttl, v_now),
            HINT = 'Pass how long the hold may stay pending, such as ''15 minutes''.';
    END IF;
    IF v_metadata IS NULL OR jsonb_typeof(v_metadata) <> 'object' THEN
        v_metadata := credits._metadata(v_metadata);
    END IF;

    IF NOT credits._may_touch(v_account) THEN
        PERFORM credits._unknown_account(v_account);
    END IF;
    a := credits._lock_account(v_account);
    v_now := credits._now();
    v_request := jsonb_build_object('amount', v_amount, 'product', v_product, 'action', v_action,
                                    'ttl', extract(epoch FROM v_ttl), 'metadata', v_metadata);
    v_result := credits._idempotent_result(v_account, 'reserve', v_key, v_request);
    IF v_result IS NOT NULL THEN
        RETURN v_result::uuid;
    END IF;
    -- Products are registered on first use and may be disabled (after the
    -- key's look-up: a replay returns its first result, also once the
    -- product has been disabled since).
    SELECT p.enabled AND coalesce(ap.enabled, true) INTO v_allowed
      FROM credits.products p
      LEFT JOIN credits.account_products ap ON ap.account_id = v_account AND ap.product = p.product
     WHERE p.product = v_product;
    IF v_allowed IS NOT TRUE THEN
        PERFORM credits._product_allowed(v_account, v_product, v_now);
    END IF;

    IF a.byok THEN
        -- Logged, never blocked, no balance effect.
        INSERT INTO credits.reservations (reservation_id, account_id, status, product, action, amount,
                                          draw_buckets, draw_amounts, byok, period_start, expires_at, created_at, metadata)
        VALUES (v_id, v_account, 'pending', v_product, v_action, v_amount,
                '{}', '{}', true, a.period_start, v_now + v_ttl, v_now, v_metadata);
        -- Its expiry is an event of the account, as any hold's is.
        UPDATE credits.accounts SET next_event = v_now + v_ttl
         WHERE account_id = v_account AND next_event > v_now + v_ttl;
        PERFORM credits._idempotent_store(v_account, 'reserve', v_key, v_request, v_id::text, v_now);
        RETURN v_id;
    END IF;
    IF a.debt > 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'CR008',
            MESSAGE = format('account "%s" is in debt', v_account),
            DETAIL = format('The account owes %s credits from a forced commit.', trim_scale(a.debt)),
            HINT = 'Grant credits to pay the debt off (credits_grant), or wait for the next allocation.';
    END IF;

    v_free := a.balance - a.held;
    IF v_free < v_amount THEN
        SELECT l.mode, l.soft INTO v_mode, v_soft FROM credits._limit(a, v_now) l;
        v_overage := v_amount - v_free;
        IF v_mode <> 'soft' OR a.period_overage + a.overage_held + v_overage > v_soft THEN
            RAISE EXCEPTION USING ERRCODE = 'CR001',
                MESSAGE = format('insufficient credits for account "%s"', v_account),
                DETAIL = format('It needs %s; the account has %s available.', trim_scale(v_amount),
                                trim_scale(v_free + CASE WHEN v_mode = 'soft'
                                              THEN greatest(v_soft - a.period_overage - a.overage_held, 0) ELSE 0 END)),
                HINT = format('Top up, or wait for the reset on %s.', to_char(a.period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD'));
        END IF;
    END IF;

    SELECT * INTO d FROM credits._draw(v_account, v_amount - v_overage, v_now, true);
    UPDATE credits.accounts
       SET held = held + d.total, overage_held = overage_held + v_overage,
           next_event = least(next_event, v_now + v_ttl)
     WHERE account_id = v_account;
    INSERT INTO credits.reservations (reservation_id, account_id, status, product, action, amount,
                                      draw_buckets, draw_amounts, overage, period_start, expires_at, created_at, metadata)
    VALUES (v_id, v_account, 'pending', v_product, v_action, v_amount,
            d.buckets, d.amounts, v_overage, a.period_start, v_now + v_ttl, v_now, v_metadata);
    PERFORM credits._idempotent_store(v_account, 'reserve', v_key, v_request, v_id::text, v_now);
    RETURN v_id;
END
$$;

CREATE OR REPLACE FUNCTION public.credits_events_claim(
    consumer   text,
    max_events integer DEFAULT 10,
    visibility interval DEFAULT '30 seconds',
    kinds      text[] DEFAULT NULL)
RETURNS TABLE (event_id bigint, account_id text, kind text, payload jsonb, created_at timestamptz, deliveries integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_consumer text := credits._ident(credits_events_claim.consumer, 'consumer', 255);
    v_now      timestamptz := credits._now();
BEGIN
    PERFORM credits._required(max_events IS NULL, 'max_events');
    PERFORM credits._required(visibility IS NULL, 'visibility');
    IF max_events < 1 OR visibility <= interval '0' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'max_events and visibility must be positive',
            DETAIL = format('max_events is %s, visibility is %s.', max_events, visibility),
            HINT = 'Claim at least one event for a positive time, such as 10 events for ''30 seconds''.';
    END IF;
    -- As every time the API stores: before the year 10000 (and now +
    -- visibility must not overflow timestamptz).
    IF visibility >= interval '10000 years' OR extract(year FROM (v_now + visibility) AT TIME ZONE 'UTC') >= 10000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'visibility must end before the year 10000',
            DETAIL = format('visibility is %s, now is %s.', visibility, v_now),
            HINT = 'Claim the events for as long as handling them may take, such as ''30 seconds''.';
    END IF;
    RETURN QUERY
    WITH claimable AS (
        SELECT e.event_id, e.account_id FROM credits.events e
         WHERE e.acked_at IS NULL AND e.visible_at <= v_now
           AND (credits_events_claim.kinds IS NULL OR e.kind = ANY (credits_events_claim.kinds))
           AND credits._may_touch(e.account_id)
         ORDER BY e.visible_at, e.event_id
         LIMIT credits_events_claim.max_events
           FOR UPDATE SKIP LOCKED
    )
    UPDATE credits.events e
       SET visible_at = v_now + credits_events_claim.visibility, deliveries = e.deliveries + 1, claimed_by = v_consumer
      FROM claimable c
     WHERE e.event_id = c.event_id AND e.account_id = c.account_id
    RETURNING e.event_id, e.account_id, e.kind, e.payload, e.created_at, e.deliveries;
END
$$;

-- credits_usage_daily and credits_usage_by_tag refuse NULL arguments
-- (22004; they returned nothing, or one row of untagged usage), and
-- credits_usage_daily a range that is not finite or longer than 3,660 days
-- (22023): an open range ('infinity') made a row per day until the
-- statement was cancelled, spilling them to temporary files.
-- credits_usage_by_tag reads its days as UTC days, as every other figure
-- (they were the session's days). Both become PL/pgSQL.
CREATE OR REPLACE FUNCTION public.credits_usage_daily(account_id text, from_day date, to_day date)
RETURNS TABLE (day date, product text, used numeric, overage numeric, refunded numeric, net_used numeric,
               actions integer)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits_usage_daily.account_id;
BEGIN
    PERFORM credits._required(v_account IS NULL, 'account_id');
    PERFORM credits._required(from_day IS NULL, 'from_day');
    PERFORM credits._required(to_day IS NULL, 'to_day');
    IF NOT (isfinite(from_day) AND isfinite(to_day)) OR to_day - from_day >= 3660 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'the range of days must be finite and at most 3660 days',
            DETAIL = format('from_day is %s, to_day is %s.', from_day, to_day),
            HINT = 'Ask for at most 3660 days (about ten years) at a time, or read months from credits.usage_monthly.';
    END IF;
    RETURN QUERY
    WITH products AS (
        SELECT DISTINCT u.product FROM credits.usage_rollup u
         WHERE u.account_id = v_account AND u.day BETWEEN from_day AND to_day
    )
    SELECT d.d::date, p.product, trim_scale(coalesce(u.used, 0)), trim_scale(coalesce(u.overage, 0)),
           trim_scale(coalesce(u.refunded, 0)), trim_scale(coalesce(u.used + u.overage - u.refunded, 0)),
           coalesce(u.actions, 0)
      FROM generate_series(from_day, to_day, interval '1 day') d(d)
     CROSS JOIN products p
      LEFT JOIN credits.usage_rollup u
             ON u.account_id = v_account AND u.day = d.d::date AND u.product = p.product
     ORDER BY 1, 2;
END
$$;

CREATE OR REPLACE FUNCTION public.credits_usage_by_tag(account_id text, tag text, from_day date DEFAULT NULL,
                                            to_day date DEFAULT NULL)
RETURNS TABLE (tag_value text, product text, actions bigint, charged numeric, refunded numeric, net numeric)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits_usage_by_tag.account_id;
    v_tag     text := credits_usage_by_tag.tag;
    -- The range as instants: a day's UTC midnight; days past what a
    -- timestamptz holds (dates reach further) are the infinities.
    v_from timestamptz := CASE WHEN from_day IS NULL OR from_day = '-infinity' THEN '-infinity'
                               WHEN from_day > '294276-12-30' THEN 'infinity'
                               ELSE from_day::timestamp AT TIME ZONE 'UTC' END;
    v_to   timestamptz := CASE WHEN to_day IS NULL OR to_day > '294276-12-30' THEN 'infinity'
                               WHEN to_day = '-infinity' THEN '-infinity'
                               ELSE (to_day + 1)::timestamp AT TIME ZONE 'UTC' END;
BEGIN
    PERFORM credits._required(v_account IS NULL, 'account_id');
    PERFORM credits._required(v_tag IS NULL, 'tag');
    RETURN QUERY
    SELECT r.metadata->>v_tag, r.product, count(*), trim_scale(sum(r.charged)), trim_scale(sum(r.refunded)),
           trim_scale(sum(r.charged - r.refunded))
      FROM credits.reservations r
     WHERE r.account_id = v_account AND r.status = 'committed'
       AND r.created_at >= v_from AND r.created_at < v_to
     GROUP BY 1, 2
     ORDER BY 1, 2;
END
$$;
-- The usage functions run as their caller and ask credits._required.
GRANT EXECUTE ON FUNCTION credits._required(boolean, text) TO credits_reader, credits_app, credits_admin;

-- The allocation of an account's current period, which usage alerts are
-- percentages of: its allocation bucket's amount (an edit of the plan's
-- allocation applies from the next reset; a change of plan retargets the
-- bucket), or the plan's allocation when the period has none; 0 for BYOK.
-- The figure credits_balance and credits.account_summary show.
CREATE FUNCTION credits._period_allocation(p_account text, p_period_end timestamptz, p_byok boolean,
                                           p_plan_allocation numeric)
RETURNS numeric
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF p_byok THEN
        RETURN 0;
    END IF;
    RETURN coalesce((SELECT b.amount FROM credits.buckets b
                      WHERE b.account_id = p_account AND b.kind = 'allocation' AND b.expires_at = p_period_end
                      ORDER BY b.created_at DESC LIMIT 1), p_plan_allocation);
END
$$;

REVOKE ALL ON FUNCTION credits._period_allocation(text, timestamptz, boolean, numeric) FROM PUBLIC;

-- The monthly cap in the pack's currency.
CREATE OR REPLACE FUNCTION credits._after_usage(p_account text, p_balance_before numeric, p_now timestamptz) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    a        credits.accounts;
    v_alloc  numeric;
    v_usage  numeric;
    v_raised numeric[];
    v_pct    numeric;
BEGIN
    SELECT * INTO a FROM credits.accounts WHERE account_id = p_account;
    v_usage := a.period_used + a.period_overage;
    IF a.next_alert_at IS NOT NULL AND v_usage >= a.next_alert_at THEN
        v_alloc := credits._period_allocation(p_account, a.period_end, a.byok,
                                              (SELECT p.allocation FROM credits.plans p WHERE p.plan_id = a.plan_id));
        v_raised := a.alerts_raised;
        FOR v_pct IN
            SELECT x FROM unnest(a.alert_percents) x
             WHERE NOT x = ANY (v_raised) AND 100 * v_usage >= x * v_alloc
             ORDER BY x
        LOOP
            PERFORM credits._emit(p_account, 'usage_alert', jsonb_build_object(
                'account_id', p_account, 'percent', v_pct, 'used', v_usage, 'allocation', v_alloc,
                'period_end', a.period_end), p_now);
            v_raised := v_raised || v_pct;
        END LOOP;
        UPDATE credits.accounts
           SET alerts_raised = v_raised, next_alert_at = credits._next_alert_at(alert_percents, v_raised, v_alloc)
         WHERE account_id = p_account;
    END IF;

    IF a.recharge_below IS NOT NULL AND a.balance < a.recharge_below AND p_balance_before >= a.recharge_below THEN
        PERFORM credits._auto_recharge(p_account, p_now);
    END IF;
END
$$;

-- Currencies in upper case.
CREATE OR REPLACE FUNCTION public.credits_pack_upsert(pack_id text, credits numeric, price numeric,
                                           currency text DEFAULT 'USD', active boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_pack     text    := credits._ident(credits_pack_upsert.pack_id, 'pack_id', 255);
    v_credits  numeric := credits._amount(credits_pack_upsert.credits, 'credits', false);
    v_price    numeric := credits._amount(credits_pack_upsert.price, 'price', true);
    v_currency text    := upper(credits._ident(credits_pack_upsert.currency, 'currency', 16));
BEGIN
    PERFORM credits._required(credits_pack_upsert.active IS NULL, 'active');
    PERFORM credits._require_unbound('credits_pack_upsert');
    INSERT INTO credits.packs (pack_id, credits, price, currency, active, updated_at)
    VALUES (v_pack, v_credits, v_price, v_currency, credits_pack_upsert.active, credits._now())
    ON CONFLICT (pack_id) DO UPDATE
       SET credits = EXCLUDED.credits, price = EXCLUDED.price, currency = EXCLUDED.currency,
           active = EXCLUDED.active, updated_at = EXCLUDED.updated_at;
END
$$;

-- An infinite as_of has its own message.
CREATE OR REPLACE FUNCTION public.credits_reset(account_id text DEFAULT NULL, as_of timestamptz DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := credits._now();
    v_as_of   timestamptz := coalesce(credits_reset.as_of, v_now);
    v_account text := CASE WHEN credits_reset.account_id IS NULL THEN NULL
                           ELSE credits._ident(credits_reset.account_id, 'account_id', 255) END;
    v_rolled  integer := 0;
    a         record;
BEGIN
    IF NOT isfinite(v_as_of) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'as_of must be a finite timestamp',
            DETAIL = format('as_of is %s.', v_as_of),
            HINT = 'Leave as_of out to reset up to now.';
    END IF;
    IF v_as_of > v_now THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'as_of may not be later than the clock',
            DETAIL = format('as_of is %s, the clock says %s.', v_as_of, v_now),
            HINT = 'Leave as_of out to reset up to now.';
    END IF;
    FOR a IN
        SELECT c.account_id FROM credits.accounts c
         WHERE (v_account IS NULL OR c.account_id = v_account) AND c.next_event <= v_as_of
           AND credits._may_touch(c.account_id)
         ORDER BY c.account_id
    LOOP
        PERFORM 1 FROM credits.accounts c WHERE c.account_id = a.account_id FOR NO KEY UPDATE;
        v_rolled := v_rolled + credits._housekeep(a.account_id, v_as_of);
    END LOOP;
    IF v_account IS NOT NULL AND (NOT EXISTS (SELECT 1 FROM credits.accounts c WHERE c.account_id = v_account)
                                  OR NOT credits._may_touch(v_account)) THEN
        PERFORM credits._unknown_account(v_account);
    END IF;
    RETURN v_rolled;
END
$$;

-- monthly_cap NULL keeps the cap.
CREATE OR REPLACE FUNCTION public.credits_auto_recharge_set(account_id text, enabled boolean, pack text DEFAULT NULL,
                                                 threshold numeric DEFAULT NULL, monthly_cap numeric DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits._ident(credits_auto_recharge_set.account_id, 'account_id', 255);
    v_pack    text := CASE WHEN credits_auto_recharge_set.pack IS NULL THEN NULL
                           ELSE credits._ident(credits_auto_recharge_set.pack, 'pack', 255) END;
    v_threshold numeric := CASE WHEN credits_auto_recharge_set.threshold IS NULL THEN NULL
                                ELSE credits._amount(credits_auto_recharge_set.threshold, 'threshold', true) END;
    v_cap     numeric := CASE WHEN credits_auto_recharge_set.monthly_cap IS NULL THEN NULL
                              ELSE credits._amount(credits_auto_recharge_set.monthly_cap, 'monthly_cap', true) END;
    a         credits.accounts;
    cur       credits.auto_recharge;
BEGIN
    PERFORM credits._required(credits_auto_recharge_set.enabled IS NULL, 'enabled');
    a := credits._lock_account(v_account);
    SELECT * INTO cur FROM credits.auto_recharge WHERE account_id = v_account;
    v_pack := coalesce(v_pack, cur.pack_id);
    v_threshold := coalesce(v_threshold, cur.threshold);
    v_cap := coalesce(v_cap, cur.monthly_cap, 50);
    PERFORM credits._required(v_pack IS NULL, 'pack');
    PERFORM credits._required(v_threshold IS NULL, 'threshold');
    IF NOT EXISTS (SELECT 1 FROM credits.packs WHERE pack_id = v_pack AND active) THEN
        RAISE EXCEPTION USING ERRCODE = 'CR016',
            MESSAGE = format('unknown pack "%s"', v_pack),
            DETAIL = 'No active pack has this pack_id.',
            HINT = 'Create it with credits_pack_upsert(), or pass an active pack.';
    END IF;
    IF credits_auto_recharge_set.enabled AND a.byok THEN
        RAISE EXCEPTION USING ERRCODE = 'CR014',
            MESSAGE = format('account "%s" is BYOK', v_account),
            DETAIL = 'BYOK accounts have no balance to recharge.',
            HINT = 'Leave auto-recharge off for BYOK accounts.';
    END IF;
    IF credits_auto_recharge_set.enabled
       AND NOT (SELECT p.purchases_allowed FROM credits.plans p WHERE p.plan_id = a.plan_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'CR010',
            MESSAGE = format('purchases are not allowed on plan "%s"', a.plan_id),
            DETAIL = 'Auto-recharge buys packs, and this plan allows no purchases.',
            HINT = 'Upgrade the account to a plan that allows purchases.';
    END IF;
    INSERT INTO credits.auto_recharge (account_id, enabled, pack_id, threshold, monthly_cap, updated_at)
    VALUES (v_account, credits_auto_recharge_set.enabled, v_pack, v_threshold, v_cap, credits._now())
    ON CONFLICT (account_id) DO UPDATE
       SET enabled = EXCLUDED.enabled, pack_id = EXCLUDED.pack_id, threshold = EXCLUDED.threshold,
           monthly_cap = EXCLUDED.monthly_cap, updated_at = EXCLUDED.updated_at;
    UPDATE credits.accounts
       SET recharge_below = CASE WHEN credits_auto_recharge_set.enabled THEN v_threshold END
     WHERE account_id = v_account;
    -- Turned on (or set again after a failed payment) while the balance is
    -- already below the threshold: request at once, since an account with
    -- nothing left makes no commit that could cross it.
    PERFORM credits._auto_recharge(v_account, credits._now());
END
$$;

-- BYOK holds that a BYOK reserve left out of its account's next_event.
UPDATE credits.accounts a
   SET next_event = r.first_expiry
  FROM (SELECT x.account_id, min(x.expires_at) AS first_expiry FROM credits.reservations x
         WHERE x.status = 'pending' AND x.byok GROUP BY x.account_id) r
 WHERE a.account_id = r.account_id AND a.next_event > r.first_expiry;

-- Writes a recharge request and its recharge_requested event if the locked
-- account's balance (what its live buckets hold, pending holds included)
-- is below its auto-recharge threshold, and nothing stands in the way: no
-- other request of the account is pending, auto-recharge is on, its pack
-- is active, the plan allows purchases, the account is not BYOK, and the
-- pack's price fits under the monthly cap together with what auto-recharge
-- requested or bought this calendar month (UTC) in that currency (failed
-- requests do not count). Asked when the balance may have gone below the
-- threshold, or something that stood in the way may have gone: a commit
-- that took the balance below it (credits._after_usage), a roll-forward
-- whose expiries took it below or a reset that left it below
-- (credits._housekeep), a plan or BYOK change and a purchase that left it
-- below, and credits_auto_recharge_set. A commit of an account already
-- below the threshold asks nothing (it would on every commit while a
-- payment fails): a failed payment is tried again at the next crossing,
-- reset, purchase or credits_auto_recharge_set.
CREATE FUNCTION credits._auto_recharge(p_account text, p_now timestamptz) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    cfg     record;
    v_spent numeric;
    v_req   uuid;
BEGIN
    SELECT ar.pack_id, pk.credits, pk.price, pk.currency, ar.monthly_cap INTO cfg
      FROM credits.accounts a
      JOIN credits.auto_recharge ar ON ar.account_id = a.account_id
      JOIN credits.packs pk ON pk.pack_id = ar.pack_id
      JOIN credits.plans pl ON pl.plan_id = a.plan_id
     WHERE a.account_id = p_account AND a.balance < a.recharge_below AND NOT a.byok
       AND ar.enabled AND pk.active AND pl.purchases_allowed;
    IF NOT FOUND OR EXISTS (SELECT 1 FROM credits.recharge_requests r
                             WHERE r.account_id = p_account AND r.status = 'pending') THEN
        RETURN;
    END IF;
    SELECT coalesce(sum(r.price), 0) INTO v_spent
      FROM credits.recharge_requests r
     WHERE r.account_id = p_account AND r.status IN ('pending', 'completed')
       AND upper(r.currency) = upper(cfg.currency)
       AND r.created_at >= date_trunc('month', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    IF v_spent + cfg.price <= cfg.monthly_cap THEN
        INSERT INTO credits.recharge_requests (account_id, pack_id, credits, price, currency, status, created_at)
        VALUES (p_account, cfg.pack_id, cfg.credits, cfg.price, cfg.currency, 'pending', p_now)
        RETURNING request_id INTO v_req;
        PERFORM credits._emit(p_account, 'recharge_requested', jsonb_build_object(
            'account_id', p_account, 'request_id', v_req, 'pack', cfg.pack_id, 'credits', cfg.credits,
            'price', cfg.price, 'currency', cfg.currency, 'payment_ref', v_req), p_now);
    END IF;
END
$$;


REVOKE ALL ON FUNCTION credits._auto_recharge(text, timestamptz) FROM PUBLIC;

-- Brings a locked account up to p_now by applying the plan of
-- credits._roll_plan(): new buckets, bucket balances, ledger rows, expired
-- holds, the new period. Returns how many periods were rolled. A false
-- alarm (nothing due) only moves next_event, without building the plan.
CREATE OR REPLACE FUNCTION credits._housekeep(p_account text, p_now timestamptz) RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    v       jsonb;
    v_actor text;
    v_end   timestamptz;
    v_reset boolean;
    v_balance numeric;
    v_below numeric;
BEGIN
    IF credits._refresh_next_event(p_account, p_now) THEN
        RETURN 0;
    END IF;
    v := credits._roll_plan(credits._roll_input(p_account, p_now));
    v_actor := credits._actor();
    v_end := (v->>'period_end')::timestamptz;
    v_reset := (v->>'rolled')::integer > 0;
    INSERT INTO credits.buckets (account_id, bucket_id, kind, priority, amount, balance, held, expires_at, created_at)
    SELECT p_account, x.id, x.kind, x.priority, x.amount, x.balance, x.held, x.expires_at, x.created_at
      FROM jsonb_to_recordset(v->'buckets') AS x(id uuid, kind text, priority smallint, amount numeric, balance numeric,
                                                 held numeric, expires_at timestamptz, created_at timestamptz, new boolean)
     WHERE x.new;
    UPDATE credits.buckets b SET balance = x.balance, held = x.held
      FROM jsonb_to_recordset(v->'buckets') AS x(id uuid, balance numeric, held numeric, new boolean, changed boolean)
     WHERE b.account_id = p_account AND b.bucket_id = x.id AND x.changed AND NOT x.new;
    INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, reservation_id, actor, created_at)
    SELECT p_account, x.kind, x.amount, x.bucket_id, x.reservation_id, v_actor, x.at
      FROM jsonb_to_recordset(v->'ledger') AS x(kind text, amount numeric, bucket_id uuid, reservation_id uuid, at timestamptz);
    UPDATE credits.reservations r SET status = 'expired', resolved_at = x.at
      FROM jsonb_to_recordset(v->'expired_holds') AS x(id uuid, at timestamptz)
     WHERE r.reservation_id = x.id AND r.account_id = p_account;
    UPDATE credits.accounts
       SET balance = balance + (v->>'balance_delta')::numeric,
           held = held + (v->>'held_delta')::numeric,
           overage_held = overage_held - (v->>'overage_released')::numeric,
           debt = (v->>'debt')::numeric,
           period_start = (v->>'period_start')::timestamptz,
           period_end = v_end,
           period_used = CASE WHEN v_reset THEN 0 ELSE period_used END,
           period_overage = CASE WHEN v_reset THEN 0 ELSE period_overage END,
           alerts_raised = CASE WHEN v_reset THEN '{}' ELSE alerts_raised END,
           next_alert_at = CASE WHEN v_reset
                                THEN credits._next_alert_at(alert_percents, '{}',
                                         (SELECT CASE WHEN byok THEN 0 ELSE p.allocation END
                                            FROM credits.plans p WHERE p.plan_id = credits.accounts.plan_id))
                                ELSE next_alert_at END,
           next_event = credits._next_event(p_account, v_end, p_now)
     WHERE account_id = p_account
    RETURNING balance, recharge_below INTO v_balance, v_below;
    -- Expiries that took the balance below the auto-recharge threshold, or
    -- a reset that left it below (the month's cap may have room again, a
    -- failed payment is tried again), ask for a recharge.
    IF v_balance < v_below AND (v_reset OR v_balance - (v->>'balance_delta')::numeric >= v_below) THEN
        PERFORM credits._auto_recharge(p_account, p_now);
    END IF;
    RETURN (v->>'rolled')::integer;
END
$$;

-- Refuses (42501) a caller bound to accounts: a tenant's role works on its
-- accounts only, and what every account shares (plans, packs, products,
-- prices) or decides who reaches which (bindings, new accounts) needs a
-- role that sees every account: a superuser or a role bound to nothing.
-- Without it, a credits_admin bound to one account could unbind itself,
-- see every account, and grant credits to all of them.
CREATE FUNCTION credits._require_unbound(p_function text) RETURNS void
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF NOT credits._sees_all() THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('%s needs a role bound to no account', p_function),
            DETAIL = format('Role "%s" is bound to accounts: it works on those accounts only, and %s changes what every account shares or who reaches which.',
                            credits._actor(), p_function),
            HINT = 'Call it as a credits_admin role bound to no account, or as a superuser.';
    END IF;
END
$$;


REVOKE ALL ON FUNCTION credits._require_unbound(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION public.credits_product_upsert(product text, enabled boolean DEFAULT NULL, description text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_product text := credits._ident(credits_product_upsert.product, 'product', 255);
BEGIN
    PERFORM credits._require_unbound('credits_product_upsert');
    INSERT INTO credits.products (product, enabled, description, created_at)
    VALUES (v_product, coalesce(credits_product_upsert.enabled, true), credits_product_upsert.description, credits._now())
    ON CONFLICT (product) DO UPDATE
       SET enabled = coalesce(credits_product_upsert.enabled, credits.products.enabled),
           description = coalesce(credits_product_upsert.description, credits.products.description);
END
$$;


CREATE OR REPLACE FUNCTION public.credits_price_upsert(product text, action text, unit text, price numeric,
                                            tier text DEFAULT 'standard')
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_product text := credits._ident(credits_price_upsert.product, 'product', 255);
    v_action  text := credits._ident(credits_price_upsert.action, 'action', 255);
    v_tier    text := credits._ident(credits_price_upsert.tier, 'tier', 255);
    v_unit    text := credits._choice(credits_price_upsert.unit, 'unit',
                                      '{call,input_tokens_1k,output_tokens_1k,image,second}');
    v_price   numeric := credits._amount(credits_price_upsert.price, 'price', true);
BEGIN
    PERFORM credits._require_unbound('credits_price_upsert');
    INSERT INTO credits.prices (product, action, tier, unit, price, updated_at)
    VALUES (v_product, v_action, v_tier, v_unit, v_price, credits._now())
    ON CONFLICT (product, action, tier, unit) DO UPDATE SET price = EXCLUDED.price, updated_at = EXCLUDED.updated_at;
END
$$;


CREATE OR REPLACE FUNCTION public.credits_recharge_fail(request_id uuid, reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text;
    v_failed  boolean := false;
BEGIN
    PERFORM credits._required(credits_recharge_fail.request_id IS NULL, 'request_id');
    -- A request of an account the caller may not reach does not exist for
    -- it (CR017 below, without the account's name).
    SELECT r.account_id INTO v_account FROM credits.recharge_requests r
     WHERE r.request_id = credits_recharge_fail.request_id AND credits._may_touch(r.account_id);
    IF FOUND THEN
        PERFORM credits._lock_account(v_account);
        UPDATE credits.recharge_requests r
           SET status = 'failed', reason = credits_recharge_fail.reason, resolved_at = credits._now()
         WHERE r.account_id = v_account AND r.request_id = credits_recharge_fail.request_id AND r.status = 'pending';
        v_failed := FOUND;
    END IF;
    IF v_failed THEN
        -- A write of the account row, not only its lock: a call at
        -- REPEATABLE READ or SERIALIZABLE that waited for the lock then
        -- fails with 40001 and, retried, finds the request failed, as a
        -- call at READ COMMITTED does. Otherwise it went on with a snapshot
        -- in which the request was still pending, and a commit that took
        -- the balance below the threshold requested no recharge.
        UPDATE credits.accounts a SET recharge_below = a.recharge_below WHERE a.account_id = v_account;
    ELSE
        RAISE EXCEPTION USING ERRCODE = 'CR017',
            MESSAGE = format('recharge request %s is not pending', credits_recharge_fail.request_id),
            DETAIL = 'It does not exist, or it was already completed or failed.',
            HINT = 'Only a pending request can be failed.';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION public.credits_quote(product text, action text, tier text DEFAULT 'standard',
                                     calls numeric DEFAULT 1, input_tokens numeric DEFAULT 0,
                                     output_tokens numeric DEFAULT 0, images numeric DEFAULT 0,
                                     seconds numeric DEFAULT 0)
RETURNS numeric
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_product text := credits._ident(credits_quote.product, 'product', 255);
    v_action  text := credits._ident(credits_quote.action, 'action', 255);
    v_tier    text := credits._ident(credits_quote.tier, 'tier', 255);
    v_qty     jsonb;
    v_cost    numeric;
    v_priced  integer;
BEGIN
    v_qty := jsonb_build_object(
        'call', credits._amount(credits_quote.calls, 'calls', true),
        'input_tokens_1k', credits._amount(credits_quote.input_tokens, 'input_tokens', true) * 0.001,
        'output_tokens_1k', credits._amount(credits_quote.output_tokens, 'output_tokens', true) * 0.001,
        'image', credits._amount(credits_quote.images, 'images', true),
        'second', credits._amount(credits_quote.seconds, 'seconds', true));
    SELECT count(*), sum(p.price * (v_qty ->> p.unit)::numeric) INTO v_priced, v_cost
      FROM credits.prices p
     WHERE p.product = v_product AND p.action = v_action AND p.tier = v_tier;
    IF v_priced = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'CR015',
            MESSAGE = format('no price for product "%s", action "%s", tier "%s"', v_product, v_action, v_tier),
            DETAIL = 'The price catalogue has no entry for this action.',
            HINT = 'Add one with credits_price_upsert(product => ..., action => ..., unit => ..., price => ...).';
    END IF;
    v_cost := ceil(v_cost * 1000000) * 0.000001;
    -- No account holds more (numeric(20,6)): a reserve of it would fail
    -- with 22003 anyway.
    IF v_cost > 99999999999999.999999 THEN
        RAISE EXCEPTION USING ERRCODE = '22003',
            MESSAGE = format('the quote of %s credits is out of range', trim_scale(v_cost)),
            DETAIL = 'No amount may exceed 99999999999999.999999 (numeric(20,6)).',
            HINT = 'Check the quantities and the prices of the action.';
    END IF;
    RETURN trim_scale(v_cost);
END
$$;

CREATE OR REPLACE FUNCTION credits._next_event(p_account text, p_period_end timestamptz, p_now timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN least(p_period_end,
                 (SELECT min(expires_at) FROM credits.buckets
                   WHERE account_id = p_account AND expires_at > p_now),
                 (SELECT min(expires_at) FROM credits.reservations
                   WHERE account_id = p_account AND status = 'pending'));
END
$$;


-- Accounts whose next_event lies past the expiry of one of their buckets:
-- a live one (its expiry is an event now), or one that has expired with
-- free credits in it (they stayed available; the account is due at once,
-- and its next write path or maintenance writes them off).
UPDATE credits.accounts a
   SET next_event = b.first_expiry
  FROM (SELECT x.account_id, min(x.expires_at) AS first_expiry FROM credits.buckets x
         WHERE x.expires_at > credits._now() OR (x.expires_at IS NOT NULL AND x.balance > x.held)
         GROUP BY x.account_id) b
 WHERE a.account_id = b.account_id AND a.next_event > b.first_expiry;

-- enabled => NULL removes the account's switch (the global one applies).
CREATE OR REPLACE FUNCTION public.credits_account_product_set(account_id text, product text, enabled boolean)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits._ident(credits_account_product_set.account_id, 'account_id', 255);
    v_product text := credits._ident(credits_account_product_set.product, 'product', 255);
    v_now     timestamptz := credits._now();
BEGIN
    PERFORM credits._lock_account(v_account);
    INSERT INTO credits.products (product, created_at) VALUES (v_product, v_now) ON CONFLICT DO NOTHING;
    IF credits_account_product_set.enabled IS NULL THEN
        DELETE FROM credits.account_products WHERE account_id = v_account AND product = v_product;
    ELSE
        INSERT INTO credits.account_products (account_id, product, enabled, updated_at)
        VALUES (v_account, v_product, credits_account_product_set.enabled, v_now)
        ON CONFLICT (account_id, product) DO UPDATE SET enabled = EXCLUDED.enabled, updated_at = EXCLUDED.updated_at;
    END IF;
    -- The account row's copy of its switches, which the reserve fast path
    -- reads on the locked row's newest version: a reserve that waited for
    -- this call's lock is judged by what it wrote (credits.accounts).
    UPDATE credits.accounts a SET products_off = credits._products_off(v_account) WHERE a.account_id = v_account;
END
$$;

-- Amounts in the commit's and the refund's refusals without trailing zeros
-- (see above).
CREATE OR REPLACE FUNCTION credits._commit(
    reservation_id uuid,
    amount         numeric,
    force          boolean,
    account_id     text)
RETURNS numeric
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_id       uuid    := _commit.reservation_id;
    v_amount   numeric := _commit.amount;
    v_account  text    := _commit.account_id;
    v_now      timestamptz;
    v_charge   numeric;
    v_left     numeric;
    v_take     numeric;
    v_buckets  uuid[]    := '{}';
    v_amounts  numeric[] := '{}';
    v_charged  numeric := 0;   -- taken from bucket balances
    v_released numeric := 0;   -- hold given back to buckets
    v_overage  numeric := 0;
    v_debt     numeric := 0;
    v_ov_held  numeric := 0;
    v_mode     text;
    v_soft     numeric;
    v_rate     numeric;
    v_free_after     numeric;
    v_recharge_below numeric;
    v_next_alert     numeric;
    v_usage          numeric;
    a          credits.accounts;
    r          credits.reservations;
    d          record;
BEGIN
    IF v_amount IS NOT NULL AND NOT (v_amount >= 0 AND v_amount < 1e14 AND scale(v_amount) <= 6) THEN
        v_amount := credits._amount(v_amount, 'amount', true);
    END IF;
    IF _commit.force IS NULL THEN
        PERFORM credits._required(true, 'force');
    END IF;
    IF v_account IS NOT NULL AND (length(v_account) NOT BETWEEN 1 AND 255 OR btrim(v_account) = '') THEN
        PERFORM credits._ident(v_account, 'account_id', 255);
    END IF;
    -- Lock the reservation's account first (the reservation is only read
    -- after the lock, so its state is the latest).
    SELECT * INTO a FROM credits.accounts
     WHERE account_id = (SELECT x.account_id FROM credits.reservations x WHERE x.reservation_id = v_id)
       FOR NO KEY UPDATE;
    IF NOT FOUND OR a.account_id <> coalesce(v_account, a.account_id) OR NOT credits._may_touch(a.account_id) THEN
        PERFORM credits._reservation_account(v_id, v_account);
    END IF;
    v_account := a.account_id;
    v_now := credits._now();
    IF a.next_event <= v_now THEN
        PERFORM credits._housekeep(v_account, v_now);
        SELECT * INTO a FROM credits.accounts WHERE account_id = v_account;
    END IF;
    SELECT * INTO r FROM credits.reservations WHERE reservation_id = v_id AND account_id = v_account;
    v_charge := coalesce(v_amount, r.amount);

    IF r.status = 'committed' AND r.refunded = 0 AND r.charged = v_charge THEN
        RETURN trim_scale(r.charged);
    ELSIF r.status = 'committed' AND r.refunded = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'CR011',
            MESSAGE = format('reservation %s was already committed with another amount', v_id),
            DETAIL = format('It was committed for %s; this call asks for %s.', trim_scale(r.charged), trim_scale(v_charge)),
            HINT = 'Repeat the commit with the same amount, or refund the difference with credits_refund().';
    ELSIF r.status IN ('committed', 'released') THEN
        RAISE EXCEPTION USING ERRCODE = 'CR005',
            MESSAGE = format('reservation %s is not pending', v_id),
            DETAIL = format('It is %s.', CASE WHEN r.status = 'committed' THEN 'committed and refunded' ELSE r.status END),
            HINT = 'Only a pending (or expired) reservation can be committed; reserve again for a new action.';
    END IF;

    IF r.byok THEN
        UPDATE credits.reservations
           SET status = 'committed', charged = v_charge, period_start = a.period_start, resolved_at = v_now
         WHERE reservation_id = v_id AND account_id = v_account;
        PERFORM credits._rollup(v_account, v_now, r.product, 0, 0, 0, 0, 0, 1, v_charge);
        RETURN trim_scale(v_charge);
    END IF;

    IF r.status = 'pending' AND v_charge <= r.amount THEN
        IF r.overage > 0 THEN
            SELECT p.overage_rate INTO v_rate FROM credits.plans p WHERE p.plan_id = a.plan_id;
        END IF;
        -- The common case in one statement: charge the draws in order, give
        -- back the rest of each (written off if its bucket expired since),
        -- write the ledger rows, and update the account and the reservation.
        WITH draws AS (
            SELECT u.bucket_id, u.amount, u.n,
                   greatest(least(u.amount, v_charge - coalesce(sum(u.amount) OVER (ORDER BY u.n ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)), 0) AS take
              FROM unnest(r.draw_buckets, r.draw_amounts) WITH ORDINALITY AS u(bucket_id, amount, n)
        ), changed AS (
            UPDATE credits.buckets b
               SET held = b.held - d.amount,
                   balance = b.balance - d.take - CASE WHEN b.expires_at <= v_now THEN d.amount - d.take ELSE 0 END
              FROM draws d
             WHERE b.account_id = v_account AND b.bucket_id = d.bucket_id
            RETURNING d.bucket_id, d.n, d.amount, d.take,
                      CASE WHEN b.expires_at <= v_now THEN d.amount - d.take ELSE 0 END AS written
        ), totals AS (
            SELECT coalesce(sum(take), 0) AS charged, coalesce(sum(amount), 0) AS released,
                   coalesce(sum(written), 0) AS written,
                   coalesce(array_agg(bucket_id ORDER BY n) FILTER (WHERE take > 0), '{}') AS buckets,
                   coalesce(array_agg(take ORDER BY n) FILTER (WHERE take > 0), '{}') AS amounts
              FROM changed
        ), ledger AS (
            INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, reservation_id, product, action, rate, actor, created_at)
            SELECT v_account, x.kind, x.amount, x.bucket_id, v_id, x.product, x.action,
                   CASE WHEN x.kind = 'overage' THEN v_rate END, credits._actor(), v_now
              FROM (SELECT 'charge' AS kind, -c.take AS amount, c.bucket_id, r.product, r.action, c.n, 0 AS o
                      FROM changed c WHERE c.take > 0
                    UNION ALL
                    SELECT 'expire', -c.written, c.bucket_id, NULL, NULL, c.n, 1 FROM changed c WHERE c.written > 0
                    UNION ALL
                    SELECT 'overage', -(v_charge - t.charged), NULL, r.product, r.action, 0, 2
                      FROM totals t WHERE v_charge > t.charged) x
             ORDER BY x.o, x.n
        ), rollup AS (
            INSERT INTO credits.usage_rollup AS u (account_id, day, product, used, overage, billable_overage, actions)
            SELECT v_account, (v_now AT TIME ZONE 'UTC')::date, r.product, t.charged, v_charge - t.charged,
                   coalesce((v_charge - t.charged) * v_rate, 0), 1
              FROM totals t
            ON CONFLICT (account_id, day, product) DO UPDATE
               SET used = u.used + EXCLUDED.used, overage = u.overage + EXCLUDED.overage,
                   billable_overage = u.billable_overage + EXCLUDED.billable_overage, actions = u.actions + 1
        ), account AS (
            UPDATE credits.accounts
               SET held = held - t.released, balance = balance - t.charged - t.written,
                   overage_held = overage_held - r.overage,
                   period_overage = period_overage + (v_charge - t.charged),
                   period_used = period_used + t.charged
              FROM totals t
             WHERE account_id = v_account
            RETURNING balance AS free, recharge_below, next_alert_at, period_used + period_overage AS usage
        )
        UPDATE credits.reservations
           SET status = 'committed', charged = v_charge, draw_buckets = t.buckets, draw_amounts = t.amounts,
               overage = v_charge - t.charged,
               overage_rate = CASE WHEN v_charge > t.charged THEN v_rate END,
               period_start = a.period_start, resolved_at = v_now
          FROM totals t, account ac
         WHERE reservation_id = v_id AND account_id = v_account
        RETURNING ac.free, ac.recharge_below, ac.next_alert_at, ac.usage
             INTO v_free_after, v_recharge_below, v_next_alert, v_usage;
        IF v_usage >= v_next_alert
           OR (v_free_after < v_recharge_below AND a.balance >= v_recharge_below) THEN
            PERFORM credits._after_usage(v_account, a.balance, v_now);
        END IF;
        RETURN trim_scale(v_charge);
    END IF;

    v_left := v_charge;
    IF r.status = 'pending' THEN
        -- A commit of more than the hold (the statement above took every
        -- commit within it): each draw is charged whole, in order, even
        -- from a bucket that expired meanwhile (nothing of the hold is left
        -- to give back or write off), then the overage held; the excess is
        -- judged below as new usage.
        FOR d IN
            SELECT u.bucket_id, u.amount
              FROM unnest(r.draw_buckets, r.draw_amounts) WITH ORDINALITY AS u(bucket_id, amount, n)
             ORDER BY u.n
        LOOP
            UPDATE credits.buckets SET held = held - d.amount, balance = balance - d.amount
             WHERE account_id = v_account AND bucket_id = d.bucket_id;
            v_buckets := v_buckets || d.bucket_id;
            v_amounts := v_amounts || d.amount;
            v_left := v_left - d.amount;
            v_charged := v_charged + d.amount;
            v_released := v_released + d.amount;
        END LOOP;
        v_overage := r.overage;
        v_left := v_left - v_overage;
        v_ov_held := r.overage;
    END IF;

    IF v_left > 0 THEN
        -- Beyond the hold: new usage, judged now.
        SELECT * INTO d FROM credits._draw(v_account, v_left, v_now, false);
        v_buckets := v_buckets || d.buckets;
        v_amounts := v_amounts || d.amounts;
        v_charged := v_charged + d.total;
        v_left := v_left - d.total;
        IF v_left > 0 THEN
            SELECT l.mode, l.soft INTO v_mode, v_soft FROM credits._limit(a, v_now) l;
            v_take := CASE WHEN v_mode = 'soft'
                           THEN least(v_left, greatest(v_soft - a.period_overage - a.overage_held - v_overage + v_ov_held, 0))
                           ELSE 0 END;
            v_overage := v_overage + v_take;
            v_left := v_left - v_take;
            IF v_left > 0 AND NOT _commit.force THEN
                RAISE EXCEPTION USING ERRCODE = 'CR001',
                    MESSAGE = format('insufficient credits for account "%s"', v_account),
                    DETAIL = format('It needs %s; the account has %s available for it.',
                                    trim_scale(v_charge), trim_scale(v_charge - v_left)),
                    HINT = format('Commit at most %s, pass force => true to record the excess as debt, or top up first.',
                                  trim_scale(v_charge - v_left));
            END IF;
            v_debt := v_left;
        END IF;
    END IF;

    INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, reservation_id, product, action, actor, created_at)
    SELECT v_account, 'charge', -u.amount, u.bucket_id, v_id, r.product, r.action, credits._actor(), v_now
      FROM unnest(v_buckets, v_amounts) AS u(bucket_id, amount);
    IF v_overage > 0 THEN
        SELECT overage_rate INTO v_rate FROM credits.plans WHERE plan_id = a.plan_id;
        INSERT INTO credits.ledger (account_id, kind, amount, reservation_id, product, action, rate, actor, created_at)
        VALUES (v_account, 'overage', -v_overage, v_id, r.product, r.action, v_rate, credits._actor(), v_now);
    END IF;
    IF v_debt > 0 THEN
        INSERT INTO credits.ledger (account_id, kind, amount, reservation_id, product, action, actor, created_at)
        VALUES (v_account, 'debt', -v_debt, v_id, r.product, r.action, credits._actor(), v_now);
    END IF;

    PERFORM credits._rollup(v_account, v_now, r.product, v_charged + v_debt, v_overage, 0, 0,
                            coalesce(v_overage * v_rate, 0), 1, 0);
    UPDATE credits.accounts
       SET held = held - v_released, balance = balance - v_charged,
           overage_held = overage_held - v_ov_held, period_overage = period_overage + v_overage,
           period_used = period_used + v_charged + v_debt, debt = debt + v_debt
     WHERE account_id = v_account
    RETURNING balance, recharge_below, next_alert_at, period_used + period_overage
         INTO v_free_after, v_recharge_below, v_next_alert, v_usage;
    IF v_usage >= v_next_alert
       OR (v_free_after < v_recharge_below AND a.balance >= v_recharge_below) THEN
        PERFORM credits._after_usage(v_account, a.balance, v_now);
    END IF;
    UPDATE credits.reservations
       SET status = 'committed', charged = v_charge, draw_buckets = v_buckets, draw_amounts = v_amounts,
           overage = v_overage, overage_rate = v_rate, debt = v_debt, period_start = a.period_start,
           resolved_at = v_now
     WHERE reservation_id = v_id AND account_id = v_account;
    RETURN trim_scale(v_charge);
END
$$;

CREATE OR REPLACE FUNCTION credits._overage_within_limit() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_mode  text;
    v_limit numeric;
BEGIN
    SELECT l.mode, l.soft INTO v_mode, v_limit FROM credits._limit(NEW, credits._now()) l;
    IF NEW.period_overage + NEW.overage_held > v_limit THEN
        RAISE EXCEPTION USING
            ERRCODE = 'CR001',
            MESSAGE = pg_catalog.format('insufficient credits for account "%s"', NEW.account_id),
            DETAIL = pg_catalog.format('Overage would be %s; the %s limit allows %s this period.',
                                       pg_catalog.trim_scale(NEW.period_overage + NEW.overage_held), v_mode,
                                       pg_catalog.trim_scale(v_limit)),
            HINT = pg_catalog.format('Top up, or wait for the reset on %s.',
                                     pg_catalog.to_char(NEW.period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD'));
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION public.credits_refund(
    reservation_id  uuid,
    amount          numeric DEFAULT NULL,
    reason          text DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    account_id      text DEFAULT NULL)
RETURNS numeric
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_id       uuid    := credits_refund.reservation_id;
    v_amount   numeric := CASE WHEN credits_refund.amount IS NULL THEN NULL
                               ELSE credits._amount(credits_refund.amount, 'amount', false) END;
    v_reason   text    := CASE WHEN credits_refund.reason IS NULL THEN NULL
                               ELSE credits._ident(credits_refund.reason, 'reason', 1000) END;
    v_key      text    := CASE WHEN credits_refund.idempotency_key IS NULL THEN NULL
                               ELSE credits._ident(credits_refund.idempotency_key, 'idempotency_key', 255) END;
    v_meta     jsonb;
    v_account  text;
    v_request  jsonb;
    v_result   text;
    v_now      timestamptz;
    v_return   numeric;
    v_pos      numeric := 0;
    v_take     numeric;
    v_debt     numeric := 0;   -- taken off the account's debt
    v_credit   numeric := 0;   -- returned to bucket balances
    v_written  numeric := 0;
    v_overage  numeric := 0;
    v_usage    numeric := 0;
    v_same     boolean;
    a          credits.accounts;
    r          credits.reservations;
    rel        record;
    nb         record;
    d          record;
BEGIN
    v_account := credits._reservation_account(v_id,
        CASE WHEN credits_refund.account_id IS NULL THEN NULL
             ELSE credits._ident(credits_refund.account_id, 'account_id', 255) END);
    v_meta := CASE WHEN v_reason IS NULL THEN '{}' ELSE jsonb_build_object('reason', v_reason) END;
    a := credits._lock_account(v_account);
    v_now := credits._now();
    v_request := jsonb_build_object('reservation_id', v_id, 'amount', v_amount, 'reason', v_reason);
    v_result := credits._idempotent_result(v_account, 'refund', v_key, v_request);
    IF v_result IS NOT NULL THEN
        RETURN trim_scale(v_result::numeric);
    END IF;
    SELECT * INTO r FROM credits.reservations WHERE reservation_id = v_id AND account_id = v_account;

    IF r.status = 'pending' THEN
        SELECT * INTO rel FROM credits._release_draws(v_account, v_id, r.draw_buckets, r.draw_amounts, v_now);
        UPDATE credits.accounts
           SET held = held - rel.released, balance = balance - rel.written_off,
               overage_held = overage_held - r.overage
         WHERE account_id = v_account;
        UPDATE credits.reservations SET status = 'released', resolved_at = v_now, metadata = metadata || v_meta
         WHERE reservation_id = v_id AND account_id = v_account;
        v_return := r.amount;
    ELSIF r.status = 'committed' THEN
        IF v_amount > r.charged - r.refunded THEN
            RAISE EXCEPTION USING ERRCODE = 'CR012',
                MESSAGE = format('refund of %s exceeds what reservation %s has left to refund', trim_scale(v_amount), v_id),
                DETAIL = format('It was charged %s, of which %s is already refunded; %s is left to refund.',
                                trim_scale(r.charged), trim_scale(r.refunded), trim_scale(r.charged - r.refunded)),
                HINT = 'Refund at most the refundable amount, or leave amount out to refund all that is left.';
        END IF;
        v_return := coalesce(v_amount, r.charged - r.refunded);
        v_same := r.period_start = a.period_start;
        IF v_return > 0 AND NOT r.byok THEN
            -- Parts of the charge in reverse order; the first r.refunded of
            -- them were returned by earlier refunds.
            FOR d IN
                SELECT part, bucket_id, size
                  FROM (SELECT 'debt' AS part, NULL::uuid AS bucket_id, r.debt AS size, 0 AS n
                        UNION ALL SELECT 'overage', NULL, r.overage, 1
                        UNION ALL SELECT 'bucket', u.bucket_id, u.amount, 1 + cardinality(r.draw_buckets) + 1 - u.n
                          FROM unnest(r.draw_buckets, r.draw_amounts) WITH ORDINALITY AS u(bucket_id, amount, n)) parts
                 ORDER BY n
            LOOP
                v_take := greatest(least(r.refunded + v_return, v_pos + d.size) - greatest(r.refunded, v_pos), 0);
                v_pos := v_pos + d.size;
                CONTINUE WHEN v_take = 0;
                IF d.part = 'debt' THEN
                    v_usage := v_usage + v_take;
                    IF least(v_take, a.debt) > 0 THEN
                        INSERT INTO credits.ledger (account_id, kind, amount, reservation_id, product, action, actor, idempotency_key, metadata, created_at)
                        VALUES (v_account, 'debt_refund', least(v_take, a.debt), v_id, r.product, r.action, credits._actor(), v_key, v_meta, v_now);
                        v_debt := least(v_take, a.debt);
                    END IF;
                    IF v_take > v_debt THEN
                        -- The debt was paid off since: return that part as credit.
                        SELECT * INTO nb FROM credits._new_bucket(v_account, 'adjustment', v_take - v_debt, NULL, v_now, 0,
                                                                  v_key, v_meta, 'refund', v_id);
                        v_credit := v_credit + v_take - v_debt;
                    END IF;
                ELSIF d.part = 'overage' THEN
                    INSERT INTO credits.ledger (account_id, kind, amount, reservation_id, product, action, rate, actor, idempotency_key, metadata, created_at)
                    VALUES (v_account, 'overage_refund', v_take, v_id, r.product, r.action, r.overage_rate, credits._actor(), v_key, v_meta, v_now);
                    v_overage := v_overage + v_take;
                ELSE
                    v_usage := v_usage + v_take;
                    INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, reservation_id, product, action, actor, idempotency_key, metadata, created_at)
                    VALUES (v_account, 'refund', v_take, d.bucket_id, v_id, r.product, r.action, credits._actor(), v_key, v_meta, v_now);
                    IF EXISTS (SELECT 1 FROM credits.buckets
                                WHERE account_id = v_account AND bucket_id = d.bucket_id AND expires_at <= v_now) THEN
                        INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, reservation_id, actor, created_at)
                        VALUES (v_account, 'expire', -v_take, d.bucket_id, v_id, credits._actor(), v_now);
                        v_written := v_written + v_take;
                    ELSE
                        UPDATE credits.buckets SET balance = balance + v_take
                         WHERE account_id = v_account AND bucket_id = d.bucket_id;
                    END IF;
                    v_credit := v_credit + v_take;
                END IF;
            END LOOP;
            PERFORM credits._rollup(v_account, v_now, r.product, 0, 0, v_usage + v_overage, v_overage,
                                    -v_overage * coalesce(r.overage_rate, 0), 0, 0);
            UPDATE credits.accounts
               SET balance = balance + v_credit - v_written, debt = debt - v_debt,
                   period_used = period_used - CASE WHEN v_same THEN v_usage ELSE 0 END,
                   period_overage = period_overage - CASE WHEN v_same THEN v_overage ELSE 0 END
             WHERE account_id = v_account;
        END IF;
        IF v_return > 0 AND r.byok THEN
            PERFORM credits._rollup(v_account, v_now, r.product, 0, 0, 0, 0, 0, 0, -v_return);
        END IF;
        UPDATE credits.reservations
           SET refunded = refunded + v_return, metadata = metadata || v_meta
         WHERE reservation_id = v_id AND account_id = v_account;
    ELSE
        RAISE EXCEPTION USING ERRCODE = 'CR005',
            MESSAGE = format('reservation %s is not pending', v_id),
            DETAIL = format('It is %s: its hold was already given back.', r.status),
            HINT = 'Nothing is left to refund.';
    END IF;

    PERFORM credits._idempotent_store(v_account, 'refund', v_key, v_request, trim_scale(v_return)::text, v_now);
    RETURN trim_scale(v_return);
END
$$;

-- Raised by the function that refuses the call (see the top of this file).

-- CR002, for every path that meets an account_id it does not know.
CREATE OR REPLACE FUNCTION credits._unknown_account(p_account text) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'CR002',
        MESSAGE = format('unknown account "%s"', p_account),
        DETAIL = 'No credits account has this account_id.',
        HINT = 'Create it first with credits_account_upsert(account_id => ..., plan_id => ...).';
END
$$;

-- The stored result of a replay, NULL for a first call; a reuse of the key
-- with other arguments fails with CR006.
CREATE OR REPLACE FUNCTION credits._idempotent_result(p_account text, p_fn text, p_key text, p_request jsonb)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    k credits.idempotency_keys;
BEGIN
    IF p_key IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT * INTO k FROM credits.idempotency_keys
     WHERE account_id = p_account AND fn = p_fn AND key = p_key;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF k.request <> p_request THEN
        RAISE EXCEPTION USING ERRCODE = 'CR006',
            MESSAGE = format('idempotency key "%s" was already used with other arguments', p_key),
            DETAIL = format('credits_%s for account "%s" first ran with %s; this call has %s.', p_fn, p_account, k.request, p_request),
            HINT = 'Use a new key for a new operation, or repeat the first call exactly.';
    END IF;
    RETURN k.result;
END
$$;

-- Checks that a product may be used by an account, registering it on first use.
CREATE OR REPLACE FUNCTION credits._product_allowed(p_account text, p_product text, p_now timestamptz) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_global  boolean;
    v_account boolean;
BEGIN
    SELECT p.enabled, ap.enabled INTO v_global, v_account
      FROM credits.products p
      LEFT JOIN credits.account_products ap ON ap.account_id = p_account AND ap.product = p.product
     WHERE p.product = p_product;
    IF NOT FOUND THEN
        INSERT INTO credits.products (product, created_at) VALUES (p_product, p_now) ON CONFLICT DO NOTHING;
    ELSIF NOT v_global OR NOT coalesce(v_account, true) THEN
        RAISE EXCEPTION USING ERRCODE = 'CR009',
            MESSAGE = format('product "%s" is disabled', p_product),
            DETAIL = CASE WHEN NOT v_global THEN 'An admin disabled this product for every account.'
                          ELSE format('An admin disabled this product for account "%s".', p_account) END,
            HINT = 'Enable it with credits_product_upsert(enabled => true) or credits_account_product_set().';
    END IF;
END
$$;

-- The account a reservation belongs to, for commit and refund: CR004 when
-- there is no such reservation or the caller may not reach its account,
-- CR007 when the caller names another account.
CREATE OR REPLACE FUNCTION credits._reservation_account(p_reservation uuid, p_account text) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_account text;
BEGIN
    PERFORM credits._required(p_reservation IS NULL, 'reservation_id');
    SELECT account_id INTO v_account FROM credits.reservations WHERE reservation_id = p_reservation;
    IF NOT FOUND OR NOT credits._may_touch(v_account) THEN
        RAISE EXCEPTION USING ERRCODE = 'CR004',
            MESSAGE = format('unknown reservation %s', p_reservation),
            DETAIL = 'No reservation has this id (among the accounts this role may reach).',
            HINT = 'Pass the uuid that credits_reserve() returned.';
    END IF;
    IF p_account IS NOT NULL AND p_account <> v_account THEN
        RAISE EXCEPTION USING ERRCODE = 'CR007',
            MESSAGE = format('reservation %s does not belong to account "%s"', p_reservation, p_account),
            DETAIL = 'The account_id given does not match the reservation''s account.',
            HINT = 'Pass the account the reservation was made for, or leave account_id out.';
    END IF;
    RETURN v_account;
END
$$;

DROP FUNCTION credits._raise(text, text, text, text);

-- What each column of the usage views means, for \d+ and for BI tools that
-- show column descriptions (Metabase, Superset, Grafana).
COMMENT ON COLUMN credits.account_summary.account_id IS 'The account.';
COMMENT ON COLUMN credits.account_summary.plan_id IS 'The account''s plan.';
COMMENT ON COLUMN credits.account_summary.byok IS 'Bring-your-own-key account: usage logged, never metered.';
COMMENT ON COLUMN credits.account_summary.limit_mode IS 'The limit in force: hard or soft (the plan''s, or the account''s override).';
COMMENT ON COLUMN credits.account_summary.soft_allowance IS 'The soft limit in force: overage allowed per period once every bucket is empty (used when limit_mode is soft).';
COMMENT ON COLUMN credits.account_summary.allocation IS 'The current period''s allocation.';
COMMENT ON COLUMN credits.account_summary.used IS 'Charged to buckets this period (allocation, rollover, top-ups, promos, packs) and as debt, less what refunds gave back of it.';
COMMENT ON COLUMN credits.account_summary.percent_used IS '100 x used / allocation, 2 decimals; NULL when the allocation is 0.';
COMMENT ON COLUMN credits.account_summary.reserved IS 'Held by pending reservations (overage held included).';
COMMENT ON COLUMN credits.account_summary.available IS 'What the live buckets hold beyond the pending holds.';
COMMENT ON COLUMN credits.account_summary.overage IS 'Charged past the buckets this period (soft limit), less what refunds gave back of it.';
COMMENT ON COLUMN credits.account_summary.overage_available IS 'What the soft allowance still allows this period, after the overage charged and held.';
COMMENT ON COLUMN credits.account_summary.debt IS 'Owed from commits forced past the limit; reserves fail while it is above 0.';
COMMENT ON COLUMN credits.account_summary.period_start IS 'Start of the current billing period.';
COMMENT ON COLUMN credits.account_summary.period_end IS 'End of the current billing period (exclusive).';
COMMENT ON COLUMN credits.account_summary.next_reset IS 'When the next period starts (the period end).';
COMMENT ON COLUMN credits.account_summary.days_until_reset IS 'Days until the next reset, rounded up.';
COMMENT ON COLUMN credits.account_summary.override_until IS 'End of the account''s limit override; NULL when none is in force or it has no end.';

COMMENT ON COLUMN credits.usage_daily.account_id IS 'The account.';
COMMENT ON COLUMN credits.usage_daily.day IS 'The UTC day.';
COMMENT ON COLUMN credits.usage_daily.product IS 'The AI product.';
COMMENT ON COLUMN credits.usage_daily.used IS 'Charged to buckets (and as debt) on the day.';
COMMENT ON COLUMN credits.usage_daily.overage IS 'Charged past the buckets on the day (soft limit).';
COMMENT ON COLUMN credits.usage_daily.refunded IS 'Given back on the day (overage first), whatever day the charge was.';
COMMENT ON COLUMN credits.usage_daily.net_used IS 'used + overage - refunded (negative on a day that gave back more than it used).';
COMMENT ON COLUMN credits.usage_daily.billable_overage IS 'Overage x the plan''s overage rate, net of refunds.';
COMMENT ON COLUMN credits.usage_daily.actions IS 'Actions committed on the day.';
COMMENT ON COLUMN credits.usage_daily.byok_used IS 'Usage of BYOK accounts (never metered).';

COMMENT ON COLUMN credits.usage_monthly.account_id IS 'The account.';
COMMENT ON COLUMN credits.usage_monthly.month IS 'The first day of the UTC calendar month.';
COMMENT ON COLUMN credits.usage_monthly.product IS 'The AI product.';
COMMENT ON COLUMN credits.usage_monthly.used IS 'Charged to buckets (and as debt) in the month.';
COMMENT ON COLUMN credits.usage_monthly.overage IS 'Charged past the buckets in the month (soft limit).';
COMMENT ON COLUMN credits.usage_monthly.refunded IS 'Given back in the month (overage first), whatever month the charge was.';
COMMENT ON COLUMN credits.usage_monthly.net_used IS 'used + overage - refunded.';
COMMENT ON COLUMN credits.usage_monthly.billable_overage IS 'Overage x the plan''s overage rate, net of refunds.';
COMMENT ON COLUMN credits.usage_monthly.actions IS 'Actions committed in the month.';
COMMENT ON COLUMN credits.usage_monthly.byok_used IS 'Usage of BYOK accounts (never metered).';

COMMENT ON COLUMN credits.transactions.entry_id IS 'The ledger row''s id, increasing.';
COMMENT ON COLUMN credits.transactions.account_id IS 'The account.';
COMMENT ON COLUMN credits.transactions.created_at IS 'When the row was written.';
COMMENT ON COLUMN credits.transactions.category IS 'purchase, grant, reset, deduction, refund, expiry or debt_payment.';
COMMENT ON COLUMN credits.transactions.kind IS 'The ledger row''s kind (charge, overage, refund, allocation, rollover, topup, pack, expire, ...).';
COMMENT ON COLUMN credits.transactions.amount IS 'The change of the balance: positive adds credits, negative takes them.';
COMMENT ON COLUMN credits.transactions.product IS 'The AI product, on the rows of an action that carry it (charges, overage, refunds).';
COMMENT ON COLUMN credits.transactions.action IS 'The action label given to credits_reserve, on rows of an action.';
COMMENT ON COLUMN credits.transactions.reservation_id IS 'The reservation the row belongs to, on rows of an action.';
COMMENT ON COLUMN credits.transactions.bucket_id IS 'The credit bucket the row changed.';
COMMENT ON COLUMN credits.transactions.project IS 'The reservation''s metadata->>''project''.';
COMMENT ON COLUMN credits.transactions.session IS 'The reservation''s metadata->>''session''.';
COMMENT ON COLUMN credits.transactions.actor IS 'The role that made the call.';
COMMENT ON COLUMN credits.transactions.idempotency_key IS 'The idempotency key of the call, if any.';
COMMENT ON COLUMN credits.transactions.metadata IS 'The row''s metadata: a grant''s, or a refund''s reason.';

COMMENT ON COLUMN credits.actions.reservation_id IS 'The reservation (what credits_reserve returned).';
COMMENT ON COLUMN credits.actions.account_id IS 'The account.';
COMMENT ON COLUMN credits.actions.created_at IS 'When it was reserved.';
COMMENT ON COLUMN credits.actions.resolved_at IS 'When it was committed, released or marked expired; NULL before (a hold past its ttl shows as expired before a write marks it).';
COMMENT ON COLUMN credits.actions.product IS 'The AI product.';
COMMENT ON COLUMN credits.actions.action IS 'The action label given to credits_reserve.';
COMMENT ON COLUMN credits.actions.status IS 'pending, committed, refunded (failed actions show so), partially_refunded or expired.';
COMMENT ON COLUMN credits.actions.reserved IS 'The amount reserved.';
COMMENT ON COLUMN credits.actions.charged IS 'The amount committed; 0 until then.';
COMMENT ON COLUMN credits.actions.refunded IS 'The amount refunded of the charge.';
COMMENT ON COLUMN credits.actions.net IS 'charged - refunded.';
COMMENT ON COLUMN credits.actions.overage IS 'What a pending hold holds, or a commit charged, past the buckets; 0 for a hold released or expired.';
COMMENT ON COLUMN credits.actions.byok IS 'Reserved on a BYOK account (not metered).';
COMMENT ON COLUMN credits.actions.expires_at IS 'When the hold stops counting if not committed (created_at + ttl).';
COMMENT ON COLUMN credits.actions.project IS 'metadata->>''project''.';
COMMENT ON COLUMN credits.actions.session IS 'metadata->>''session''.';
COMMENT ON COLUMN credits.actions.metadata IS 'The metadata given to credits_reserve, with a refund''s reason added.';

COMMENT ON COLUMN credits.metrics.account_id IS 'The account.';
COMMENT ON COLUMN credits.metrics.product IS 'The AI product.';
COMMENT ON COLUMN credits.metrics.actions_total IS 'Actions committed since the start (a counter).';
COMMENT ON COLUMN credits.metrics.used_total IS 'Charged to buckets (and as debt) since the start.';
COMMENT ON COLUMN credits.metrics.overage_total IS 'Charged past the buckets since the start.';
COMMENT ON COLUMN credits.metrics.refunded_total IS 'Given back since the start.';
COMMENT ON COLUMN credits.metrics.billable_overage_total IS 'Overage x rate, net of refunds, since the start.';
COMMENT ON COLUMN credits.metrics.byok_used_total IS 'Usage of BYOK accounts since the start.';
COMMENT ON COLUMN credits.metrics.scrape_time IS 'The time of the read (the extension''s clock).';

-- What each column of the tables means.
COMMENT ON COLUMN credits.plans.plan_id IS 'The plan''s name, as given to credits_plan_upsert.';
COMMENT ON COLUMN credits.plans.allocation IS 'Credits granted to each account on the plan at the start of every period.';
COMMENT ON COLUMN credits.plans.reset IS 'billing_date: periods start on the account''s anchor day; calendar_month: on the 1st (UTC).';
COMMENT ON COLUMN credits.plans.limit_mode IS 'hard: reserves fail once the buckets are empty; soft: overage up to soft_limit per period.';
COMMENT ON COLUMN credits.plans.soft_limit IS 'Overage allowed per period once every bucket is empty (soft limit_mode).';
COMMENT ON COLUMN credits.plans.rollover_cap IS 'At most this much unused allocation (and rollover) is carried into the next period.';
COMMENT ON COLUMN credits.plans.overage_rate IS 'Price multiplier stored on overage ledger rows (billable overage = overage x rate).';
COMMENT ON COLUMN credits.plans.purchases_allowed IS 'false: credits_purchase and auto-recharge are refused (CR010) for the plan''s accounts.';
COMMENT ON COLUMN credits.plans.created_at IS 'When the plan was created.';
COMMENT ON COLUMN credits.plans.updated_at IS 'When the plan was last changed.';
COMMENT ON COLUMN credits.accounts.account_id IS 'The account, as the application names it.';
COMMENT ON COLUMN credits.accounts.plan_id IS 'The account''s plan (a plan_id of credits.plans; kept by triggers, not a foreign key).';
COMMENT ON COLUMN credits.accounts.billing_anchor IS 'Billing date: a billing_date plan''s periods start on its day of the month (UTC; the 29th-31st fall on the last day of shorter months).';
COMMENT ON COLUMN credits.accounts.byok IS 'Bring-your-own-key account: no allocation or buckets; usage logged, never metered.';
COMMENT ON COLUMN credits.accounts.limit_mode IS 'The account''s override of its plan''s limit_mode; NULL: the plan''s.';
COMMENT ON COLUMN credits.accounts.soft_limit IS 'The account''s override of its plan''s soft_limit; NULL: the plan''s.';
COMMENT ON COLUMN credits.accounts.override_until IS 'The overrides end then; NULL: never.';
COMMENT ON COLUMN credits.accounts.period_start IS 'Start of the period the account was last rolled to (credits.account_summary shows the rolled-forward one).';
COMMENT ON COLUMN credits.accounts.period_end IS 'End of that period (exclusive): the next reset.';
COMMENT ON COLUMN credits.accounts.balance IS 'What the account''s buckets hold: the sum of their balance, pending holds included.';
COMMENT ON COLUMN credits.accounts.held IS 'What pending reservations hold of the buckets: the sum of their held; never above balance.';
COMMENT ON COLUMN credits.accounts.overage_held IS 'Overage held by pending reservations (soft limit).';
COMMENT ON COLUMN credits.accounts.period_used IS 'Charged to buckets and as debt in the stored period, net of that period''s refunds.';
COMMENT ON COLUMN credits.accounts.period_overage IS 'Charged past the buckets in the stored period, net of that period''s refunds.';
COMMENT ON COLUMN credits.accounts.debt IS 'Owed from commits forced past the limit; reserves fail (CR008) while it is above 0, and new credit pays it first.';
COMMENT ON COLUMN credits.accounts.next_event IS 'No later than anything due (the period end, a live bucket''s or a pending hold''s expiry): write paths roll the account forward from then, and credits_maintenance() finds due accounts by it.';
COMMENT ON COLUMN credits.accounts.alert_percents IS 'Percentages of the period allocation (used + overage) that each raise a usage_alert event once per period.';
COMMENT ON COLUMN credits.accounts.alerts_raised IS 'The alert_percents already raised this period.';
COMMENT ON COLUMN credits.accounts.next_alert_at IS 'The usage (used + overage) at which the next alert is due; NULL: none left this period.';
COMMENT ON COLUMN credits.accounts.recharge_below IS 'The auto-recharge threshold while auto-recharge is on (a copy of credits.auto_recharge''s); NULL: off.';
COMMENT ON COLUMN credits.accounts.created_at IS 'When the account was created.';
COMMENT ON COLUMN credits.accounts.products_off IS 'The products switched off for this account, sorted (a copy of its credits.account_products rows with enabled = false); NULL: none.';
COMMENT ON COLUMN credits.buckets.account_id IS 'The account.';
COMMENT ON COLUMN credits.buckets.bucket_id IS 'The bucket (what credits_grant returned).';
COMMENT ON COLUMN credits.buckets.kind IS 'allocation, rollover, topup, promo, pack or adjustment.';
COMMENT ON COLUMN credits.buckets.priority IS 'Consumption order by kind: 0 allocation and rollover, 1 topup and promo, 2 pack and adjustment.';
COMMENT ON COLUMN credits.buckets.amount IS 'The amount granted.';
COMMENT ON COLUMN credits.buckets.balance IS 'What the bucket holds now, pending holds included: the sum of its ledger rows.';
COMMENT ON COLUMN credits.buckets.held IS 'What pending reservations hold of it; never above balance.';
COMMENT ON COLUMN credits.buckets.expires_at IS 'When what is left expires (written off with an expire ledger row); NULL: never.';
COMMENT ON COLUMN credits.buckets.created_at IS 'When it was granted.';
COMMENT ON COLUMN credits.buckets.metadata IS 'The metadata given to credits_grant (a purchase''s pack and payment reference).';
COMMENT ON COLUMN credits.reservations.reservation_id IS 'The reservation (what credits_reserve returned).';
COMMENT ON COLUMN credits.reservations.account_id IS 'The account.';
COMMENT ON COLUMN credits.reservations.status IS 'pending, committed, released (refunded while pending) or expired.';
COMMENT ON COLUMN credits.reservations.product IS 'The AI product.';
COMMENT ON COLUMN credits.reservations.action IS 'The action label given to credits_reserve.';
COMMENT ON COLUMN credits.reservations.amount IS 'The amount reserved.';
COMMENT ON COLUMN credits.reservations.draw_buckets IS 'The buckets drawn from, in consumption order, with draw_amounts.';
COMMENT ON COLUMN credits.reservations.draw_amounts IS 'Per bucket of draw_buckets: what the hold holds (pending), held (released, expired) or what the commit charged (committed).';
COMMENT ON COLUMN credits.reservations.overage IS 'Past the buckets: the overage held (pending) or charged (committed).';
COMMENT ON COLUMN credits.reservations.overage_rate IS 'The plan''s overage_rate when the overage was charged; NULL without overage.';
COMMENT ON COLUMN credits.reservations.debt IS 'What a forced commit recorded as debt.';
COMMENT ON COLUMN credits.reservations.charged IS 'The amount committed; NULL until then.';
COMMENT ON COLUMN credits.reservations.refunded IS 'The amount refunded of the charge.';
COMMENT ON COLUMN credits.reservations.byok IS 'Reserved on a BYOK account (no balance effect).';
COMMENT ON COLUMN credits.reservations.period_start IS 'The account''s period when reserved, then when committed: a refund in another period leaves the current period''s figures alone.';
COMMENT ON COLUMN credits.reservations.expires_at IS 'When the hold stops counting if not committed (created_at + ttl).';
COMMENT ON COLUMN credits.reservations.created_at IS 'When it was reserved.';
COMMENT ON COLUMN credits.reservations.resolved_at IS 'When it was committed, released or marked expired; NULL while pending.';
COMMENT ON COLUMN credits.reservations.metadata IS 'The metadata given to credits_reserve, with a refund''s reason added.';
COMMENT ON COLUMN credits.ledger.entry_id IS 'The row''s id, increasing.';
COMMENT ON COLUMN credits.ledger.account_id IS 'The account.';
COMMENT ON COLUMN credits.ledger.kind IS 'Credit added (allocation, rollover, topup, promo, pack, adjustment, purchase; plan_change, negative when the allocation shrinks), usage (charge, overage, debt), given back (refund, overage_refund, debt_refund), debt_payment (new credit paying off debt) or expire (written off).';
COMMENT ON COLUMN credits.ledger.amount IS 'The change of the balance: positive adds credits, negative takes them.';
COMMENT ON COLUMN credits.ledger.bucket_id IS 'The bucket whose balance the row changes; NULL on overage and debt rows.';
COMMENT ON COLUMN credits.ledger.reservation_id IS 'The reservation of the action the row belongs to.';
COMMENT ON COLUMN credits.ledger.product IS 'The AI product, on the rows of an action.';
COMMENT ON COLUMN credits.ledger.action IS 'The action label given to credits_reserve, on the rows of an action.';
COMMENT ON COLUMN credits.ledger.rate IS 'On overage and overage_refund rows: the plan''s overage_rate when the overage was charged (billable overage = overage x rate).';
COMMENT ON COLUMN credits.ledger.actor IS 'The role that made the call (SET ROLE counts).';
COMMENT ON COLUMN credits.ledger.idempotency_key IS 'The idempotency key of the call, if any (a purchase''s payment reference).';
COMMENT ON COLUMN credits.ledger.metadata IS 'The row''s metadata: a grant''s, or a refund''s reason.';
COMMENT ON COLUMN credits.ledger.created_at IS 'When the row was written (the extension''s clock).';
COMMENT ON COLUMN credits.ledger.seq IS 'The row''s number in its account''s hash chain, from 1.';
COMMENT ON COLUMN credits.ledger.hash IS 'SHA-256 (hex) of the previous row''s hash and this row''s content: credits_verify() recomputes the chain.';
COMMENT ON COLUMN credits.idempotency_keys.account_id IS 'The account.';
COMMENT ON COLUMN credits.idempotency_keys.fn IS 'The function the key belongs to: reserve, grant or refund.';
COMMENT ON COLUMN credits.idempotency_keys.key IS 'The idempotency key, as given.';
COMMENT ON COLUMN credits.idempotency_keys.request IS 'The first call''s arguments, compared by value with a replay''s.';
COMMENT ON COLUMN credits.idempotency_keys.result IS 'The first call''s result, as text, returned to a replay.';
COMMENT ON COLUMN credits.idempotency_keys.created_at IS 'When the first call stored it.';
COMMENT ON COLUMN credits.events.event_id IS 'The event''s id, increasing.';
COMMENT ON COLUMN credits.events.account_id IS 'The account.';
COMMENT ON COLUMN credits.events.kind IS 'usage_alert or recharge_requested.';
COMMENT ON COLUMN credits.events.payload IS 'The event''s details (README, Events).';
COMMENT ON COLUMN credits.events.created_at IS 'When its cause was written.';
COMMENT ON COLUMN credits.events.visible_at IS 'When it may be claimed: at once, or when the last claim''s visibility runs out.';
COMMENT ON COLUMN credits.events.deliveries IS 'How many times it was claimed.';
COMMENT ON COLUMN credits.events.claimed_by IS 'The consumer of the last claim; NULL: never claimed.';
COMMENT ON COLUMN credits.events.acked_at IS 'When a consumer acknowledged it; NULL: not yet.';
COMMENT ON COLUMN credits.products.product IS 'The AI product, as given to credits_reserve.';
COMMENT ON COLUMN credits.products.enabled IS 'false: disabled for every account (reserves fail with CR009).';
COMMENT ON COLUMN credits.products.description IS 'What the product is, for people.';
COMMENT ON COLUMN credits.products.created_at IS 'When it was registered.';
COMMENT ON COLUMN credits.account_products.account_id IS 'The account.';
COMMENT ON COLUMN credits.account_products.product IS 'The AI product.';
COMMENT ON COLUMN credits.account_products.enabled IS 'false: disabled for this account (CR009); true does not enable a product disabled for everyone.';
COMMENT ON COLUMN credits.account_products.updated_at IS 'When it was last set.';
COMMENT ON COLUMN credits.packs.pack_id IS 'The pack''s name.';
COMMENT ON COLUMN credits.packs.credits IS 'Credits a purchase of the pack grants (a pack bucket, never expiring).';
COMMENT ON COLUMN credits.packs.price IS 'Its price, in currency.';
COMMENT ON COLUMN credits.packs.currency IS 'The currency of price.';
COMMENT ON COLUMN credits.packs.active IS 'false: no longer for sale (purchases and auto-recharge refuse it).';
COMMENT ON COLUMN credits.packs.updated_at IS 'When it was last changed.';
COMMENT ON COLUMN credits.purchases.account_id IS 'The account.';
COMMENT ON COLUMN credits.purchases.purchase_id IS 'The purchase.';
COMMENT ON COLUMN credits.purchases.pack_id IS 'The pack bought.';
COMMENT ON COLUMN credits.purchases.credits IS 'Credits granted (the pack''s at the time).';
COMMENT ON COLUMN credits.purchases.price IS 'Price paid (the pack''s at the time).';
COMMENT ON COLUMN credits.purchases.currency IS 'The currency of price.';
COMMENT ON COLUMN credits.purchases.payment_ref IS 'The payment''s reference (a recharge request''s id for auto-recharge): one purchase per reference and account.';
COMMENT ON COLUMN credits.purchases.bucket_id IS 'The pack bucket it granted.';
COMMENT ON COLUMN credits.purchases.auto_recharge IS 'It completed a recharge request.';
COMMENT ON COLUMN credits.purchases.created_at IS 'When it was recorded.';
COMMENT ON COLUMN credits.auto_recharge.account_id IS 'The account.';
COMMENT ON COLUMN credits.auto_recharge.enabled IS 'Whether auto-recharge is on.';
COMMENT ON COLUMN credits.auto_recharge.pack_id IS 'The pack it requests.';
COMMENT ON COLUMN credits.auto_recharge.threshold IS 'It requests the pack when the balance (pending holds included) falls below this.';
COMMENT ON COLUMN credits.auto_recharge.monthly_cap IS 'At most this much (in the pack''s currency) requested or bought by auto-recharge per calendar month (UTC; failed requests do not count).';
COMMENT ON COLUMN credits.auto_recharge.updated_at IS 'When it was last set.';
COMMENT ON COLUMN credits.recharge_requests.account_id IS 'The account.';
COMMENT ON COLUMN credits.recharge_requests.request_id IS 'The request: pass it as credits_purchase''s payment_ref to complete it.';
COMMENT ON COLUMN credits.recharge_requests.pack_id IS 'The pack requested.';
COMMENT ON COLUMN credits.recharge_requests.credits IS 'Its credits at the time.';
COMMENT ON COLUMN credits.recharge_requests.price IS 'Its price at the time (counted against the monthly cap).';
COMMENT ON COLUMN credits.recharge_requests.currency IS 'The currency of price.';
COMMENT ON COLUMN credits.recharge_requests.status IS 'pending, failed (credits_recharge_fail) or completed (credits_purchase with the request''s id, also after it failed).';
COMMENT ON COLUMN credits.recharge_requests.reason IS 'Why it failed, as given to credits_recharge_fail.';
COMMENT ON COLUMN credits.recharge_requests.created_at IS 'When auto-recharge wrote it.';
COMMENT ON COLUMN credits.recharge_requests.resolved_at IS 'When it completed or failed; NULL while pending.';
COMMENT ON COLUMN credits.prices.product IS 'The AI product.';
COMMENT ON COLUMN credits.prices.action IS 'The action.';
COMMENT ON COLUMN credits.prices.tier IS 'The model tier (default standard).';
COMMENT ON COLUMN credits.prices.unit IS 'call, input_tokens_1k, output_tokens_1k, image or second.';
COMMENT ON COLUMN credits.prices.price IS 'Credits per unit.';
COMMENT ON COLUMN credits.prices.updated_at IS 'When it was last set.';
COMMENT ON COLUMN credits.account_roles.account_id IS 'The account.';
COMMENT ON COLUMN credits.account_roles.role_id IS 'The role bound to it: its members see and touch only their bound accounts.';
COMMENT ON COLUMN credits.account_roles.created_at IS 'When the binding was made.';
COMMENT ON COLUMN credits.usage_rollup.account_id IS 'The account.';
COMMENT ON COLUMN credits.usage_rollup.day IS 'The UTC day of the commits and refunds.';
COMMENT ON COLUMN credits.usage_rollup.product IS 'The AI product.';
COMMENT ON COLUMN credits.usage_rollup.used IS 'Charged to buckets and as debt (refunds are in refunded).';
COMMENT ON COLUMN credits.usage_rollup.overage IS 'Charged past every bucket.';
COMMENT ON COLUMN credits.usage_rollup.refunded IS 'Given back by refunds (overage refunds included).';
COMMENT ON COLUMN credits.usage_rollup.overage_refunded IS 'The part of refunded that was overage.';
COMMENT ON COLUMN credits.usage_rollup.billable_overage IS 'Overage x rate, net of refunds.';
COMMENT ON COLUMN credits.usage_rollup.actions IS 'Commits.';
COMMENT ON COLUMN credits.usage_rollup.byok_used IS 'BYOK usage, net of refunds.';

-- credits.accounts.plan_id: no longer a foreign key (above).
ALTER TABLE credits.accounts DROP CONSTRAINT accounts_plan_id_fkey;

-- An account's plan exists (not a foreign key: see credits.accounts in
-- sql/tables.sql). A plan that accounts are on is not deleted, renamed or
-- truncated away. Under READ COMMITTED the check sees every account
-- committed before it: an account being put on the plan holds its row FOR
-- KEY SHARE (credits_account_upsert), and the DELETE or UPDATE waits for
-- that transaction before this trigger runs. A snapshot of REPEATABLE READ
-- or SERIALIZABLE could miss that account, so such a transaction may not
-- delete or rename a plan at all.
CREATE FUNCTION credits._plan_in_use() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_plan    text;
    v_account text;
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        IF TG_OP = 'UPDATE' AND NEW.plan_id = OLD.plan_id THEN
            RETURN NEW;
        END IF;
        v_plan := OLD.plan_id;
        IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION USING
                ERRCODE = '0A000',
                MESSAGE = pg_catalog.format('plan "%s" can only be deleted or renamed under READ COMMITTED', v_plan),
                DETAIL = pg_catalog.format('This transaction is %s: its snapshot could miss an account put on the plan meanwhile.',
                                           pg_catalog.upper(pg_catalog.current_setting('transaction_isolation'))),
                HINT = 'Run the statement in a READ COMMITTED transaction.';
        END IF;
        SELECT a.account_id INTO v_account FROM credits.accounts a WHERE a.plan_id = v_plan LIMIT 1;
    ELSE
        SELECT a.plan_id, a.account_id INTO v_plan, v_account FROM credits.accounts a LIMIT 1;
    END IF;
    IF v_account IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = '23503',
            MESSAGE = pg_catalog.format('plan "%s" is in use: %s of credits.plans is refused', v_plan, TG_OP),
            DETAIL = pg_catalog.format('Account "%s" is on it, and accounts keep their plan.', v_account),
            HINT = 'Move its accounts to another plan first with credits_account_upsert(account_id => ..., plan_id => ...).';
    END IF;
    RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
END
$$;

CREATE TRIGGER plans_in_use
    BEFORE DELETE OR UPDATE OF plan_id ON credits.plans
    FOR EACH ROW EXECUTE FUNCTION credits._plan_in_use();
CREATE TRIGGER plans_in_use_truncate
    BEFORE TRUNCATE ON credits.plans
    FOR EACH STATEMENT EXECUTE FUNCTION credits._plan_in_use();

-- An account's plan_id changes only to a plan that exists, whose row it
-- then holds FOR KEY SHARE until it commits, as a foreign key's check
-- would. Only when plan_id changes: the writes of the hot path never set
-- it. (New accounts: credits_account_upsert checks and locks the plan. An
-- INSERT trigger would refuse pg_restore's rows of credits.accounts, which
-- pg_dump writes before those of credits.plans.)
CREATE FUNCTION credits._plan_exists() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM FROM credits.plans p WHERE p.plan_id = NEW.plan_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = '23503',
            MESSAGE = pg_catalog.format('unknown plan "%s" for account "%s"', NEW.plan_id, NEW.account_id),
            DETAIL = 'No plan has this plan_id.',
            HINT = 'Create it first with credits_plan_upsert().';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER accounts_plan_exists
    AFTER UPDATE OF plan_id ON credits.accounts
    FOR EACH ROW
    WHEN (NEW.plan_id IS DISTINCT FROM OLD.plan_id)
    EXECUTE FUNCTION credits._plan_exists();
REVOKE ALL ON FUNCTION credits._plan_in_use(), credits._plan_exists() FROM PUBLIC;
