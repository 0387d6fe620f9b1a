//! Integration tests: many client connections at once against a real
//! cluster (started by scripts/test.sh, which sets CREDITS_TEST_URL).
//! Each test gets its own database, so credits_verify() speaks of it alone.

mod common;

use common::{assert_verify_empty, base_url, connect, count, fresh_db, rows, sqlstate, Rng};
use postgres::Client;
use std::collections::HashSet;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

fn setup_account(client: &mut Client, plan_sql: &str, account: &str, plan: &str) {
    client.batch_execute(plan_sql).unwrap();
    client
        .execute(
            "SELECT credits_account_upsert(account_id => $1, plan_id => $2)",
            &[&account, &plan],
        )
        .unwrap();
}

/// Runs `n` closures on `n` connections released at the same instant.
fn race<T: Send + 'static>(
    url: &str,
    n: usize,
    f: impl Fn(usize, &mut Client) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(n));
    let f = Arc::new(f);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, f, url) = (barrier.clone(), f.clone(), url.to_string());
            thread::spawn(move || {
                let mut client = connect(&url);
                barrier.wait();
                f(i, &mut client)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn reserve(
    client: &mut Client,
    account: &str,
    amount: &str,
    key: Option<&str>,
) -> Result<String, String> {
    client
        .query_one(
            "SELECT credits_reserve(account_id => $1, amount => $2::text::numeric, product => 'editor', \
             idempotency_key => $3)::text",
            &[&account, &amount, &key],
        )
        .map(|row| row.get::<_, String>(0))
        .map_err(|e| sqlstate(&e))
}

#[test]
fn exactly_floor_of_balance_over_amount_reserves_succeed() {
    let url = fresh_db("it_floor");
    let mut client = connect(&url);
    setup_account(
        &mut client,
        "SELECT credits_plan_upsert(plan_id => 'p', allocation => 100)",
        "acme",
        "p",
    );
    // Half of the callers take the hot path, half the general one (a key).
    let results = race(&url, 40, |i, c| {
        let key = format!("k{i}");
        reserve(c, "acme", "7", (i % 2 == 0).then_some(key.as_str()))
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(
        ok, 14,
        "100 / 7 = 14 reserves must succeed, got {ok}: {results:?}"
    );
    assert!(
        refused.iter().all(|s| *s == "CR001"),
        "refusals must be CR001: {refused:?}"
    );
    let free: String = client
        .query_one(
            "SELECT (balance - held)::text FROM credits.accounts WHERE account_id = 'acme'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(free.parse::<f64>().unwrap(), 2.0);
    assert_verify_empty(&mut client);
}

/// An account whose next_event has come with nothing due (its last hold
/// was committed before its ttl ran out), then 40 connections at once:
/// unkeyed reserves (the fast path settles the false alarm under the
/// account lock) and keyed ones (the general path), half of each of a
/// product used for the first time (the general path registers it before
/// it locks the account, so the fast path must not lock the account first
/// when it declines for another reason: that order would deadlock).
#[test]
fn a_false_alarm_under_many_connections_stays_exact_without_deadlock() {
    let url = fresh_db("it_false_alarm");
    let mut client = connect(&url);
    client
        .batch_execute(
            "SET credits.now = '2031-01-10 12:00:00+00';
             SELECT credits_plan_upsert(plan_id => 'p', allocation => 100);",
        )
        .unwrap();
    // Four rounds, each on its own account and new product: a wrong lock
    // order deadlocks in some races only.
    for round in 0..4 {
        let account = format!("acme{round}");
        let fresh = format!("fresh{round}");
        client
            .batch_execute(&format!(
                "SET credits.now = '2031-01-10 12:00:00+00';
                 SELECT credits_account_upsert(account_id => '{account}', plan_id => 'p');
                 SELECT credits_commit(credits_reserve(account_id => '{account}', amount => 2,
                                                       product => 'editor', ttl => '1 minute'));
                 SET credits.now = '2031-01-10 12:05:00+00';"
            ))
            .unwrap();
        let due: bool = client
            .query_one(
                "SELECT next_event <= credits._now() FROM credits.accounts WHERE account_id = $1",
                &[&account],
            )
            .unwrap()
            .get(0);
        assert!(due, "{account} must be due (a false alarm) before the race");
        let (race_account, race_fresh) = (account.clone(), fresh.clone());
        let results = race(&url, 40, move |i, c| {
            c.batch_execute("SET credits.now = '2031-01-10 12:05:00+00'")
                .unwrap();
            let product = if i % 2 == 0 {
                "editor"
            } else {
                race_fresh.as_str()
            };
            let key = (i % 4 >= 2).then(|| format!("k{i}"));
            c.query_one(
                "SELECT credits_reserve(account_id => $1, amount => 7, product => $2, idempotency_key => $3)::text",
                &[&race_account, &product, &key],
            )
            .map(|row| row.get::<_, String>(0))
            .map_err(|e| sqlstate(&e))
        });
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let refused: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(
            ok, 14,
            "{account}: 98 / 7 = 14 reserves must succeed, got {ok}: {results:?}"
        );
        assert!(
            refused.iter().all(|s| *s == "CR001"),
            "{account}: refusals must be CR001 (no deadlock): {refused:?}"
        );
        let (free, ahead): (String, bool) = client
            .query_one(
                "SELECT (balance - held)::text, next_event > credits._now() FROM credits.accounts
                  WHERE account_id = $1",
                &[&account],
            )
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        assert_eq!(free.parse::<f64>().unwrap(), 0.0, "{account}");
        assert!(ahead, "{account}: next_event has moved on");
    }
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.ledger WHERE kind IN ('hold_expired', 'expire')"
        ),
        0,
        "nothing was due, so nothing expired"
    );
    assert_verify_empty(&mut client);
}

/// Whether the backend `pid` is waiting for a lock.
fn waiting_for_lock(client: &mut Client, pid: i32) -> bool {
    client
        .query_one(
            "SELECT coalesce((SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1), false)",
            &[&pid],
        )
        .unwrap()
        .get(0)
}

/// Waits until the backend `pid` is waiting for a lock (at most 30 s).
fn wait_until_blocked(client: &mut Client, pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if waiting_for_lock(client, pid) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("backend {pid} never waited for a lock");
}

/// Waits until the backend `pid`, which `waiter` drives, is waiting for a
/// lock (at most 30 s); fails at once, with what `waiter` returned, if it
/// returned without waiting. Gives `waiter` back.
fn wait_until_waiting<T: std::fmt::Debug>(
    client: &mut Client,
    pid: i32,
    waiter: thread::JoinHandle<T>,
) -> thread::JoinHandle<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !waiting_for_lock(client, pid) {
        if waiter.is_finished() {
            panic!(
                "backend {pid} returned without waiting for a lock: {:?}",
                waiter.join().unwrap()
            );
        }
        assert!(
            Instant::now() < deadline,
            "backend {pid} never waited for a lock"
        );
        thread::sleep(Duration::from_millis(10));
    }
    waiter
}

/// Session A writes `account` with `write` (its clock at 12:00:30, before
/// the account's `next_event`, 12:01) and keeps its transaction open; B
/// reserves at 12:05, a false alarm as far as its snapshot shows (the hold
/// that set `next_event` was committed, A's write is not visible), and
/// waits for A's row lock; then A commits. Returns B's reserve.
fn false_alarm_waiting_for(url: &str, account: &str, write: &str) -> Result<String, String> {
    let mut admin = connect(url);
    admin
        .batch_execute(&format!(
            "SET credits.now = '2031-01-10 12:00:00+00';
             SELECT credits_account_upsert(account_id => '{account}', plan_id => 'p');
             SELECT credits_commit(credits_reserve(account_id => '{account}', amount => 2, product => 'editor',
                                                   ttl => '1 minute'));"
        ))
        .unwrap();
    let mut a = connect(url);
    a.batch_execute("SET credits.now = '2031-01-10 12:00:30+00'; BEGIN")
        .unwrap();
    a.batch_execute(write).unwrap();
    let (b_url, b_account) = (url.to_string(), account.to_string());
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let b = thread::spawn(move || {
        let mut b = connect(&b_url);
        b.batch_execute("SET credits.now = '2031-01-10 12:05:00+00'")
            .unwrap();
        let pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        pid_tx.send(pid).unwrap();
        b.query_one(
            "SELECT credits_reserve(account_id => $1, amount => 5, product => 'editor')::text",
            &[&b_account],
        )
        .map(|row| row.get::<_, String>(0))
        .map_err(|e| sqlstate(&e))
    });
    let pid = pid_rx.recv().unwrap();
    wait_until_blocked(&mut admin, pid);
    a.batch_execute("COMMIT").unwrap();
    b.join().unwrap()
}

/// `account`'s `next_event` (as HH24:MI:SS) and held credits.
fn next_event_and_held(client: &mut Client, account: &str) -> (String, f64) {
    client
        .query_one(
            "SELECT to_char(next_event AT TIME ZONE 'UTC', 'HH24:MI:SS'), held::text
               FROM credits.accounts WHERE account_id = $1",
            &[&account],
        )
        .map(|r| (r.get(0), r.get::<_, String>(1).parse().unwrap()))
        .unwrap()
}

/// A false alarm is settled in the reserve's second guarded UPDATE, whose
/// sub-selects read the snapshot taken before it waited for the account.
/// Another session's write committed during that wait must not be missed:
/// a hold with a ttl shorter than the wait, or a bucket that expires during
/// it, would otherwise stay unnoticed past its expiry, with `next_event`
/// moved beyond it. The reserve leaves the call to the general path, which
/// expires them.
#[test]
fn writes_committed_while_a_false_alarm_waits_for_the_account_are_not_missed() {
    let url = fresh_db("it_false_alarm_wait");
    let mut admin = connect(&url);
    admin
        .batch_execute(
            "SET credits.now = '2031-01-10 12:00:00+00';
             SELECT credits_plan_upsert(plan_id => 'p', allocation => 100);",
        )
        .unwrap();

    // A hold of 10 seconds (A's fast reserve lowers next_event to 12:00:40).
    let reserved = false_alarm_waiting_for(
        &url,
        "x",
        "SELECT credits_reserve(account_id => 'x', amount => 3, product => 'editor', ttl => '10 seconds')",
    );
    assert!(reserved.is_ok(), "B's reserve succeeds: {reserved:?}");
    admin
        .batch_execute("SET credits.now = '2031-01-10 12:05:00+00'")
        .unwrap();
    let statuses: Vec<String> = admin
        .query(
            "SELECT status FROM credits.reservations WHERE account_id = 'x' ORDER BY created_at",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        statuses,
        ["committed", "expired", "pending"],
        "A's hold, expired at 12:00:40, is released by B, the first write path to lock the account after"
    );
    assert_eq!(
        next_event_and_held(&mut admin, "x"),
        ("12:20:00".to_string(), 5.0),
        "only B's hold is held, and next_event is its expiry"
    );

    // A promo bucket that expires at 12:02 with its credits unused.
    let reserved = false_alarm_waiting_for(
        &url,
        "y",
        "SELECT credits_grant(account_id => 'y', amount => 10, kind => 'promo',
                              expires_at => '2031-01-10 12:02:00+00')",
    );
    assert!(reserved.is_ok(), "B's reserve succeeds: {reserved:?}");
    let written_off = count(
        &mut admin,
        "SELECT count(*) FROM credits.ledger WHERE account_id = 'y' AND kind = 'expire' AND amount = -10",
    );
    assert_eq!(
        written_off, 1,
        "the promo bucket, expired at 12:02, is written off by B, the first write path to lock the account after"
    );
    assert_eq!(
        next_event_and_held(&mut admin, "y"),
        ("12:20:00".to_string(), 5.0),
        "only B's hold is held, and next_event is its expiry"
    );
    assert_verify_empty(&mut admin);
}

/// A call made by a session of its own, given its connection.
type Waiter<T> = Box<dyn FnOnce(&mut Client) -> T + Send>;

/// Session A runs `write` and keeps its transaction open; then each of
/// `calls` in a session of its own (all at one pinned instant), started
/// once the one before waits for a lock, so that they get A's row lock in
/// that order after A commits. Returns what each returned; fails if one
/// returned without waiting.
fn waiting_for<T: std::fmt::Debug + Send + 'static>(
    url: &str,
    write: &str,
    calls: Vec<Waiter<T>>,
) -> Vec<T> {
    let mut admin = connect(url);
    let mut a = connect(url);
    a.batch_execute("SET credits.now = '2031-01-10 12:00:00+00'; BEGIN")
        .unwrap();
    a.batch_execute(write).unwrap();
    let mut waiting = Vec::new();
    for call in calls {
        let b_url = url.to_string();
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let b = thread::spawn(move || {
            let mut b = connect(&b_url);
            b.batch_execute("SET credits.now = '2031-01-10 12:00:00+00'")
                .unwrap();
            let pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
            pid_tx.send(pid).unwrap();
            call(&mut b)
        });
        waiting.push(wait_until_waiting(&mut admin, pid_rx.recv().unwrap(), b));
    }
    a.batch_execute("COMMIT").unwrap();
    waiting.into_iter().map(|b| b.join().unwrap()).collect()
}

/// `waiting_for` with SQL calls that return one text: their answers or
/// SQLSTATEs.
fn calls_waiting_for(url: &str, write: &str, calls: &[&str]) -> Vec<Result<String, String>> {
    let calls = calls
        .iter()
        .map(|call| {
            let call = call.to_string();
            Box::new(move |b: &mut Client| {
                b.query_one(call.as_str(), &[])
                    .map(|row| row.get::<_, String>(0))
                    .map_err(|e| sqlstate(&e))
            }) as Waiter<_>
        })
        .collect();
    waiting_for(url, write, calls)
}

/// A product switched off for an account is judged under the account's
/// lock, as the general path judges it: a reserve that waited for the
/// switch-off's lock is refused once it commits, also when another write
/// of the account came between them. The reserve fast path had judged the
/// switch by the snapshot its guarded UPDATE took before the wait, and let
/// such a reserve through (found by replaying a concurrent run one call at
/// a time in the order of the account's lock).
#[test]
fn a_reserve_waiting_for_a_product_switch_off_is_refused() {
    let url = fresh_db("it_product_switch_wait");
    let mut admin = connect(&url);
    admin
        .batch_execute(
            "SET credits.now = '2031-01-10 12:00:00+00';
             SELECT credits_plan_upsert(plan_id => 'p', allocation => 100);
             SELECT credits_account_upsert(account_id => 'x', plan_id => 'p');
             SELECT credits_commit(credits_reserve(account_id => 'x', amount => 1, product => 'editor'));
             SELECT credits_commit(credits_reserve(account_id => 'x', amount => 1, product => 'seo'));",
        )
        .unwrap();
    let off = "SELECT credits_account_product_set(account_id => 'x', product => 'editor', enabled => false)";
    let on = "SELECT credits_account_product_set(account_id => 'x', product => 'editor', enabled => true)";
    let grant = "SELECT credits_grant(account_id => 'x', amount => 1, kind => 'pack')::text";
    let holds =
        "SELECT count(*) FROM credits.reservations WHERE account_id = 'x' AND product = 'editor'";
    for (what, call) in [
        (
            "a reserve",
            "SELECT credits_reserve(account_id => 'x', amount => 5, product => 'editor')::text",
        ),
        (
            "a keyed reserve",
            "SELECT credits_reserve(account_id => 'x', amount => 5, product => 'editor',
                                    idempotency_key => 'k1')::text",
        ),
    ] {
        for calls in [vec![call], vec![grant, call]] {
            let before = count(&mut admin, holds);
            let answers = calls_waiting_for(&url, off, &calls);
            assert!(
                answers[..calls.len() - 1].iter().all(|a| a.is_ok()),
                "{answers:?}"
            );
            assert_eq!(
                answers.last().unwrap(),
                &Err("CR009".to_string()),
                "{what} that waited for the switch-off (after {:?}) is refused",
                &calls[..calls.len() - 1]
            );
            assert_eq!(
                count(&mut admin, holds),
                before,
                "{what} left no reservation"
            );
            assert!(
                calls_waiting_for(&url, on, &calls)
                    .iter()
                    .all(|a| a.is_ok()),
                "{what} that waited for a switch-on goes through"
            );
            admin
                .batch_execute(
                    "SELECT credits_refund(reservation_id) FROM credits.reservations
                      WHERE account_id = 'x' AND status = 'pending';
                     SELECT credits_account_product_set(account_id => 'x', product => 'editor', enabled => false);
                     DELETE FROM credits.idempotency_keys;",
                )
                .unwrap();
        }
    }
    assert_eq!(
        rows(
            &mut admin,
            "SELECT products_off::text FROM credits.accounts WHERE account_id = 'x'"
        ),
        ["{editor}"]
    );
    assert_verify_empty(&mut admin);
}

#[test]
fn soft_limit_allows_exactly_the_allowance_of_overage() {
    let url = fresh_db("it_soft");
    let mut client = connect(&url);
    setup_account(
        &mut client,
        "SELECT credits_plan_upsert(plan_id => 'p', allocation => 50, limit_mode => 'soft', soft_limit => 10)",
        "acme",
        "p",
    );
    let results = race(&url, 40, |_, c| reserve(c, "acme", "3", None));
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        ok, 20,
        "(50 + 10) / 3 = 20 reserves must succeed: {results:?}"
    );
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|s| s == "CR001"));
    let row = client
        .query_one(
            "SELECT overage_held::text, held::text, balance::text FROM credits.accounts WHERE account_id = 'acme'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0).parse::<f64>().unwrap(), 10.0);
    assert_eq!(row.get::<_, String>(1).parse::<f64>().unwrap(), 50.0);
    assert_verify_empty(&mut client);
}

#[test]
fn commit_refund_and_expiry_racing_on_one_reservation_give_one_outcome() {
    let url = fresh_db("it_race");
    let mut client = connect(&url);
    setup_account(
        &mut client,
        "SELECT credits_plan_upsert(plan_id => 'p', allocation => 100000)",
        "acme",
        "p",
    );
    let n = 24;
    let mut ids = Vec::new();
    for _ in 0..n {
        let id: String = client
            .query_one(
                "SELECT credits_reserve(account_id => 'acme', amount => 10, product => 'editor', \
                 ttl => '150 milliseconds')::text",
                &[],
            )
            .unwrap()
            .get(0);
        ids.push(id);
    }
    let ids = Arc::new(ids);
    // Connection 2k commits reservation k, connection 2k+1 refunds it; the
    // later pairs start after the hold may have expired.
    let shared = ids.clone();
    let results = race(&url, 2 * n, move |i, c| {
        let id = &shared[i / 2];
        thread::sleep(Duration::from_millis(((i / 2) * 15) as u64));
        let sql = if i % 2 == 0 {
            "SELECT credits_commit(reservation_id => $1::text::uuid, amount => 8)::text"
        } else {
            "SELECT credits_refund(reservation_id => $1::text::uuid)::text"
        };
        c.query_one(sql, &[id])
            .map(|r| r.get::<_, String>(0))
            .map_err(|e| sqlstate(&e))
    });
    for k in 0..n {
        let (commit, refund) = (&results[2 * k], &results[2 * k + 1]);
        let row = client
            .query_one(
                "SELECT status, coalesce(charged, 0)::text, refunded::text FROM credits.reservations \
                 WHERE reservation_id = $1::text::uuid",
                &[&ids[k]],
            )
            .unwrap();
        let (status, charged, refunded): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        let (charged, refunded) = (
            charged.parse::<f64>().unwrap(),
            refunded.parse::<f64>().unwrap(),
        );
        match (commit, refund) {
            // Commit first, then the refund returned all of it.
            (Ok(c), Ok(r)) => {
                assert_eq!(status, "committed");
                assert_eq!(c.parse::<f64>().unwrap(), 8.0);
                assert_eq!(r.parse::<f64>().unwrap(), 8.0);
                assert_eq!((charged, refunded), (8.0, 8.0));
            }
            // Refund released the hold first; the commit found it released.
            (Err(c), Ok(r)) => {
                assert_eq!(c, "CR005");
                assert_eq!(status, "released");
                assert_eq!(r.parse::<f64>().unwrap(), 10.0);
            }
            // The hold expired first: the refund had nothing to give back,
            // the commit was judged as new usage.
            (Ok(c), Err(r)) => {
                assert_eq!(r, "CR005");
                assert_eq!(status, "committed");
                assert_eq!(c.parse::<f64>().unwrap(), 8.0);
                assert_eq!((charged, refunded), (8.0, 0.0));
            }
            (Err(c), Err(r)) => panic!("reservation {k}: both failed ({c}, {r})"),
        }
    }
    assert_verify_empty(&mut client);
}

/// Many connections commit the same reservation at once. The commit fast
/// path reads the reservation before it has the account lock; whoever gets
/// the lock second must see the first commit (the charge statement only
/// matches a still-pending reservation) and answer as a repeat: the same
/// result for the same amount, CR011 for another. One charge either way.
#[test]
fn many_connections_committing_one_reservation_charge_it_once() {
    let url = fresh_db("it_commit_race");
    let mut client = connect(&url);
    setup_account(
        &mut client,
        "SELECT credits_plan_upsert(plan_id => 'p', allocation => 100000)",
        "acme",
        "p",
    );
    let n = 16;
    for round in 0..8 {
        let id = reserve(&mut client, "acme", "10", None).unwrap();
        let shared = id.clone();
        let same_amount = round % 2 == 0;
        let results = race(&url, n, move |i, c| {
            let amount = if same_amount || i % 2 == 0 { "7" } else { "6" };
            c.query_one(
                "SELECT credits_commit(reservation_id => $1::text::uuid, amount => $2::text::numeric)::text",
                &[&shared, &amount],
            )
            .map(|r| r.get::<_, String>(0))
            .map_err(|e| sqlstate(&e))
        });
        assert_eq!(
            count(
                &mut client,
                &format!(
                    "SELECT count(*) FROM credits.ledger WHERE reservation_id = '{id}' AND kind = 'charge'"
                )
            ),
            1,
            "round {round}: one charge row"
        );
        let charged: String = client
            .query_one(
                "SELECT trim_scale(charged)::text FROM credits.reservations WHERE reservation_id = $1::text::uuid",
                &[&id],
            )
            .unwrap()
            .get(0);
        for r in &results {
            match r {
                Ok(v) => assert_eq!(
                    v, &charged,
                    "round {round}: every success returns the one charge"
                ),
                Err(e) => assert_eq!(e, "CR011", "round {round}: another amount is a conflict"),
            }
        }
        if same_amount {
            assert!(
                results.iter().all(|r| r.is_ok()),
                "round {round}: {results:?}"
            );
        }
    }
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.ledger WHERE kind = 'charge'"
        ),
        8
    );
    assert_verify_empty(&mut client);
}

#[test]
fn the_same_idempotency_key_from_many_connections_gives_one_effect() {
    let url = fresh_db("it_idem");
    let mut client = connect(&url);
    setup_account(
        &mut client,
        "SELECT credits_plan_upsert(plan_id => 'p', allocation => 100)",
        "acme",
        "p",
    );
    let reserves = race(&url, 32, |_, c| reserve(c, "acme", "5", Some("request-42")));
    let ids: HashSet<String> = reserves.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(ids.len(), 1, "every replay returns the first reservation");
    let grants = race(&url, 32, |_, c| {
        c.query_one(
            "SELECT credits_grant(account_id => 'acme', amount => 20, kind => 'pack', \
             idempotency_key => 'payment-7')::text",
            &[],
        )
        .map(|r| r.get::<_, String>(0))
        .map_err(|e| sqlstate(&e))
    });
    let buckets: HashSet<String> = grants.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(buckets.len(), 1, "every replay returns the first bucket");
    let counts = client
        .query_one(
            "SELECT (SELECT count(*) FROM credits.reservations), \
                    (SELECT count(*) FROM credits.buckets WHERE kind = 'pack')",
            &[],
        )
        .unwrap();
    assert_eq!(counts.get::<_, i64>(0), 1);
    assert_eq!(counts.get::<_, i64>(1), 1);
    assert_verify_empty(&mut client);
}

/// Session A reserves on `account` with the key `req-1` and keeps its
/// transaction open; B reserves `b_amount` with the same key, its look-up of
/// the key (before the account's lock) seeing nothing, and waits for A's
/// lock; then A ends with `a_end`. Returns A's reservation and B's reserve.
fn keyed_reserve_waiting_for(
    url: &str,
    account: &str,
    b_amount: &'static str,
    a_end: &str,
) -> (String, Result<String, String>) {
    let mut admin = connect(url);
    let mut a = connect(url);
    a.batch_execute("BEGIN").unwrap();
    let first = reserve(&mut a, account, "5", Some("req-1")).unwrap();
    let (b_url, b_account) = (url.to_string(), account.to_string());
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let b = thread::spawn(move || {
        let mut b = connect(&b_url);
        let pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        pid_tx.send(pid).unwrap();
        reserve(&mut b, &b_account, b_amount, Some("req-1"))
    });
    let pid = pid_rx.recv().unwrap();
    wait_until_blocked(&mut admin, pid);
    a.batch_execute(a_end).unwrap();
    (first, b.join().unwrap())
}

/// The reserve fast path stores a call's idempotency key under the
/// account's lock, after looking it up in a snapshot taken before the lock.
/// A call that waited for the lock while another call with the same key
/// held it finds the key taken only when storing it: it gives back the hold
/// it took and answers as the general path answers any replay.
#[test]
fn a_keyed_reserve_waiting_for_the_same_key_answers_as_a_replay() {
    let url = fresh_db("it_idem_wait");
    let mut admin = connect(&url);
    admin
        .batch_execute("SELECT credits_plan_upsert(plan_id => 'p', allocation => 100)")
        .unwrap();
    for account in ["replayed", "conflicting", "rolled_back"] {
        admin
            .execute(
                "SELECT credits_account_upsert(account_id => $1, plan_id => 'p')",
                &[&account],
            )
            .unwrap();
    }
    // The product is registered by a first action (the general path's).
    admin
        .batch_execute(
            "SELECT credits_commit(credits_reserve(account_id => 'replayed', amount => 1, product => 'editor'), 0)",
        )
        .unwrap();
    let held = |client: &mut Client, account: &str| -> (String, i64) {
        let row = client
            .query_one(
                "SELECT trim_scale(held)::text, (SELECT count(*) FROM credits.reservations r WHERE r.account_id = a.account_id
                                        AND r.status = 'pending')
                   FROM credits.accounts a WHERE account_id = $1",
                &[&account],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };

    let (first, second) = keyed_reserve_waiting_for(&url, "replayed", "5", "COMMIT");
    assert_eq!(
        second,
        Ok(first),
        "the same call returns the first reservation"
    );
    assert_eq!(
        held(&mut admin, "replayed"),
        ("5".to_string(), 1),
        "one hold, one pending reservation"
    );

    let (_, second) = keyed_reserve_waiting_for(&url, "conflicting", "6", "COMMIT");
    assert_eq!(
        second,
        Err("CR006".to_string()),
        "other arguments are refused"
    );
    assert_eq!(
        held(&mut admin, "conflicting"),
        ("5".to_string(), 1),
        "one hold, one pending reservation"
    );

    let (first, second) = keyed_reserve_waiting_for(&url, "rolled_back", "5", "ROLLBACK");
    let second = second.expect("the key is free again once the first call rolled back");
    assert_ne!(second, first, "a reservation of its own");
    assert_eq!(
        held(&mut admin, "rolled_back"),
        ("5".to_string(), 1),
        "one hold, one pending reservation"
    );
    let stored = count(
        &mut admin,
        &format!("SELECT count(*) FROM credits.idempotency_keys WHERE account_id = 'rolled_back' AND result = '{second}'"),
    );
    assert_eq!(stored, 1, "and its key stored");
    assert_verify_empty(&mut admin);
}

/// A mixed workload from `clients` connections on five accounts (two hard,
/// two soft, one BYOK) for 4 s: grants, reserves, commits (all, none, more
/// than reserved and forced) and refunds, each call its own transaction at
/// the isolation level `level(i)` of connection i, retried whole on 40001
/// as an application must at REPEATABLE READ or SERIALIZABLE (at READ
/// COMMITTED there is none). Checks credits_verify() at the end; returns
/// the SQLSTATEs of the refused calls, how many calls succeeded and how
/// many retries there were.
fn mixed_workload(
    name: &str,
    clients: usize,
    level: fn(usize) -> postgres::IsolationLevel,
) -> (Vec<String>, u32, u32) {
    let url = fresh_db(name);
    let mut client = connect(&url);
    client
        .batch_execute(
            "SELECT credits_plan_upsert(plan_id => 'hard', allocation => 500);
             SELECT credits_plan_upsert(plan_id => 'soft', allocation => 300, limit_mode => 'soft', soft_limit => 50);
             SELECT credits_account_upsert(account_id => 'a' || i, plan_id => CASE WHEN i % 2 = 0 THEN 'hard' ELSE 'soft' END)
               FROM generate_series(1, 4) i;
             SELECT credits_account_upsert(account_id => 'byok', plan_id => 'hard', byok => true);",
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(4);
    let results = race(&url, clients, move |i, c| {
        let level = level(i);
        let (mut seen, mut retries, mut done) = (Vec::new(), 0, 0);
        let mut rng = Rng(i as u64);
        while Instant::now() < deadline {
            let n = rng.step();
            let account = match (n >> 33) % 5 {
                4 => "byok".to_string(),
                k => format!("a{}", k + 1),
            };
            let amount = format!("{}", 1 + (n >> 40) % 9);
            let (reserved, r) = if (n >> 20).is_multiple_of(6) && account != "byok" {
                let (g, r) = with_retries(c, level, |tx| {
                    tx.query_one(
                        "SELECT credits_grant(account_id => $1, amount => $2::text::numeric, kind => 'topup')::text",
                        &[&account, &amount],
                    )
                    .map(|_| String::new())
                });
                (g.map(|_| None), r)
            } else {
                let (id, r) = with_retries(c, level, |tx| {
                    tx.query_one(
                        "SELECT credits_reserve(account_id => $1, amount => $2::text::numeric, product => 'editor')::text",
                        &[&account, &amount],
                    )
                    .map(|row| row.get::<_, String>(0))
                });
                (id.map(Some), r)
            };
            retries += r;
            let id = match reserved {
                Ok(Some(id)) => id,
                Ok(None) => {
                    done += 1;
                    continue;
                }
                Err(state) => {
                    seen.push(state);
                    continue;
                }
            };
            let sql = match (n >> 12) % 4 {
                0 => "SELECT credits_refund(reservation_id => $1::text::uuid)::text",
                1 => "SELECT credits_commit(reservation_id => $1::text::uuid, amount => 0)::text",
                2 => "SELECT credits_commit(reservation_id => $1::text::uuid, amount => $2::text::numeric * 2, force => true)::text",
                _ => "SELECT credits_commit(reservation_id => $1::text::uuid)::text",
            };
            let (outcome, r) = with_retries(c, level, |tx| {
                if sql.contains("$2") {
                    tx.query_one(sql, &[&id, &amount])
                } else {
                    tx.query_one(sql, &[&id])
                }
                .map(|_| ())
            });
            retries += r;
            match outcome {
                Ok(()) => done += 1,
                Err(state) => seen.push(state),
            }
        }
        (seen, retries, done)
    });
    assert_verify_empty(&mut client);
    let done = results.iter().map(|(_, _, d)| d).sum();
    let retries = results.iter().map(|(_, r, _)| r).sum();
    let states = results.into_iter().flat_map(|(s, _, _)| s).collect();
    (states, done, retries)
}

/// Only insufficient credits (CR001) and debt (CR008) may refuse a call of
/// the mixed workload: anything else (a deadlock: 40P01) fails the test.
fn assert_only_refusals(states: &[String], done: u32) {
    let unexpected: Vec<&String> = states
        .iter()
        .filter(|s| !["CR001", "CR008"].contains(&s.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected failures (deadlocks?): {unexpected:?}"
    );
    assert!(done > 0, "no call succeeded");
}

#[test]
fn a_mixed_workload_on_few_accounts_never_deadlocks_or_breaks_an_invariant() {
    let (states, done, _) =
        mixed_workload("it_mixed", 32, |_| postgres::IsolationLevel::ReadCommitted);
    assert_only_refusals(&states, done);
}

/// Plan changes and BYOK switches racing the hot path: 16 connections on 5
/// accounts reserve and commit (less, more, forced), refund what they
/// committed, grant, move accounts between a hard, a soft and a large plan
/// and switch them to and from BYOK. A plan change rewrites the current
/// allocation under the account's lock, so it must take the locks in the
/// same order as every other write path: no deadlock, no failure but the
/// domain refusals, and every invariant holds.
#[test]
fn plan_changes_and_byok_switches_racing_actions_never_deadlock_or_break_an_invariant() {
    let url = fresh_db("it_plan_changes");
    let mut client = connect(&url);
    client
        .batch_execute(
            "SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100);
             SELECT credits_plan_upsert(plan_id => 'small', allocation => 30, limit_mode => 'soft', soft_limit => 10);
             SELECT credits_plan_upsert(plan_id => 'big', allocation => 300, rollover_cap => 50);
             SELECT credits_account_upsert(account_id => 'a' || i, plan_id => 'pro') FROM generate_series(1, 5) i;",
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(4);
    let results = race(&url, 16, move |i, c| {
        let (mut seen, mut done) = (Vec::new(), 0u32);
        let mut rng = Rng(0x5eed + i as u64);
        while Instant::now() < deadline {
            let n = rng.step();
            let account = format!("a{}", 1 + (n >> 33) % 5);
            let amount = format!("{}", 1 + (n >> 40) % 9);
            let outcome = match (n >> 20) % 10 {
                0 => c.query_one(
                    "SELECT credits_account_upsert(account_id => $1, \
                     plan_id => (ARRAY['pro', 'small', 'big'])[1 + $2::text::int % 3])::text",
                    &[&account, &amount],
                ),
                1 => c.query_one(
                    "SELECT credits_account_upsert(account_id => $1, byok => $2::text::int % 4 = 0)::text",
                    &[&account, &amount],
                ),
                2 => c.query_one(
                    "SELECT credits_grant(account_id => $1, amount => $2::text::numeric)::text",
                    &[&account, &amount],
                ),
                3 => c.query_one(
                    "SELECT coalesce(max(credits_refund(reservation_id => r.reservation_id))::text, '') \
                       FROM (SELECT reservation_id FROM credits.reservations \
                              WHERE account_id = $1 AND status = 'committed' AND charged > refunded \
                              ORDER BY created_at DESC LIMIT 1) r",
                    &[&account],
                ),
                _ => match reserve(c, &account, &amount, None) {
                    Ok(id) => {
                        let sql = match (n >> 12) % 3 {
                            0 => "SELECT credits_commit(reservation_id => $1::text::uuid, amount => $2::text::numeric / 2)::text",
                            1 => "SELECT credits_commit(reservation_id => $1::text::uuid, amount => $2::text::numeric * 2, force => true)::text",
                            _ => "SELECT credits_commit(reservation_id => $1::text::uuid, amount => $2::text::numeric + 1)::text",
                        };
                        c.query_one(sql, &[&id, &amount])
                    }
                    Err(state) => {
                        seen.push(state);
                        continue;
                    }
                },
            };
            match outcome {
                Ok(_) => done += 1,
                Err(e) => seen.push(sqlstate(&e)),
            }
        }
        (seen, done)
    });
    let done: u32 = results.iter().map(|(_, d)| d).sum();
    let states: Vec<String> = results.into_iter().flat_map(|(s, _)| s).collect();
    eprintln!("{done} calls succeeded, {} refused", states.len());
    // Refused: insufficient credits, debt, a grant to a BYOK account, a
    // refund that lost the race for the same reservation.
    let unexpected: Vec<&String> = states
        .iter()
        .filter(|s| !["CR001", "CR008", "CR014", "CR012"].contains(&s.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected failures (deadlocks?): {unexpected:?}"
    );
    assert!(done > 100, "only {done} calls succeeded");
    assert!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.ledger WHERE kind = 'plan_change'"
        ) > 0,
        "no plan change took effect"
    );
    assert_verify_empty(&mut client);
}

/// Creates `n` accounts on a calendar plan as if 40 days ago, so that their
/// period has ended by the real clock and they are due for a reset.
fn due_accounts(client: &mut Client, prefix: &str, n: i32) {
    client
        .batch_execute(&format!(
            "SELECT set_config('credits.now', (now() - interval '40 days')::text, false);
             SELECT credits_plan_upsert(plan_id => 'monthly', allocation => 100, reset => 'calendar_month',
                                        rollover_cap => 20);
             SELECT credits_account_upsert(account_id => '{prefix}' || i, plan_id => 'monthly')
               FROM generate_series(1, {n}) i;
             SELECT credits_commit(credits_reserve(account_id => '{prefix}' || i, amount => i, product => 'editor'))
               FROM generate_series(1, {n}) i;
             RESET credits.now;"
        ))
        .unwrap();
}

/// Every account but `except` has one allocation per period it lived
/// through, and is in the period that contains now.
fn assert_rolled_to_now(client: &mut Client, except: &str) {
    let wrong: i64 = client
        .query_one(
            "SELECT count(*) FROM credits.accounts a
              WHERE a.account_id <> $1 AND (a.period_end <= now() OR a.period_start > now()
                 OR (SELECT count(*) FROM credits.ledger l WHERE l.account_id = a.account_id AND l.kind = 'allocation')
                    <> 1 + (extract(year FROM now() AT TIME ZONE 'UTC') * 12 + extract(month FROM now() AT TIME ZONE 'UTC'))
                         - (extract(year FROM a.created_at AT TIME ZONE 'UTC') * 12
                            + extract(month FROM a.created_at AT TIME ZONE 'UTC')))",
            &[&except],
        )
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0, "accounts not rolled exactly once per period");
}

#[test]
fn maintenance_in_batches_racing_reserves_rolls_every_account_once() {
    let url = fresh_db("it_maint");
    let mut client = connect(&url);
    due_accounts(&mut client, "m", 60);
    let deadline = Instant::now() + Duration::from_secs(3);
    let results = race(&url, 12, move |i, c| {
        let mut failures: Vec<String> = Vec::new();
        if i == 0 {
            if let Err(e) = c.batch_execute("CALL credits_maintenance(batch_size => 7)") {
                failures.push(sqlstate(&e));
            }
            return failures;
        }
        let mut rng = Rng(i as u64);
        while Instant::now() < deadline {
            let n = rng.step();
            let account = format!("m{}", 1 + (n >> 33) % 60);
            match reserve(c, &account, "3", None) {
                Ok(id) => {
                    if let Err(e) = c.query_one(
                        "SELECT credits_commit(reservation_id => $1::text::uuid)",
                        &[&id],
                    ) {
                        failures.push(sqlstate(&e));
                    }
                }
                Err(state) if state == "CR001" => {}
                Err(state) => failures.push(state),
            }
        }
        failures
    });
    let failures: Vec<String> = results.into_iter().flatten().collect();
    assert!(failures.is_empty(), "unexpected failures: {failures:?}");
    client
        .batch_execute("CALL credits_maintenance(batch_size => 7)")
        .unwrap();
    assert_rolled_to_now(&mut client, "");
    let before = count(&mut client, "SELECT count(*) FROM credits.ledger");
    client.batch_execute("CALL credits_maintenance()").unwrap();
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM credits.ledger"),
        before,
        "a second run changes nothing"
    );
    assert_verify_empty(&mut client);
}

#[test]
fn maintenance_rolls_every_other_account_past_one_that_cannot_be_rolled_and_fails_with_cr018() {
    let url = fresh_db("it_maint_bad");
    let mut client = connect(&url);
    due_accounts(&mut client, "m", 60);
    // An account whose next reset would carry its balance past
    // numeric(20,6): a pack of 4e13 and an allocation of 7e13. The API
    // refuses to get there (credits_plan_upsert checks the room its
    // accounts have), so the plan is raised behind its back: this stands
    // for any account whose roll-forward fails.
    client
        .batch_execute(
            "SELECT set_config('credits.now', (now() - interval '40 days')::text, false);
             SELECT credits_plan_upsert(plan_id => 'big', allocation => 50000000000000, reset => 'calendar_month');
             SELECT credits_account_upsert(account_id => 'bad', plan_id => 'big');
             SELECT credits_commit(credits_reserve(account_id => 'bad', amount => 50000000000000, product => 'editor'));
             SELECT credits_grant(account_id => 'bad', amount => 40000000000000, kind => 'pack');
             RESET credits.now;
             UPDATE credits.plans SET allocation = 70000000000000 WHERE plan_id = 'big';",
        )
        .unwrap();
    let warnings = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut config: postgres::Config = url.parse().unwrap();
    let seen = warnings.clone();
    config.notice_callback(move |n| {
        if n.severity() == "WARNING" {
            seen.lock()
                .unwrap()
                .push(format!("{} | {}", n.message(), n.detail().unwrap_or("")));
        }
    });
    let mut runner = config.connect(postgres::NoTls).unwrap();

    for run in 1..=2 {
        let before = count(&mut client, "SELECT count(*) FROM credits.ledger");
        let err = runner
            .batch_execute("CALL credits_maintenance(batch_size => 7)")
            .unwrap_err();
        assert_eq!(sqlstate(&err), "CR018", "run {run}: {err}");
        let db = err.as_db_error().unwrap();
        assert!(
            db.message()
                .contains("1 of the due accounts could not be brought up to date"),
            "run {run}: {}",
            db.message()
        );
        assert!(
            db.detail()
                .unwrap_or("")
                .starts_with("\"bad\": numeric field overflow (22003)."),
            "run {run}: {:?}",
            db.detail()
        );
        assert!(db.hint().is_some_and(|h| h.contains("credits_reset")));
        let warned = std::mem::take(&mut *warnings.lock().unwrap());
        assert_eq!(warned.len(), 1, "run {run}: one warning: {warned:?}");
        assert!(
            warned[0].starts_with(
                "credits_maintenance: account \"bad\" cannot be brought up to date | numeric field overflow (SQLSTATE 22003)"
            ),
            "run {run}: {warned:?}"
        );
        assert_eq!(
            rows(
                &mut client,
                "SELECT account_id FROM credits.accounts WHERE period_end <= now() ORDER BY account_id"
            ),
            ["bad"],
            "run {run}: every other account was brought up to date and committed"
        );
        if run == 2 {
            assert_eq!(
                count(&mut client, "SELECT count(*) FROM credits.ledger"),
                before,
                "the second run tries the account again and changes nothing"
            );
        }
        // The run released its advisory lock: another session can run.
        let mut other = connect(&url);
        assert_eq!(
            sqlstate(
                &other
                    .batch_execute("CALL credits_maintenance()")
                    .unwrap_err()
            ),
            "CR018"
        );
    }
    assert_rolled_to_now(&mut client, "bad");
    assert_verify_empty(&mut client);
}

#[test]
fn overlapping_maintenance_runs_in_batches_of_one_roll_every_account_once() {
    // Each run takes its lock again after every commit, so runs started
    // together take turns between batches: each either finds the lock
    // taken and stops, or rolls accounts; none fails, and every account is
    // rolled once.
    let url = fresh_db("it_maint_overlap");
    let mut client = connect(&url);
    due_accounts(&mut client, "m", 60);
    let results = race(&url, 6, |_, c| {
        (0..5)
            .map(|_| {
                c.batch_execute("CALL credits_maintenance(batch_size => 1)")
                    .map_err(|e| sqlstate(&e))
            })
            .collect::<Result<Vec<()>, String>>()
    });
    for r in results {
        assert!(r.is_ok(), "a run failed: {r:?}");
    }
    client
        .batch_execute("CALL credits_maintenance(batch_size => 1)")
        .unwrap();
    assert_rolled_to_now(&mut client, "");
    assert_verify_empty(&mut client);
}

#[test]
fn a_failed_maintenance_run_leaves_its_lock_to_no_one_and_a_transaction_block_is_refused() {
    let url = fresh_db("it_maint_lock");
    let mut client = connect(&url);
    due_accounts(&mut client, "m", 5);
    let notices = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut config: postgres::Config = url.parse().unwrap();
    let seen = notices.clone();
    config.notice_callback(move |n| seen.lock().unwrap().push(n.message().to_string()));
    let mut runner = config.connect(postgres::NoTls).unwrap();
    let run = |runner: &mut Client| {
        runner.batch_execute("CALL credits_maintenance()").unwrap();
        std::mem::take(&mut *notices.lock().unwrap())
    };

    // A session whose run fails after it has started (called from a
    // function, Postgres refuses its first COMMIT), and that lives on, as
    // a psql session or a pooled connection does.
    let mut failed = connect(&url);
    failed
        .batch_execute(
            "CREATE FUNCTION pg_temp.run_maintenance() RETURNS void LANGUAGE plpgsql
               AS $$ BEGIN CALL credits_maintenance(); END $$",
        )
        .unwrap();
    let err = failed
        .batch_execute("SELECT pg_temp.run_maintenance()")
        .unwrap_err();
    assert_eq!(sqlstate(&err), "2D000", "{err}");
    // Inside a transaction block the run refuses to start.
    let err = failed
        .batch_execute("BEGIN; CALL credits_maintenance();")
        .unwrap_err();
    assert_eq!(sqlstate(&err), "25001", "{err}");
    let db = err.as_db_error().unwrap();
    assert_eq!(
        db.message(),
        "credits_maintenance() cannot run inside a transaction block"
    );
    assert!(db.detail().is_some() && db.hint().is_some_and(|h| h.contains("pg_cron")));
    failed.batch_execute("ROLLBACK").unwrap();

    // Neither left the lock behind: another session's run does its work.
    assert_eq!(
        run(&mut runner),
        ["credits_maintenance: 5 accounts brought up to date"]
    );
    assert_rolled_to_now(&mut client, "");

    // A run in progress (its lock held in an open transaction) keeps the
    // next one out, and only while it lasts.
    failed
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(7472616, 1);")
        .unwrap();
    assert_eq!(
        run(&mut runner),
        ["credits_maintenance: another run is in progress, nothing to do"]
    );
    failed.batch_execute("ROLLBACK").unwrap();
    assert_eq!(
        run(&mut runner),
        ["credits_maintenance: 0 accounts brought up to date"]
    );
    assert_verify_empty(&mut client);
}

#[test]
fn pg_cron_runs_the_readme_jobs_rolls_a_due_account_and_purges_old_events() {
    // pg_cron runs its jobs in the database named by cron.database_name,
    // `credits` in the clusters of scripts/cluster.sh.
    let url = format!("{} dbname=credits", base_url());
    let mut client = connect(&url);
    client
        .batch_execute(
            "CREATE EXTENSION IF NOT EXISTS pg_cron;
             SELECT cron.unschedule(jobid) FROM cron.job
              WHERE jobname IN ('credits-maintenance', 'credits-events-purge');
             DROP EXTENSION IF EXISTS credits CASCADE;
             CREATE EXTENSION credits;",
        )
        .unwrap();
    due_accounts(&mut client, "cron", 3);
    // An event acknowledged 40 days ago and one nobody acknowledged, for
    // the README's events purge job.
    client
        .batch_execute(
            "INSERT INTO credits.events (account_id, kind, payload, created_at, visible_at, acked_at)
             VALUES ('cron1', 'usage_alert', '{\"old\": true}', now() - interval '41 days', now() - interval '41 days',
                     now() - interval '40 days'),
                    ('cron1', 'usage_alert', '{\"old\": false}', now() - interval '41 days', now() - interval '41 days',
                     NULL);",
        )
        .unwrap();
    let scheduled_at: String = client.query_one("SELECT now()::text", &[]).unwrap().get(0);
    let mut schedule = |name: &str, command: &str| -> i64 {
        client
            .query_one(
                "SELECT cron.schedule($1, '* * * * *', $2)",
                &[&name, &command],
            )
            .unwrap()
            .get(0)
    };
    let jobs = [
        schedule("credits-maintenance", "CALL credits_maintenance()"),
        // The README's command, run every minute here.
        schedule(
            "credits-events-purge",
            "SELECT credits_events_purge(older_than => '30 days')",
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(130);
    let mut statuses = Vec::new();
    for job in jobs {
        let status = loop {
            let row = client
                .query_opt(
                    "SELECT status FROM cron.job_run_details WHERE jobid = $1 AND status IN ('succeeded', 'failed')
                        AND start_time >= $2::text::timestamptz
                      ORDER BY start_time DESC LIMIT 1",
                    &[&job, &scheduled_at],
                )
                .unwrap();
            if let Some(row) = row {
                break row.get::<_, String>(0);
            }
            assert!(
                Instant::now() < deadline,
                "pg_cron did not run job {job} within 130 s"
            );
            thread::sleep(Duration::from_secs(2));
        };
        statuses.push(status);
    }
    for job in jobs {
        client
            .execute("SELECT cron.unschedule($1::bigint)", &[&job])
            .unwrap();
    }
    assert_eq!(statuses, ["succeeded", "succeeded"]);
    assert_rolled_to_now(&mut client, "");
    let rolled_by_cron: i64 = client
        .query_one(
            "SELECT count(DISTINCT account_id) FROM credits.ledger WHERE kind = 'allocation' AND created_at > now() - interval '35 days'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        rolled_by_cron, 3,
        "the job granted each account its new allocation"
    );
    assert_eq!(
        rows(
            &mut client,
            "SELECT payload::text FROM credits.events WHERE payload ? 'old' ORDER BY event_id"
        ),
        [r#"{"old": false}"#],
        "the purge job deleted the old acknowledged event and kept the unacknowledged one"
    );
    assert_verify_empty(&mut client);
}

#[test]
fn concurrent_commits_crossing_the_threshold_raise_one_request_and_one_alert() {
    let url = fresh_db("it_cross");
    let mut client = connect(&url);
    client
        .batch_execute(
            "SELECT credits_plan_upsert(plan_id => 'p', allocation => 100);
             SELECT credits_pack_upsert(pack_id => 'p20', credits => 200, price => 20);
             SELECT credits_account_upsert(account_id => 'acme', plan_id => 'p', alert_percents => '{50}');
             SELECT credits_auto_recharge_set(account_id => 'acme', enabled => true, pack => 'p20', threshold => 60);
             CREATE TABLE holds AS
               SELECT i, credits_reserve(account_id => 'acme', amount => 4, product => 'editor')::text AS id
                 FROM generate_series(1, 20) i;",
        )
        .unwrap();
    let ids: Vec<String> = client
        .query("SELECT id FROM holds ORDER BY i", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ids = Arc::new(ids);
    let results = race(&url, 20, move |i, c| {
        c.query_one(
            "SELECT credits_commit(reservation_id => $1::text::uuid)::text",
            &[&ids[i]],
        )
        .map(|_| ())
        .map_err(|e| sqlstate(&e))
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.recharge_requests"
        ),
        1
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.events WHERE kind = 'recharge_requested'"
        ),
        1
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.events WHERE kind = 'usage_alert'"
        ),
        1
    );
    assert_verify_empty(&mut client);
}

#[test]
fn concurrent_purchases_and_settings_below_the_threshold_write_one_request() {
    let url = fresh_db("it_below");
    let mut client = connect(&url);
    client
        .batch_execute(
            "SELECT credits_plan_upsert(plan_id => 'p', allocation => 100);
             SELECT credits_pack_upsert(pack_id => 'p5', credits => 10, price => 5);
             SELECT credits_account_upsert(account_id => 'acme', plan_id => 'p');
             SELECT credits_auto_recharge_set(account_id => 'acme', enabled => false, pack => 'p5',
                                              threshold => 1000, monthly_cap => 1000);",
        )
        .unwrap();
    // Every call leaves the balance below the threshold and asks
    // auto-recharge to look: eight turn it on, eight buy a pack.
    let results = race(&url, 16, move |i, c| {
        let sql = if i % 2 == 0 {
            "SELECT credits_auto_recharge_set(account_id => 'acme', enabled => true)::text WHERE $1::int >= 0"
        } else {
            "SELECT credits_purchase(account_id => 'acme', pack => 'p5', payment_ref => 'pi_' || $1::int)::text"
        };
        c.query_one(sql, &[&(i as i32)])
            .map(|_| ())
            .map_err(|e| sqlstate(&e))
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.recharge_requests WHERE status = 'pending'"
        ),
        1,
        "one request at a time"
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.events WHERE kind = 'recharge_requested'"
        ),
        1
    );
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM credits.purchases"),
        8
    );
    assert_verify_empty(&mut client);
}

#[test]
fn a_plan_edit_racing_reserves_on_due_accounts_reaches_no_period_begun_before_it() {
    let url = fresh_db("it_plan_edit");
    let mut client = connect(&url);
    client
        .batch_execute(
            "SET credits.now = '2031-01-10 12:00:00+00';
             SELECT credits_plan_upsert(plan_id => 'p', allocation => 100, reset => 'calendar_month');
             SELECT credits_account_upsert(account_id => 'a' || i, plan_id => 'p') FROM generate_series(1, 40) i;",
        )
        .unwrap();
    // After the month's end, nothing has rolled the accounts: one session
    // edits the plan while fifteen reserve on them, each account once.
    let results = race(&url, 16, move |i, c| {
        c.batch_execute("SET credits.now = '2031-02-03 00:00:00+00'")
            .unwrap();
        if i == 0 {
            c.query_one(
                "SELECT credits_plan_upsert(plan_id => 'p', allocation => 500, reset => 'calendar_month')::text",
                &[],
            )
            .map(|_| ())
            .map_err(|e| sqlstate(&e))
        } else {
            (0..40)
                .filter(|n| n % 15 == i as i32 - 1)
                .try_for_each(|n| {
                    c.query_one(
                        "SELECT credits_reserve(account_id => 'a' || $1::int, amount => 1, product => 'editor')::text",
                        &[&(n + 1)],
                    )
                    .map(|_| ())
                })
                .map_err(|e| sqlstate(&e))
        }
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    client
        .batch_execute("SET credits.now = '2031-02-03 00:00:00+00'")
        .unwrap();
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.account_summary WHERE allocation <> 100"
        ),
        0,
        "the February period of an account keeps the allocation it began with"
    );
    client
        .batch_execute("SET credits.now = '2031-03-01 00:00:00+00'; SELECT credits_reset();")
        .unwrap();
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.account_summary WHERE allocation = 500"
        ),
        40,
        "the edit applies from the next reset"
    );
    assert_verify_empty(&mut client);
}

#[test]
fn two_python_workers_complete_each_recharge_exactly_once() {
    let url = fresh_db("it_worker");
    let mut client = connect(&url);
    client
        .batch_execute(
            "SELECT credits_plan_upsert(plan_id => 'p', allocation => 100);
             SELECT credits_pack_upsert(pack_id => 'p20', credits => 200, price => 20);
             SELECT credits_account_upsert(account_id => 'a' || i, plan_id => 'p') FROM generate_series(1, 6) i;
             SELECT credits_auto_recharge_set(account_id => 'a' || i, enabled => true, pack => 'p20', threshold => 50)
               FROM generate_series(1, 6) i;
             SELECT credits_commit(credits_reserve(account_id => 'a' || i, amount => 70, product => 'editor'))
               FROM generate_series(1, 6) i;
             -- A worker that claimed one request and crashed: it comes back after 2 seconds.
             SELECT count(*) FROM credits_events_claim(consumer => 'crashed', max_events => 1, visibility => '2 seconds');",
        )
        .unwrap();
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.recharge_requests WHERE status = 'pending'"
        ),
        6
    );
    let workers: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new("python3")
                .args([
                    "examples/recharge_worker.py",
                    "--dsn",
                    &url,
                    "--idle-exit",
                    "5",
                ])
                .spawn()
                .expect("python3 runs the example worker")
        })
        .collect();
    for mut w in workers {
        assert!(w.wait().unwrap().success(), "a worker failed");
    }
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.recharge_requests WHERE status = 'completed'"
        ),
        6
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.buckets WHERE kind = 'pack'"
        ),
        6,
        "one pack each"
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.purchases WHERE auto_recharge"
        ),
        6
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.events WHERE acked_at IS NULL"
        ),
        0
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.events WHERE deliveries > 1"
        ),
        1,
        "the crashed worker's event was delivered again"
    );
    assert_verify_empty(&mut client);
}

/// A call waiting for an account that another transaction holds fails with
/// the caller's own timeout codes, through the fast paths as through the
/// general ones: 55P03 when lock_timeout runs out, 57014 when
/// statement_timeout does, with Postgres' own message and no DETAIL.
/// Nothing is left behind, and once the holder commits the same calls
/// succeed.
#[test]
fn a_call_waiting_for_a_held_account_fails_with_the_callers_timeout_codes() {
    let url = fresh_db("it_timeouts");
    let mut client = connect(&url);
    setup_account(
        &mut client,
        "SELECT credits_plan_upsert(plan_id => 'p', allocation => 100)",
        "acme",
        "p",
    );
    let pending = reserve(&mut client, "acme", "1", None).unwrap();
    let mut holder = connect(&url);
    holder.batch_execute("BEGIN").unwrap();
    reserve(&mut holder, "acme", "1", None).unwrap();
    let mut waiter = connect(&url);
    let calls = [
        "SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'editor')::text".to_string(),
        "SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'editor', idempotency_key => 'k')::text".to_string(),
        format!("SELECT credits_commit(reservation_id => '{pending}')::text"),
        format!("SELECT credits_refund(reservation_id => '{pending}')::text"),
        "SELECT credits_grant(account_id => 'acme', amount => 1)::text".to_string(),
    ];
    for (setting, code, message) in [
        (
            "lock_timeout",
            "55P03",
            "canceling statement due to lock timeout",
        ),
        (
            "statement_timeout",
            "57014",
            "canceling statement due to statement timeout",
        ),
    ] {
        waiter
            .batch_execute(&format!(
                "RESET lock_timeout; RESET statement_timeout; SET {setting} = '200ms'"
            ))
            .unwrap();
        for sql in &calls {
            let error = waiter.query_one(sql.as_str(), &[]).map(|_| ()).unwrap_err();
            assert_eq!(sqlstate(&error), code, "{setting}: {sql}");
            // Postgres' own error, as it raised it: no Rust backtrace in its
            // DETAIL although the server runs with RUST_BACKTRACE=1
            // (scripts/cluster.sh; src/lib.rs, no_backtraces_in_errors).
            let db = error.as_db_error().unwrap();
            assert_eq!(
                (db.message(), db.detail(), db.hint()),
                (message, None, None),
                "{setting}: {sql}"
            );
        }
    }
    holder.batch_execute("COMMIT").unwrap();
    for sql in &calls {
        waiter
            .query_one(sql.as_str(), &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.reservations WHERE account_id = 'acme'"
        ),
        4,
        "the first hold, the holder's and the two reserves after the wait"
    );
    assert_verify_empty(&mut client);
}

/// Runs `body` in one transaction at `level`, again from the start while it
/// fails with a serialization failure (40001), as an application running
/// at REPEATABLE READ or SERIALIZABLE must; returns its outcome (the
/// SQLSTATE of any other failure) and how many times it was retried.
fn with_retries<T>(
    client: &mut Client,
    level: postgres::IsolationLevel,
    mut body: impl FnMut(&mut postgres::Transaction) -> Result<T, postgres::Error>,
) -> (Result<T, String>, u32) {
    let mut retries = 0;
    loop {
        let mut tx = client
            .build_transaction()
            .isolation_level(level)
            .start()
            .unwrap();
        let outcome = body(&mut tx).and_then(|v| tx.commit().map(|_| v));
        match outcome {
            Err(e) if sqlstate(&e) == "40001" => retries += 1,
            other => return (other.map_err(|e| sqlstate(&e)), retries),
        }
    }
}

/// Every write of an account writes the account's row, so that a call at
/// REPEATABLE READ that waited for it fails with 40001 and is retried with
/// a snapshot that sees it, instead of going on with one that does not
/// (README, Isolation levels). For each write API on one account: a
/// REPEATABLE READ grant whose snapshot predates the write waits for the
/// write's lock and fails with 40001 once the write commits. Bindings are
/// the documented exception: they apply to calls that begin after them.
/// `credits_recharge_fail` only locked the account until 0.3.5.
#[test]
fn a_repeatable_read_call_waiting_for_any_write_of_its_account_fails_with_40001() {
    let url = fresh_db("it_rr_waits");
    let mut admin = connect(&url);
    admin
        .batch_execute(
            "DROP ROLE IF EXISTS it_rr_waits_app;
             CREATE ROLE it_rr_waits_app IN ROLE credits_app;
             SET credits.now = '2031-01-10 12:00:00+00';
             SELECT credits_plan_upsert(plan_id => 'p', allocation => 100);
             SELECT credits_plan_upsert(plan_id => 'q', allocation => 200);
             SELECT credits_pack_upsert(pack_id => 'pk', credits => 15, price => 5);
             SELECT credits_account_upsert(account_id => a, plan_id => 'p') FROM unnest(ARRAY['x', 'y']) a;
             SELECT credits_account_bind(account_id => 'y', role => 'it_rr_waits_app');
             CREATE TABLE holds (name text PRIMARY KEY, id uuid);
             INSERT INTO holds
             SELECT n, credits_reserve(account_id => 'x', amount => 2, product => 'editor')
               FROM unnest(ARRAY['commit', 'refund']) n;
             SELECT credits_commit((SELECT id FROM holds WHERE name = 'refund'));",
        )
        .unwrap();
    // Each write, with what it needs first (run before the write's
    // transaction), and whether a waiting REPEATABLE READ call must retry.
    let writes: [(&str, &str, bool); 13] = [
        ("", "SELECT credits_grant(account_id => 'x', amount => 5)", true),
        (
            "",
            "SELECT credits_reserve(account_id => 'x', amount => 1, product => 'editor')",
            true,
        ),
        (
            "",
            "SELECT credits_commit((SELECT id FROM holds WHERE name = 'commit'))",
            true,
        ),
        (
            "",
            "SELECT credits_refund((SELECT id FROM holds WHERE name = 'refund'), amount => 1)",
            true,
        ),
        (
            "",
            "SELECT credits_account_upsert(account_id => 'x', alert_percents => '{50}')",
            true,
        ),
        (
            "",
            "SELECT credits_account_upsert(account_id => 'x', plan_id => 'q')",
            true,
        ),
        (
            "",
            "SELECT credits_account_product_set(account_id => 'x', product => 'seo', enabled => false)",
            true,
        ),
        (
            "",
            "SELECT credits_purchase(account_id => 'x', pack => 'pk', payment_ref => 'pay-1')",
            true,
        ),
        (
            "",
            "SELECT credits_auto_recharge_set(account_id => 'x', enabled => true, pack => 'pk', threshold => 1)",
            true,
        ),
        (
            // A pending request: the threshold above the balance.
            "SELECT credits_auto_recharge_set(account_id => 'x', enabled => true, pack => 'pk', threshold => 100000)",
            "SELECT credits_recharge_fail((SELECT request_id FROM credits.recharge_requests WHERE status = 'pending'))",
            true,
        ),
        (
            "",
            "SELECT credits_account_bind(account_id => 'x', role => 'it_rr_waits_app')",
            false,
        ),
        (
            "",
            "SELECT credits_account_unbind(account_id => 'x', role => 'it_rr_waits_app')",
            false,
        ),
        // Last: a reset with something due, a month later.
        (
            "",
            "SET LOCAL credits.now = '2031-02-15 12:00:00+00'; SELECT credits_reset(account_id => 'x')",
            true,
        ),
    ];
    for (before, write, retries) in writes {
        admin
            .batch_execute(&format!(
                "SET credits.now = '2031-01-10 12:00:00+00'; {before}"
            ))
            .unwrap();
        let outcome = waiting_for(
            &url,
            write,
            vec![Box::new(|b: &mut Client| {
                b.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
                    .unwrap();
                let outcome = b
                    .query_one(
                        "SELECT credits_grant(account_id => 'x', amount => 1)::text",
                        &[],
                    )
                    .map(|_| ())
                    .map_err(|e| sqlstate(&e));
                b.batch_execute("ROLLBACK").unwrap();
                outcome
            })],
        )
        .remove(0);
        let expected = if retries {
            Err("40001".to_string())
        } else {
            Ok(())
        };
        assert_eq!(
            outcome, expected,
            "a REPEATABLE READ grant that waited for: {write}"
        );
    }
    admin
        .batch_execute("SET credits.now = '2031-02-15 12:00:00+00'")
        .unwrap();
    assert_verify_empty(&mut admin);
    admin.batch_execute("DROP ROLE it_rr_waits_app").unwrap();
}

/// Two unbindings of one role from its last two accounts take turns on the
/// role's bindings: the one that waited sees the other's and is refused
/// (CR019), so the role keeps one binding and never reaches every account.
/// Each locks a different account, so without the bindings' lock both went
/// through, each seeing the other's binding in its snapshot.
#[test]
fn two_unbindings_racing_never_remove_a_roles_last_binding() {
    let url = fresh_db("it_unbind_race");
    let mut admin = connect(&url);
    admin
        .batch_execute(
            "DROP ROLE IF EXISTS it_unbind_race_app;
             CREATE ROLE it_unbind_race_app IN ROLE credits_app;
             SELECT credits_plan_upsert(plan_id => 'p', allocation => 100);
             SELECT credits_account_upsert(account_id => a, plan_id => 'p') FROM unnest(ARRAY['x', 'y']) a;
             SELECT credits_account_bind(account_id => a, role => 'it_unbind_race_app')
               FROM unnest(ARRAY['x', 'y']) a;",
        )
        .unwrap();
    let outcome = calls_waiting_for(
        &url,
        "SELECT credits_account_unbind(account_id => 'x', role => 'it_unbind_race_app')",
        &["SELECT credits_account_unbind(account_id => 'y', role => 'it_unbind_race_app')::text"],
    );
    assert_eq!(
        outcome,
        [Err("CR019".to_string())],
        "the unbinding that waited finds the role's last binding"
    );
    assert_eq!(
        rows(
            &mut admin,
            "SELECT account_id FROM credits.account_roles WHERE role_id = 'it_unbind_race_app'::regrole"
        ),
        ["y"]
    );
    admin
        .batch_execute(
            "SELECT credits_account_unbind(account_id => 'y', role => 'it_unbind_race_app', last_binding => true);
             DROP ROLE it_unbind_race_app;",
        )
        .unwrap();
}

/// A recharge failure takes the account's lock and is judged in its turn:
/// a commit that waited for it and took the balance below the threshold
/// requests a recharge again, at every isolation level. At REPEATABLE READ
/// and SERIALIZABLE, `credits_recharge_fail` used to leave the account row
/// as it was, so the waiting commit went on with its snapshot, in which the
/// failed request was still pending, and requested nothing (found by
/// replaying a concurrent run at those levels in the order of the
/// account's lock). Now it fails with 40001 there and, retried, requests.
#[test]
fn a_commit_waiting_for_a_recharge_failure_requests_again_at_every_level() {
    use postgres::IsolationLevel::{ReadCommitted, RepeatableRead, Serializable};
    for (name, level) in [
        ("rc", ReadCommitted),
        ("rr", RepeatableRead),
        ("ser", Serializable),
    ] {
        let url = fresh_db(&format!("it_recharge_fail_wait_{name}"));
        let mut admin = connect(&url);
        admin
            .batch_execute(
                "SET credits.now = '2031-01-10 12:00:00+00';
                 SELECT credits_plan_upsert(plan_id => 'p', allocation => 60);
                 SELECT credits_pack_upsert(pack_id => 'pk', credits => 15, price => 5);
                 SELECT credits_account_upsert(account_id => 'x', plan_id => 'p');
                 -- 60 is below the threshold: a request at once.
                 SELECT credits_auto_recharge_set(account_id => 'x', enabled => true, pack => 'pk',
                                                  threshold => 70, monthly_cap => 100);
                 SELECT credits_grant(account_id => 'x', amount => 20, kind => 'topup');
                 CREATE TABLE hold AS
                 SELECT credits_reserve(account_id => 'x', amount => 15, product => 'editor') AS id;",
            )
            .unwrap();
        let (outcome, retries) = waiting_for(
            &url,
            "SELECT credits_recharge_fail(request_id => (SELECT request_id FROM credits.recharge_requests),
                                          reason => 'declined')",
            vec![Box::new(move |b: &mut Client| {
                with_retries(b, level, |tx| {
                    // The snapshot, taken before the failure commits.
                    tx.query_one("SELECT 1", &[])?;
                    tx.query_one("SELECT credits_commit((SELECT id FROM hold))::text", &[])
                        .map(|row| row.get::<_, String>(0))
                })
            })],
        )
        .remove(0);
        assert!(
            outcome.is_ok(),
            "{name}: the commit goes through: {outcome:?}"
        );
        assert_eq!(
            rows(
                &mut admin,
                "SELECT status || ' ' || credits FROM credits.recharge_requests ORDER BY status"
            ),
            ["failed 15.000000", "pending 15.000000"],
            "{name}: the commit that took the balance from 80 to 65, below 70, after the failure requests again"
        );
        assert_eq!(
            retries,
            u32::from(!matches!(level, ReadCommitted)),
            "{name}: retried on 40001 at REPEATABLE READ and SERIALIZABLE only"
        );
        assert_verify_empty(&mut admin);
    }
}

/// Applications that run their transactions at REPEATABLE READ or
/// SERIALIZABLE: a write that meets a concurrent one fails with 40001 and
/// is retried whole, and the limits stay exact. 24 connections on one
/// account of 100 each reserve 7 (a third with an idempotency key, half of
/// them committing it in the same transaction): exactly 14 succeed, the rest
/// are refused with CR001, nothing else fails. Then eight connections
/// replaying one idempotency key get one reservation.
#[test]
fn repeatable_read_and_serializable_callers_retry_40001_and_stay_exact() {
    use postgres::IsolationLevel::{RepeatableRead, Serializable};
    let url = fresh_db("it_isolation");
    let mut client = connect(&url);
    client
        .batch_execute("SELECT credits_plan_upsert(plan_id => 'p', allocation => 100)")
        .unwrap();
    for (round, level) in [RepeatableRead, Serializable].into_iter().enumerate() {
        let account = format!("acme{round}");
        client
            .execute(
                "SELECT credits_account_upsert(account_id => $1, plan_id => 'p')",
                &[&account],
            )
            .unwrap();
        let acct = account.clone();
        let results = race(&url, 24, move |i, c| {
            with_retries(c, level, |tx| {
                let key = (i % 3 == 0).then(|| format!("k{i}"));
                let id: String = tx
                    .query_one(
                        "SELECT credits_reserve(account_id => $1, amount => 7, product => 'editor', \
                         idempotency_key => $2)::text",
                        &[&acct, &key],
                    )?
                    .get(0);
                if i % 2 == 1 {
                    tx.query_one(
                        "SELECT credits_commit(reservation_id => $1::text::uuid, amount => 7)",
                        &[&id],
                    )?;
                }
                Ok(id)
            })
        });
        let ok = results.iter().filter(|(r, _)| r.is_ok()).count();
        let other: Vec<&String> = results
            .iter()
            .filter_map(|(r, _)| r.as_ref().err())
            .filter(|s| *s != "CR001")
            .collect();
        let retries: u32 = results.iter().map(|(_, n)| n).sum();
        assert_eq!(
            ok, 14,
            "{level:?}: 100 / 7 = 14 reserves must succeed, got {ok} ({retries} retries)"
        );
        assert!(
            other.is_empty(),
            "{level:?}: failures other than CR001: {other:?}"
        );
        let free: String = client
            .query_one(
                "SELECT (balance - held)::text FROM credits.accounts WHERE account_id = $1",
                &[&account],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            free.parse::<f64>().unwrap(),
            2.0,
            "{level:?}: the account's free credits"
        );
        // Eight connections replaying one idempotency key: one effect, and
        // every one of them gets its reservation.
        let twin = format!("twin{round}");
        client
            .execute(
                "SELECT credits_account_upsert(account_id => $1, plan_id => 'p')",
                &[&twin],
            )
            .unwrap();
        let ids: HashSet<String> = race(&url, 8, move |_, c| {
            with_retries(c, level, |tx| {
                tx.query_one(
                    "SELECT credits_reserve(account_id => $1, amount => 7, product => 'editor', \
                     idempotency_key => 'same')::text",
                    &[&twin],
                )
                .map(|row| row.get::<_, String>(0))
            })
            .0
            .unwrap()
        })
        .into_iter()
        .collect();
        assert_eq!(
            ids.len(),
            1,
            "{level:?}: one reservation for one key: {ids:?}"
        );
        assert_eq!(
            count(
                &mut client,
                &format!(
                    "SELECT count(*) FROM credits.reservations WHERE account_id = 'twin{round}'"
                )
            ),
            1
        );
    }
    assert_verify_empty(&mut client);
}

/// The mixed workload at REPEATABLE READ and SERIALIZABLE (connections
/// alternate): each call retried on 40001, no other failure than the
/// refusals, and every invariant holds (the ledger's hash chain among them:
/// each row is chained to the account's previous one).
#[test]
fn a_mixed_workload_at_repeatable_read_and_serializable_breaks_no_invariant() {
    let (states, done, retries) = mixed_workload("it_isolation_mixed", 24, |i| {
        if i % 2 == 0 {
            postgres::IsolationLevel::RepeatableRead
        } else {
            postgres::IsolationLevel::Serializable
        }
    });
    eprintln!("{done} calls succeeded, {retries} retries after 40001");
    assert_only_refusals(&states, done);
}

/// Consumers claiming one queue of events from connections at READ
/// COMMITTED, REPEATABLE READ and SERIALIZABLE, the latter retrying on
/// 40001 (a claim that meets another consumer's claim committed after its
/// snapshot), each acknowledging what it claimed: every event is delivered
/// once, to one consumer, and none is left behind.
#[test]
fn consumers_at_every_isolation_level_claim_each_event_once() {
    use postgres::IsolationLevel::{ReadCommitted, RepeatableRead, Serializable};
    const EVENTS: i64 = 600;
    let url = fresh_db("it_claim_levels");
    let mut admin = connect(&url);
    admin
        .batch_execute(&format!(
            "INSERT INTO credits.events (account_id, kind, payload, created_at, visible_at)
             SELECT 'a' || (i % 7), 'usage_alert', jsonb_build_object('i', i), now(), now()
               FROM generate_series(1, {EVENTS}) i;"
        ))
        .unwrap();
    let levels = [
        ReadCommitted,
        ReadCommitted,
        RepeatableRead,
        RepeatableRead,
        Serializable,
        Serializable,
    ];
    let consumers: Vec<_> = levels
        .into_iter()
        .enumerate()
        .map(|(i, level)| {
            let url = url.clone();
            thread::spawn(move || {
                let mut c = connect(&url);
                let (mut got, mut retries) = (Vec::new(), 0);
                loop {
                    let (claimed, tries) = with_retries(&mut c, level, |tx| {
                        tx.query(
                            "SELECT event_id FROM credits_events_claim(consumer => $1, max_events => 4,
                                                                      visibility => '1 hour')",
                            &[&format!("c{i}")],
                        )
                        .map(|rows| rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>())
                    });
                    retries += tries;
                    let claimed = claimed.unwrap_or_else(|code| panic!("a claim fails with {code}"));
                    if claimed.is_empty() {
                        return (got, retries);
                    }
                    let (acked, _) = with_retries(&mut c, level, |tx| {
                        tx.query_one("SELECT credits_events_ack($1)", &[&claimed])
                            .map(|r| r.get::<_, i32>(0))
                    });
                    assert_eq!(acked, Ok(claimed.len() as i32), "a consumer acknowledges what it claimed");
                    got.extend(claimed);
                }
            })
        })
        .collect();
    let mut delivered: Vec<i64> = Vec::new();
    let mut retries = 0;
    for consumer in consumers {
        let (got, tries) = consumer.join().unwrap();
        delivered.extend(got);
        retries += tries;
    }
    // Events skipped while a claim that then failed with 40001 held them.
    let late = rows(
        &mut admin,
        "SELECT event_id::text FROM credits_events_claim(consumer => 'late', max_events => 1000)",
    );
    let unique: HashSet<i64> = delivered.iter().copied().collect();
    assert_eq!(unique.len(), delivered.len(), "no event is delivered twice");
    assert_eq!(
        delivered.len() + late.len(),
        EVENTS as usize,
        "every event is delivered ({} late)",
        late.len()
    );
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM credits.events WHERE deliveries <> 1"
        ),
        0,
        "each event was claimed once"
    );
    eprintln!(
        "{} events claimed by six consumers, {} late, {retries} retries after 40001",
        delivered.len(),
        late.len()
    );
}

#[test]
fn a_purge_skips_the_events_a_consumer_holds_and_never_waits_for_it() {
    let url = fresh_db("it_purge");
    let mut client = connect(&url);
    client
        .batch_execute(
            "SELECT credits._emit('acme', 'usage_alert', jsonb_build_object('n', i), credits._now())
               FROM generate_series(1, 5) i;",
        )
        .unwrap();
    // A consumer claims the two oldest events and is still handling them.
    let mut consumer = connect(&url);
    consumer.batch_execute("BEGIN").unwrap();
    let claimed = consumer
        .query(
            "SELECT event_id FROM credits_events_claim(consumer => 'slow', max_events => 2)",
            &[],
        )
        .unwrap()
        .len();
    assert_eq!(claimed, 2);
    // The purge takes the three others at once: a purge that waited for
    // the consumer's locks would fail here with lock_timeout (55P03).
    let mut purger = connect(&url);
    purger.batch_execute("SET lock_timeout = '2s'").unwrap();
    let purge = "SELECT credits_events_purge(older_than => '0', unacknowledged => true)";
    let started = Instant::now();
    let purged: i64 = purger
        .query_one(purge, &[])
        .map_err(|e| sqlstate(&e))
        .unwrap()
        .get(0);
    assert_eq!(purged, 3, "the events nobody holds are purged");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(count(&mut client, "SELECT count(*) FROM credits.events"), 2);
    // Once the consumer acknowledges them and commits, the next run takes them.
    consumer
        .batch_execute(
            "SELECT credits_events_ack((SELECT array_agg(event_id) FROM credits.events)); COMMIT",
        )
        .unwrap();
    let purged: i64 = purger
        .query_one("SELECT credits_events_purge(older_than => '0')", &[])
        .unwrap()
        .get(0);
    assert_eq!(purged, 2);
    assert_eq!(count(&mut client, "SELECT count(*) FROM credits.events"), 0);
}

#[test]
fn the_chart_example_renders_the_usage_dashboard_to_png() {
    let url = fresh_db("it_chart");
    let mut client = connect(&url);
    client
        .batch_execute(
            "SELECT set_config('credits.now', '2026-11-01 09:00+00', false);
             SELECT credits_plan_upsert(plan_id => 'p', allocation => 2000, reset => 'calendar_month');
             SELECT credits_account_upsert(account_id => 'acme', plan_id => 'p');
             DO $$
             BEGIN
               FOR d IN 0..20 LOOP
                 PERFORM set_config('credits.now', ('2026-11-01 10:00+00'::timestamptz + d * interval '1 day')::text, false);
                 PERFORM credits_commit(credits_reserve(account_id => 'acme', amount => 10 + d % 7 * 3, product => 'editor'));
                 PERFORM credits_commit(credits_reserve(account_id => 'acme', amount => 5 + d % 3 * 8, product => 'seo'));
                 IF d % 4 = 0 THEN
                   PERFORM credits_commit(credits_reserve(account_id => 'acme', amount => 25, product => 'translations'));
                 END IF;
               END LOOP;
             END $$;",
        )
        .unwrap();
    let out = std::env::temp_dir().join("credits-usage-chart.png");
    let _ = std::fs::remove_file(&out);
    let status = std::process::Command::new("python3")
        .args([
            "examples/usage_chart.py",
            "--dsn",
            &url,
            "--account",
            "acme",
            "--to",
            "2026-11-23",
            "--days",
            "30",
        ])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("python3 runs the chart example");
    assert!(status.success());
    let png = std::fs::read(&out).expect("the chart was written");
    assert!(
        png.len() > 10_000,
        "a real chart, not an empty image: {} bytes",
        png.len()
    );
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

/// An error's SQLSTATE and message, for a failing assertion.
fn error_text(e: &postgres::Error) -> String {
    format!(
        "{} {}",
        sqlstate(e),
        e.as_db_error().map_or("", |d| d.message())
    )
}

/// The calls for one account, as SQL; `pending` holds two of its pending
/// reservations, for a commit and a refund.
fn one_account_calls(account: &str, pending: &[String]) -> Vec<String> {
    vec![
        format!("SELECT credits_reserve(account_id => '{account}', amount => 1, product => 'editor')::text"),
        format!("SELECT credits_reserve(account_id => '{account}', amount => 1, product => 'editor', idempotency_key => 'k')::text"),
        format!("SELECT credits_commit(reservation_id => '{}', amount => 1)::text", pending[0]),
        format!("SELECT credits_refund(reservation_id => '{}')::text", pending[1]),
        format!("SELECT credits_commit(credits_reserve(account_id => '{account}', amount => 2, product => 'editor'), amount => 3)::text"),
        format!("SELECT credits_grant(account_id => '{account}', amount => 1, kind => 'pack', idempotency_key => 'k')::text"),
        format!("SELECT credits_purchase(account_id => '{account}', pack => 'p10', payment_ref => 'pay')::text"),
        format!("SELECT credits_account_product_set(account_id => '{account}', product => 'seo', enabled => false)::text"),
        format!("SELECT credits_auto_recharge_set(account_id => '{account}', enabled => true, pack => 'p10', threshold => 1000)::text"),
        format!("SELECT credits_commit(credits_reserve(account_id => '{account}', amount => 80, product => 'editor'))::text"),
        format!("SELECT credits_account_upsert(account_id => '{account}', plan_id => 'q')::text"),
        format!("SELECT credits_account_bind(account_id => '{account}', role => 'it_apart_{account}')::text"),
        format!("SELECT credits_reset(account_id => '{account}')::text"),
        format!("SELECT credits_balance('{account}')::text"),
    ]
}

/// Accounts never wait for each other (README, Beyond one machine): with a
/// transaction held open after it went through every call for one account
/// (reserve with and without a key, commit, refund, grant, purchase,
/// product switch, auto-recharge, a usage alert, plan change, binding,
/// reset), the same calls for another account go through at once, on both
/// paths, under a lock_timeout of 1 s that a wait would exhaust (55P03),
/// and leave a row of that account in every table of account data. The
/// one shared row that can make them wait is a product that both name
/// for the first time at once: its registration in credits.products waits
/// for the transaction that registered it first.
#[test]
fn calls_for_one_account_never_wait_for_another_accounts_open_transaction() {
    for fast_paths in ["on", "off"] {
        let url = fresh_db(&format!("it_apart_{fast_paths}"));
        let mut admin = connect(&url);
        admin
            .batch_execute(
                "DROP ROLE IF EXISTS it_apart_a; DROP ROLE IF EXISTS it_apart_b;
                 CREATE ROLE it_apart_a IN ROLE credits_app; CREATE ROLE it_apart_b IN ROLE credits_app;
                 SELECT credits_plan_upsert(plan_id => 'p', allocation => 100, reset => 'calendar_month');
                 SELECT credits_plan_upsert(plan_id => 'q', allocation => 200, reset => 'calendar_month');
                 SELECT credits_pack_upsert(pack_id => 'p10', credits => 10, price => 5);
                 SELECT credits_product_upsert(product => 'seo');
                 SELECT credits_account_upsert(account_id => a, plan_id => 'p') FROM unnest(ARRAY['a', 'b']) a;",
            )
            .unwrap();
        let pending = |client: &mut Client, account: &str| -> Vec<String> {
            (0..2)
                .map(|_| reserve(client, account, "1", None).unwrap())
                .collect()
        };
        let (pending_a, pending_b) = (pending(&mut admin, "a"), pending(&mut admin, "b"));
        let session = format!("SET credits.fast_paths = {fast_paths}; SET lock_timeout = '1s'");
        let mut holder = connect(&url);
        holder.batch_execute(&format!("{session}; BEGIN")).unwrap();
        for sql in one_account_calls("b", &pending_b) {
            holder.query_one(sql.as_str(), &[]).unwrap_or_else(|e| {
                panic!("fast paths {fast_paths}, b: {sql}: {}", error_text(&e))
            });
        }
        let mut other = connect(&url);
        other.batch_execute(&session).unwrap();
        for sql in one_account_calls("a", &pending_a) {
            other.query_one(sql.as_str(), &[]).unwrap_or_else(|e| {
                panic!(
                    "fast paths {fast_paths}: a waited for b's open transaction: {sql}: {}",
                    error_text(&e)
                )
            });
        }
        // Those calls wrote a's rows in every table of account data (the
        // usage alert's and the recharge request's events among them).
        assert_eq!(
            rows(
                &mut admin,
                "SELECT c.relname::text FROM (SELECT c.oid, c.relname FROM pg_class c
                   JOIN pg_attribute t ON t.attrelid = c.oid AND t.attname = 'account_id'
                  WHERE c.relnamespace = 'credits'::regnamespace AND c.relkind = 'r' OFFSET 0) c
                  WHERE (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %s WHERE account_id = %L',
                                                                   c.oid::regclass, 'a'), false, true, '')))[1]::text = '0'"
            ),
            Vec::<String>::new(),
            "fast paths {fast_paths}: tables without a row of a"
        );
        // The exception: a product named for the first time by both.
        holder
            .query_one(
                "SELECT credits_reserve(account_id => 'b', amount => 1, product => 'fresh')::text",
                &[],
            )
            .unwrap();
        let fresh =
            "SELECT credits_reserve(account_id => 'a', amount => 1, product => 'fresh')::text";
        let error = other.query_one(fresh, &[]).map(|_| ()).unwrap_err();
        assert_eq!(
            sqlstate(&error),
            "55P03",
            "fast paths {fast_paths}: a new product's registration waits for the one in progress"
        );
        holder.batch_execute("COMMIT").unwrap();
        other.query_one(fresh, &[]).unwrap();
        assert_verify_empty(&mut admin);
    }
}

/// An app that reserves and commits in one transaction writes its account
/// row twice there, and locks no shared row for it. The accounts of a plan
/// share its row of credits.plans: a foreign key to it would lock that row
/// (FOR KEY SHARE) at the second write, since Postgres checks a foreign key
/// again on any update of a row its own transaction wrote, and every two
/// such transactions that overlap need a new MultiXact for the row's
/// lockers. Four transactions, each with a reserve and its commit and a
/// reserve and its refund, are held open at once, on both paths; no row of
/// the reference tables (plans, products, prices, packs) is locked
/// meanwhile. (Grants do lock their plan's row, FOR SHARE: README, Tables.)
#[test]
fn actions_in_one_transaction_lock_no_shared_row() {
    for fast_paths in ["on", "off"] {
        let url = fresh_db(&format!("it_shared_{fast_paths}"));
        let mut admin = connect(&url);
        admin
            .batch_execute(
                "CREATE EXTENSION pgrowlocks;
                 SELECT credits_plan_upsert(plan_id => 'p', allocation => 100, reset => 'calendar_month');
                 SELECT credits_pack_upsert(pack_id => 'p10', credits => 10, price => 5);
                 SELECT credits_product_upsert(product => 'editor');
                 SELECT credits_price_upsert(product => 'editor', action => 'generate', unit => 'call', price => 2);
                 SELECT credits_account_upsert(account_id => 'acct' || i, plan_id => 'p')
                   FROM generate_series(1, 4) i;",
            )
            .unwrap();
        let open: Vec<Client> = (1..=4)
            .map(|i| {
                let mut client = connect(&url);
                let account = format!("acct{i}");
                client
                    .batch_execute(&format!("SET credits.fast_paths = {fast_paths}; BEGIN"))
                    .unwrap();
                // A reserve and its commit, then a reserve and its refund.
                for (amount, resolve) in [
                    (
                        "10",
                        "SELECT credits_commit(reservation_id => $1::text::uuid, amount => 7)::text",
                    ),
                    (
                        "5",
                        "SELECT credits_refund(reservation_id => $1::text::uuid)::text",
                    ),
                ] {
                    let id = reserve(&mut client, &account, amount, None).unwrap();
                    client.query_one(resolve, &[&id]).unwrap();
                }
                client
            })
            .collect();
        assert_eq!(
            rows(
                &mut admin,
                "SELECT format('%s %s: %s by %s', t, l.locked_row, l.modes, l.pids)
                   FROM unnest(ARRAY['plans', 'products', 'prices', 'packs']) t,
                        pgrowlocks('credits.' || t) l"
            ),
            Vec::<String>::new(),
            "fast paths {fast_paths}: rows of the reference tables locked by open transactions"
        );
        for mut client in open {
            client.batch_execute("COMMIT").unwrap();
        }
        assert_verify_empty(&mut admin);
    }
}

/// The plan's row stands in for the foreign key that credits.accounts no
/// longer has (sql/guards.sql): an account being put on a plan holds the
/// plan's row FOR KEY SHARE, so that a DELETE of the plan waits for it and
/// is then refused (23503); an account being put on a plan that is being
/// deleted waits, and is refused once the plan is gone (CR003). A new
/// account and an account moving to the plan, each way round. Outside READ
/// COMMITTED a plan is not deleted at all (0A000): its snapshot could miss
/// such an account.
#[test]
fn a_plan_being_deleted_and_an_account_being_put_on_it_wait_for_each_other() {
    let url = fresh_db("it_plan_delete");
    let mut admin = connect(&url);
    admin
        .batch_execute(
            "SELECT credits_plan_upsert(plan_id => p, allocation => 10)
               FROM unnest(ARRAY['base', 'p1', 'p2', 'p3', 'p4', 'p5']) p;
             SELECT credits_account_upsert(account_id => 'x', plan_id => 'base');",
        )
        .unwrap();
    let delete = |plan: &str| {
        format!(
            "WITH d AS (DELETE FROM credits.plans WHERE plan_id = '{plan}' RETURNING 1) \
             SELECT count(*)::text FROM d"
        )
    };
    for (account, plan) in [("new", "p1"), ("x", "p2")] {
        let put = format!(
            "SELECT credits_account_upsert(account_id => '{account}', plan_id => '{plan}')"
        );
        assert_eq!(
            calls_waiting_for(&url, &put, &[&delete(plan)]),
            vec![Err("23503".to_string())],
            "a DELETE of {plan} waiting for {put}"
        );
    }
    for (account, plan) in [("late", "p3"), ("x", "p4")] {
        let put = format!(
            "SELECT credits_account_upsert(account_id => '{account}', plan_id => '{plan}')::text"
        );
        assert_eq!(
            calls_waiting_for(&url, &delete(plan), &[&put]),
            vec![Err("CR003".to_string())],
            "{put} waiting for a DELETE of {plan}"
        );
    }
    for isolation in ["REPEATABLE READ", "SERIALIZABLE"] {
        let mut client = connect(&url);
        client
            .batch_execute(&format!("BEGIN ISOLATION LEVEL {isolation}"))
            .unwrap();
        let error = client.query_one(&delete("p5"), &[]).unwrap_err();
        assert_eq!(sqlstate(&error), "0A000", "a DELETE at {isolation}");
    }
    assert_eq!(
        rows(
            &mut admin,
            "SELECT account_id || ' ' || plan_id FROM credits.accounts ORDER BY 1"
        ),
        vec!["new p1", "x p2"]
    );
    assert_eq!(
        rows(
            &mut admin,
            "SELECT string_agg(plan_id, ' ' ORDER BY plan_id) FROM credits.plans"
        ),
        vec!["base p1 p2 p5"]
    );
    assert_verify_empty(&mut admin);
}
