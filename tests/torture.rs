//! The torture run: 64 clients doing random reserves (some sharing
//! idempotency keys), commits (smaller, equal and larger than reserved),
//! refunds, grants, purchases, resets and maintenance runs on hot and cold
//! accounts under hard and soft limits, with auto-recharge on and a payment
//! worker completing or failing its requests, while backends are killed with
//! pg_terminate_backend and the server is stopped with `pg_ctl stop -m
//! immediate` and restarted. Clients record what each call they saw succeed
//! returned; afterwards every acknowledged effect must be there exactly once
//! and every invariant must hold.
//!
//! CREDITS_TORTURE_SECONDS sets the duration (scripts/test.sh runs a short
//! one; see the README for the long one). CREDITS_TEST_PGDATA names the data
//! directory of the cluster, for the restart.

mod common;

use common::{assert_verify_empty, base_url, connect, count, fresh_db, Rng};
use postgres::{Client, NoTls};
use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const CLIENTS: usize = 64;
const HOT: [&str; 2] = ["hot-hard", "hot-soft"];
const COLD: usize = 30;

#[derive(Default)]
struct Record {
    calls: u64,
    successes: u64,
    lost: u64,
    states: BTreeMap<String, u64>,
    /// reservation id -> account
    reserves: Vec<(String, String)>,
    /// reservation id -> charged
    commits: Vec<(String, f64)>,
    /// reservation id -> returned
    refunds: Vec<(String, f64)>,
    /// (account, key, amount) -> reservation id
    keyed_reserves: Vec<(String, String, i64, String)>,
    /// (account, key, amount) -> bucket id
    keyed_grants: Vec<(String, String, i64, String)>,
}

/// A reservation as stored after the run.
struct Stored {
    account: String,
    status: String,
    /// NULL until committed
    charged: Option<f64>,
    refunded: f64,
    amount: f64,
    /// its charge, overage and debt rows in the ledger
    charge_rows: i64,
}

fn account(rng: &mut Rng) -> String {
    if rng.below(2) == 0 {
        HOT[rng.below(2) as usize].to_string()
    } else {
        format!("cold-{}", rng.below(COLD as u64))
    }
}

/// A connection lost to a kill or a restart (class 57 or 08, or no SQLSTATE).
fn lost(e: &postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(c) => c.code().starts_with("57") || c.code().starts_with("08"),
    }
}

fn client_loop(url: String, seed: u64, deadline: Instant) -> Record {
    let mut rec = Record::default();
    let mut rng = Rng(seed);
    let mut pending: Vec<String> = Vec::new();
    let mut committed: Vec<String> = Vec::new();
    let mut client: Option<Client> = None;
    while Instant::now() < deadline {
        let c = match client.as_mut() {
            Some(c) if !c.is_closed() => c,
            _ => {
                match Client::connect(&url, NoTls) {
                    Ok(c) => client = Some(c),
                    Err(_) => thread::sleep(Duration::from_millis(100)),
                }
                continue;
            }
        };
        rec.calls += 1;
        let roll = rng.below(100);
        let acct = account(&mut rng);
        let result: Result<(), postgres::Error> = if roll < 40 {
            let amount = 1 + rng.below(20) as i64;
            if rng.below(7) == 0 {
                // A key shared by every client: same key, same arguments.
                let key = format!("k{}", rng.below(25));
                let amount = 1 + (key.len() as i64 * 3 + key.as_bytes()[1] as i64) % 9;
                c.query_one(
                    "SELECT credits_reserve(account_id => $1, amount => $2::bigint::numeric, product => 'editor', \
                     idempotency_key => $3)::text",
                    &[&acct, &amount, &key],
                )
                .map(|r| {
                    let id: String = r.get(0);
                    rec.keyed_reserves.push((acct.clone(), key, amount, id.clone()));
                    rec.reserves.push((id.clone(), acct.clone()));
                    pending.push(id);
                })
            } else {
                c.query_one(
                    "SELECT credits_reserve(account_id => $1, amount => $2::bigint::numeric, product => $3, \
                     ttl => $4::text::interval)::text",
                    &[&acct, &amount, &["editor", "seo", "images"][rng.below(3) as usize], &["2 seconds", "1 minute"][rng.below(2) as usize]],
                )
                .map(|r| {
                    let id: String = r.get(0);
                    rec.reserves.push((id.clone(), acct.clone()));
                    pending.push(id);
                })
            }
        } else if roll < 70 && !pending.is_empty() {
            let id = pending.swap_remove(rng.below(pending.len() as u64) as usize);
            let amount = match rng.below(4) {
                0 => None,
                1 => Some(1 + rng.below(5) as i64),
                _ => Some(5 + rng.below(30) as i64),
            };
            let force = rng.below(10) == 0;
            c.query_one(
                "SELECT credits_commit(reservation_id => $1::text::uuid, amount => $2::bigint::numeric, force => $3)::float8",
                &[&id, &amount, &force],
            )
            .map(|r| {
                rec.commits.push((id.clone(), r.get(0)));
                committed.push(id);
            })
        } else if roll < 80 && !(pending.is_empty() && committed.is_empty()) {
            let from_pending = !pending.is_empty() && (committed.is_empty() || rng.below(2) == 0);
            let list = if from_pending {
                &mut pending
            } else {
                &mut committed
            };
            let id = list.swap_remove(rng.below(list.len() as u64) as usize);
            let amount: Option<i64> = if rng.below(2) == 0 {
                None
            } else {
                Some(1 + rng.below(3) as i64)
            };
            c.query_one(
                "SELECT credits_refund(reservation_id => $1::text::uuid, amount => $2::bigint::numeric)::float8",
                &[&id, &amount],
            )
            .map(|r| rec.refunds.push((id, r.get(0))))
        } else if roll < 86 {
            let amount = 5 + rng.below(15) as i64;
            if rng.below(3) == 0 {
                let key = format!("g{}", rng.below(10));
                c.query_one(
                    "SELECT credits_grant(account_id => $1, amount => 25, kind => 'pack', idempotency_key => $2)::text",
                    &[&acct, &key],
                )
                .map(|r| rec.keyed_grants.push((acct.clone(), key, 25, r.get(0))))
            } else {
                c.query_one(
                    "SELECT credits_grant(account_id => $1, amount => $2::bigint::numeric, kind => $3)::text",
                    &[&acct, &amount, &["topup", "pack", "adjustment"][rng.below(3) as usize]],
                )
                .map(|_| ())
            }
        } else if roll < 89 {
            let reference = format!("pay-{}", rng.below(50));
            c.query_one(
                "SELECT credits_purchase(account_id => $1, pack => 'p', payment_ref => $2)::text",
                &[&acct, &reference],
            )
            .map(|_| ())
        } else if roll < 90 {
            c.query_one("SELECT credits_reset()", &[]).map(|_| ())
        } else if roll < 91 {
            c.batch_execute("CALL credits_maintenance(batch_size => 5)")
        } else if roll < 93 {
            // The payment worker: completes (or fails, one in four) the
            // account's pending recharge request, if it has one.
            let sql = if rng.below(4) == 0 {
                "SELECT credits_recharge_fail(request_id => r.request_id, reason => 'declined')::text
                   FROM credits.recharge_requests r WHERE r.account_id = $1 AND r.status = 'pending'"
            } else {
                "SELECT credits_purchase(account_id => $1, pack => r.pack_id, payment_ref => r.request_id::text)::text
                   FROM credits.recharge_requests r WHERE r.account_id = $1 AND r.status = 'pending'"
            };
            c.query(sql, &[&acct]).map(|_| ())
        } else {
            c.query_one("SELECT credits_balance($1)::text", &[&acct])
                .map(|_| ())
        };
        match result {
            Ok(()) => rec.successes += 1,
            Err(e) if lost(&e) => {
                rec.lost += 1;
                client = None;
            }
            Err(e) => {
                let state = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                *rec.states.entry(state).or_default() += 1;
            }
        }
    }
    rec
}

fn pg_ctl(args: &[&str]) {
    let pgdata = std::env::var("CREDITS_TEST_PGDATA")
        .expect("CREDITS_TEST_PGDATA: run through scripts/test.sh");
    let status = Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            "/usr/lib/postgresql/15/bin/pg_ctl",
            "-D",
            &pgdata,
        ])
        .args(args)
        .status()
        .expect("pg_ctl runs");
    assert!(status.success(), "pg_ctl {args:?} failed");
}

#[test]
fn torture_nothing_is_lost_and_no_limit_is_broken() {
    let seconds: u64 = std::env::var("CREDITS_TORTURE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let url = fresh_db("it_torture");
    let mut setup = connect(&url);
    setup
        .batch_execute(&format!(
            "SELECT credits_plan_upsert(plan_id => 'hard', allocation => 120, rollover_cap => 50);
             SELECT credits_plan_upsert(plan_id => 'soft', allocation => 80, limit_mode => 'soft', soft_limit => 30);
             SELECT credits_pack_upsert(pack_id => 'p', credits => 100, price => 1);
             SELECT credits_account_upsert(account_id => 'hot-hard', plan_id => 'hard');
             SELECT credits_account_upsert(account_id => 'hot-soft', plan_id => 'soft');
             SELECT credits_account_upsert(account_id => 'cold-' || i, plan_id => CASE WHEN i % 2 = 0 THEN 'hard' ELSE 'soft' END)
               FROM generate_series(0, {}) i;
             SELECT credits_auto_recharge_set(account_id => a.account_id, enabled => true, pack => 'p', threshold => 60,
                                              monthly_cap => 1000000)
               FROM credits.accounts a WHERE a.account_id = 'hot-hard' OR a.account_id LIKE 'cold-%';",
            COLD - 1
        ))
        .unwrap();
    drop(setup);

    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let client_url = format!("{url} application_name=credits-torture");
    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let url = client_url.clone();
            thread::spawn(move || client_loop(url, 0x9e37_79b9 + i as u64 * 7919, deadline))
        })
        .collect();

    // The chaos: kill a random client backend every few hundred
    // milliseconds, and stop the server hard once, half way through.
    let kills = Arc::new(Mutex::new(0u64));
    let mut restarts = 0;
    let mut rng = Rng(42);
    let mut killer: Option<Client> = None;
    let mut restarted = false;
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200 + rng.below(400)));
        if !restarted && Instant::now() > start + Duration::from_secs(seconds / 2) {
            pg_ctl(&["stop", "-m", "immediate"]);
            thread::sleep(Duration::from_millis(500));
            pg_ctl(&[
                "start",
                "-w",
                "-t",
                "60",
                "-l",
                "/tmp/credits-torture-restart.log",
            ]);
            restarts += 1;
            restarted = true;
            killer = None;
            continue;
        }
        if killer.as_ref().is_none_or(|k| k.is_closed()) {
            killer = Client::connect(&url, NoTls).ok();
        }
        if let Some(k) = killer.as_mut() {
            match k.query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity
                  WHERE application_name = 'credits-torture' ORDER BY random() LIMIT 1) x",
                &[],
            ) {
                Ok(r) => *kills.lock().unwrap() += r.get::<_, i64>(0) as u64,
                Err(_) => killer = None,
            }
        }
    }
    let records: Vec<Record> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    // Tally.
    let mut states: BTreeMap<String, u64> = BTreeMap::new();
    let (mut calls, mut successes, mut lost_calls) = (0, 0, 0);
    for r in &records {
        calls += r.calls;
        successes += r.successes;
        lost_calls += r.lost;
        for (s, n) in &r.states {
            *states.entry(s.clone()).or_default() += n;
        }
    }
    let mut client = connect(&url);
    let mut violations: Vec<String> = Vec::new();

    // No unexpected error: domain refusals and bad-state refusals only.
    // CR017: two clients acting as the payment worker of one account found
    // the same pending request, and the other completed or failed it first
    // (its UPDATE finds it no longer pending once it holds the lock).
    for s in states.keys() {
        if ![
            "CR001", "CR005", "CR008", "CR011", "CR012", "CR006", "CR017",
        ]
        .contains(&s.as_str())
        {
            violations.push(format!("unexpected SQLSTATE {s} ({} times)", states[s]));
        }
    }
    // Every acknowledged reservation is in exactly one state.
    let mut acked_accounts: HashMap<String, String> = HashMap::new();
    for r in &records {
        for (id, acct) in &r.reserves {
            acked_accounts.insert(id.clone(), acct.clone());
        }
    }
    // Every reservation as stored, with its charge rows in the ledger, read
    // at once: one look-up per acknowledged commit scanned a hot account's
    // ledger each time, and a 15-minute run's check ran past half an hour.
    let mut stored: HashMap<String, Vec<Stored>> = HashMap::new();
    for row in client
        .query(
            "SELECT r.reservation_id::text, r.account_id, r.status, r.charged::float8, r.refunded::float8,
                    r.amount::float8, count(l.entry_id)
               FROM credits.reservations r
               LEFT JOIN credits.ledger l
                 ON l.account_id = r.account_id AND l.reservation_id = r.reservation_id
                AND l.kind IN ('charge', 'overage', 'debt')
              GROUP BY r.account_id, r.reservation_id",
            &[],
        )
        .unwrap()
    {
        stored.entry(row.get(0)).or_default().push(Stored {
            account: row.get(1),
            status: row.get(2),
            charged: row.get(3),
            refunded: row.get(4),
            amount: row.get(5),
            charge_rows: row.get(6),
        });
    }
    let one = |id: &str| match stored.get(id).map(Vec::as_slice) {
        Some([s]) => Some(s),
        _ => None,
    };
    for (id, acct) in &acked_accounts {
        match stored.get(id).map(Vec::as_slice) {
            Some([s]) if s.account == *acct => {}
            Some([s]) => violations.push(format!(
                "reservation {id} acknowledged for {acct} is {}'s",
                s.account
            )),
            found => violations.push(format!(
                "reservation {id} acknowledged for {acct} is there {} times",
                found.map_or(0, <[Stored]>::len)
            )),
        }
    }
    // Every acknowledged commit is recorded with its amount, once.
    for r in &records {
        for (id, charged) in &r.commits {
            let Some(s) = one(id) else {
                violations.push(format!(
                    "commit of {id} acknowledged as {charged}: no single reservation"
                ));
                continue;
            };
            if s.status != "committed"
                || s.charged != Some(*charged)
                || (*charged > 0.0 && s.charge_rows == 0)
            {
                violations.push(format!(
                    "commit of {id} acknowledged as {charged}: {} {:?}, {} ledger rows",
                    s.status, s.charged, s.charge_rows
                ));
            }
        }
    }
    // Acknowledged refunds are all in the reservation's refunded total.
    let mut refunded: HashMap<&str, f64> = HashMap::new();
    for r in &records {
        for (id, amount) in &r.refunds {
            *refunded.entry(id.as_str()).or_default() += amount;
        }
    }
    for (id, amount) in &refunded {
        let Some(s) = one(id) else {
            violations.push(format!(
                "refunds of {id} acknowledged for {amount}: no single reservation"
            ));
            continue;
        };
        let ok = match s.status.as_str() {
            "released" => (*amount - s.amount).abs() < 1e-9 || *amount <= s.amount,
            "committed" => s.refunded + 1e-9 >= *amount,
            _ => false,
        };
        if !ok {
            violations.push(format!(
                "refunds of {id} acknowledged for {amount}: {}, refunded {}",
                s.status, s.refunded
            ));
        }
    }
    // Replays of acknowledged idempotency keys return the first results.
    for r in &records {
        for (acct, key, amount, id) in &r.keyed_reserves {
            let again: String = client
                .query_one(
                    "SELECT credits_reserve(account_id => $1, amount => $2::bigint::numeric, product => 'editor', \
                     idempotency_key => $3)::text",
                    &[acct, amount, key],
                )
                .unwrap()
                .get(0);
            if again != *id {
                violations.push(format!(
                    "replay of reserve key {key} on {acct} gave {again}, first {id}"
                ));
            }
        }
        for (acct, key, _, bucket) in &r.keyed_grants {
            let again: String = client
                .query_one(
                    "SELECT credits_grant(account_id => $1, amount => 25, kind => 'pack', idempotency_key => $2)::text",
                    &[acct, key],
                )
                .unwrap()
                .get(0);
            if again != *bucket {
                violations.push(format!(
                    "replay of grant key {key} on {acct} gave {again}, first {bucket}"
                ));
            }
        }
    }
    // No account past its limit.
    let past = count(
        &mut client,
        "SELECT count(*) FROM credits.accounts a, LATERAL credits._limit(a, credits._now()) l
          WHERE a.held > a.balance OR a.period_overage + a.overage_held > l.soft",
    );
    if past > 0 {
        violations.push(format!("{past} accounts past their limit"));
    }
    let kills = *kills.lock().unwrap();
    println!(
        "torture: {seconds} s, {CLIENTS} clients: {calls} calls, {successes} successes, {lost_calls} lost to kills \
         and restarts, refusals {states:?}, {kills} backends killed, {restarts} restarts, {} violations",
        violations.len()
    );
    assert!(kills > 0 && restarts == 1, "the chaos did not happen");
    assert!(successes > 100, "too little work was done: {successes}");
    assert!(violations.is_empty(), "violations: {violations:#?}");
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM (SELECT account_id FROM credits.recharge_requests WHERE status = 'pending'
                                     GROUP BY 1 HAVING count(*) > 1) x"
        ),
        0,
        "an account with more than one pending recharge request"
    );
    assert!(
        count(
            &mut client,
            "SELECT count(*) FROM credits.recharge_requests"
        ) > 0,
        "auto-recharge requested nothing"
    );
    assert_verify_empty(&mut client);
    let _ = base_url();
}
