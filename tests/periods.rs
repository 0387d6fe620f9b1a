//! The periods check: random API calls on a few accounts while the pinned
//! clock (`credits.now`) moves forward by minutes to weeks, across resets,
//! promo expiries and hold expiries, with `credits_verify()` after every
//! call. The model check (model.rs) compares figures within one period;
//! this one asks every invariant of the stored state across many periods:
//! it found a commit fast path that gave a hold's released share back to a
//! bucket that had expired under it, and BYOK holds missing from their
//! account's `next_event`. No call may end in XX000, XX001 or P0001.
//! CREDITS_PERIODS_STEPS sets the number of calls per seed.

mod common;

use common::{connect, fresh_db, sqlstate, Rng};
use postgres::Client;
use std::collections::BTreeMap;

/// One seed's run; returns the SQLSTATEs of the refused calls, counted.
fn run(client: &mut Client, seed: u64, steps: u32) -> BTreeMap<String, u32> {
    let mut rng = Rng(seed);
    let p = format!("s{seed}");
    // Minutes after 2026-01-20 12:00 UTC.
    let mut minutes: i64 = 0;
    let clock = |m: i64| {
        format!("SELECT set_config('credits.now', (timestamptz '2026-01-20 12:00+00' + interval '{m} minutes')::text, false)")
    };
    client.batch_execute(&clock(minutes)).unwrap();
    client
        .batch_execute(&format!(
            "SELECT credits_plan_upsert('{p}h', 100, 'calendar_month', rollover_cap => 30);
             SELECT credits_plan_upsert('{p}s', 50, 'billing_date', limit_mode => 'soft', soft_limit => 20,
                                        rollover_cap => 10);
             SELECT credits_account_upsert('{p}a0', '{p}h');
             SELECT credits_account_upsert('{p}a1', '{p}s');
             SELECT credits_account_upsert('{p}a2', '{p}h');"
        ))
        .unwrap();
    let mut holds: Vec<String> = Vec::new();
    let mut refused: BTreeMap<String, u32> = BTreeMap::new();
    for step in 0..steps {
        let account = format!("{p}a{}", rng.below(3));
        let op = rng.below(100);
        let result = if op < 30 {
            let ttl = ["5 minutes", "1 hour", "3 days", "40 days"][rng.below(4) as usize];
            client
                .query_one(
                    "SELECT credits_reserve(account_id => $1, amount => $2::text::numeric, product => 'editor',
                                            ttl => $3::text::interval)::text",
                    &[&account, &(1 + rng.below(40)).to_string(), &ttl],
                )
                .map(|row| holds.push(row.get(0)))
        } else if op < 50 && !holds.is_empty() {
            let id = &holds[rng.below(holds.len() as u64) as usize];
            let amount = match rng.below(3) {
                0 => None,
                1 => Some("0".to_string()),
                _ => Some((1 + rng.below(50)).to_string()),
            };
            client
                .query_one(
                    "SELECT credits_commit($1::text::uuid, $2::text::numeric, $3)",
                    &[id, &amount, &(rng.below(5) == 0)],
                )
                .map(|_| ())
        } else if op < 62 && !holds.is_empty() {
            let id = &holds[rng.below(holds.len() as u64) as usize];
            let amount = (rng.below(2) == 0).then(|| (1 + rng.below(20)).to_string());
            client
                .query_one(
                    "SELECT credits_refund($1::text::uuid, $2::text::numeric)",
                    &[id, &amount],
                )
                .map(|_| ())
        } else if op < 70 {
            let kind = ["topup", "promo", "pack"][rng.below(3) as usize];
            let hours = (kind == "promo" && rng.below(10) < 7).then(|| 1 + rng.below(480) as i64);
            client
                .query_one(
                    "SELECT credits_grant($1, $2::text::numeric, $3,
                                          credits._now() + make_interval(hours => $4::bigint::int))",
                    &[&account, &(1 + rng.below(30)).to_string(), &kind, &hours],
                )
                .map(|_| ())
        } else if op < 74 {
            let plan = format!("{p}{}", ["h", "s"][rng.below(2) as usize]);
            client
                .execute("SELECT credits_account_upsert($1, $2)", &[&account, &plan])
                .map(|_| ())
        } else if op < 76 {
            client
                .execute(
                    "SELECT credits_account_upsert($1, byok => $2)",
                    &[&account, &(rng.below(2) == 0)],
                )
                .map(|_| ())
        } else if op < 78 {
            client.batch_execute("CALL credits_maintenance()")
        } else {
            minutes += match rng.below(3) {
                0 => 1 + rng.below(90) as i64,
                1 => 60 * (1 + rng.below(48) as i64),
                _ => 24 * 60 * (1 + rng.below(20) as i64),
            };
            client.batch_execute(&clock(minutes))
        };
        if let Err(e) = result {
            let state = sqlstate(&e);
            assert!(
                !["XX000", "XX001", "P0001", "2D000", ""].contains(&state.as_str()),
                "seed {seed}, step {step}, op {op}: {e}"
            );
            *refused.entry(state).or_default() += 1;
        }
        let violations: Vec<String> = client
            .query(
                "SELECT invariant || ': ' || account_id || ': ' || detail FROM credits_verify()",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert!(
            violations.is_empty(),
            "seed {seed}, step {step}, op {op}, {minutes} minutes after 2026-01-20 12:00: {violations:?}"
        );
    }
    refused
}

#[test]
fn every_invariant_holds_after_every_call_across_many_periods() {
    let steps: u32 = std::env::var("CREDITS_PERIODS_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let url = fresh_db("it_periods");
    let mut client = connect(&url);
    for seed in 1..=4 {
        let refused = run(&mut client, seed, steps);
        println!("periods check: seed {seed}, {steps} calls, refused {refused:?}");
    }
}
