//! The periods check: random API calls on a few accounts while the pinned
//! clock (`credits.now`) moves forward by minutes to weeks, across resets,
//! promo expiries and hold expiries, with `credits_verify()` after every
//! call. The model check (model.rs) compares figures within one period;
//! this one asks every invariant of the stored state across many periods:
//! it found a commit fast path that gave a hold's released share back to a
//! bucket that had expired under it, and BYOK holds missing from their
//! account's `next_event`. After every call the usage views must also
//! agree with each other and with `credits_balance` (VIEWS_AGREE: it found
//! released holds that `credits.actions` showed with overage). No call may
//! end in XX000, XX001 or P0001. CREDITS_PERIODS_STEPS sets the number of
//! calls per seed (half of it for the catch-up check at the end of this
//! file: late roll-forwards must equal on-time ones, across plan edits).

mod common;

use common::{assert_verify_empty, connect, fresh_db, sqlstate, Rng};
use postgres::Client;
use std::collections::BTreeMap;

/// One row per disagreement between the usage views of the accounts whose
/// ids start with $1 (as text, for the message):
/// - `account_summary` against `credits_balance`'s summary, and its
///   `available` against the balance's live buckets;
/// - `usage_monthly` against `usage_daily` summed by month, `metrics`
///   against `usage_monthly` summed, `metrics` against `actions` summed;
/// - each action's `net`, status and `overage` against its own figures;
/// - the summary's `used + overage` against the net of the actions
///   committed in the current period (a refund counts in the period of
///   the action it gives back to, see README, Usage views);
/// - every alert line the period's usage has passed raised its
///   `usage_alert`, once.
const VIEWS_AGREE: &str = "
WITH accts AS (SELECT account_id FROM credits.accounts WHERE starts_with(account_id, $1)),
s AS (SELECT s.*, credits_balance(s.account_id) AS b FROM credits.account_summary s JOIN accts USING (account_id))
SELECT 'summary/balance ' || account_id || ': ' || to_jsonb(s)::text || ' ' || (b->'summary')::text FROM s
 WHERE (allocation, used, reserved, available, overage, debt, percent_used)
       IS DISTINCT FROM ((b->'summary'->>'allocation')::numeric, (b->'summary'->>'used')::numeric,
                         (b->'summary'->>'reserved')::numeric, (b->'summary'->>'available')::numeric,
                         (b->'summary'->>'overage')::numeric, (b->'summary'->>'debt')::numeric,
                         (b->'summary'->>'percent_used')::numeric)
    OR available <> (SELECT coalesce(sum((x->>'remaining')::numeric), 0) FROM jsonb_array_elements(b->'buckets') x)
UNION ALL
SELECT 'monthly/daily ' || coalesce(d.account_id, m.account_id) || ' ' || coalesce(d.month, m.month)::text
       || ' ' || coalesce(d.product, m.product)
  FROM (SELECT account_id, date_trunc('month', day)::date AS month, product, sum(used) AS used,
               sum(overage) AS overage, sum(refunded) AS refunded, sum(billable_overage) AS billable,
               sum(actions) AS actions, sum(byok_used) AS byok
          FROM credits.usage_daily JOIN accts USING (account_id) GROUP BY 1, 2, 3) d
  FULL JOIN (SELECT account_id, month::date AS month, product, used, overage, refunded,
                    billable_overage AS billable, actions, byok_used AS byok
               FROM credits.usage_monthly JOIN accts USING (account_id)) m
    ON m.account_id = d.account_id AND m.month = d.month AND m.product = d.product
 WHERE (d.used, d.overage, d.refunded, d.billable, d.actions, d.byok)
       IS DISTINCT FROM (m.used, m.overage, m.refunded, m.billable, m.actions, m.byok)
UNION ALL
SELECT 'metrics/monthly ' || coalesce(m.account_id, x.account_id) || ' ' || coalesce(m.product, x.product)
  FROM (SELECT account_id, product, sum(actions) AS actions, sum(used) AS used, sum(overage) AS overage,
               sum(refunded) AS refunded, sum(byok_used) AS byok
          FROM credits.usage_monthly JOIN accts USING (account_id) GROUP BY 1, 2) m
  FULL JOIN (SELECT account_id, product, actions_total AS actions, used_total AS used, overage_total AS overage,
                    refunded_total AS refunded, byok_used_total AS byok
               FROM credits.metrics JOIN accts USING (account_id)) x
    ON x.account_id = m.account_id AND x.product = m.product
 WHERE (m.actions, m.used, m.overage, m.refunded, m.byok)
       IS DISTINCT FROM (x.actions, x.used, x.overage, x.refunded, x.byok)
UNION ALL
SELECT 'metrics/actions ' || coalesce(a.account_id, x.account_id) || ' ' || coalesce(a.product, x.product)
       || ': ' || to_jsonb(a)::text || ' ' || to_jsonb(x)::text
  FROM (SELECT account_id, product,
               count(*) FILTER (WHERE status IN ('committed', 'partially_refunded')
                                   OR (status = 'refunded' AND charged > 0)) AS actions,
               coalesce(sum(charged) FILTER (WHERE NOT byok), 0) AS charged,
               coalesce(sum(overage) FILTER (WHERE NOT byok AND status <> 'pending'), 0) AS overage,
               coalesce(sum(refunded) FILTER (WHERE NOT byok), 0) AS refunded,
               coalesce(sum(net) FILTER (WHERE byok), 0) AS byok
          FROM credits.actions JOIN accts USING (account_id) GROUP BY 1, 2) a
  FULL JOIN (SELECT account_id, product, actions_total AS actions, used_total + overage_total AS charged,
                    overage_total AS overage, refunded_total AS refunded, byok_used_total AS byok
               FROM credits.metrics JOIN accts USING (account_id)) x
    ON x.account_id = a.account_id AND x.product = a.product
 WHERE (coalesce(a.actions, 0), coalesce(a.charged, 0), coalesce(a.overage, 0), coalesce(a.refunded, 0),
        coalesce(a.byok, 0))
       IS DISTINCT FROM (coalesce(x.actions, 0), coalesce(x.charged, 0), coalesce(x.overage, 0),
                         coalesce(x.refunded, 0), coalesce(x.byok, 0))
UNION ALL
SELECT 'action ' || account_id || ': ' || to_jsonb(a)::text FROM credits.actions a JOIN accts USING (account_id)
 WHERE net IS DISTINCT FROM charged - refunded OR refunded > charged OR overage > greatest(charged, reserved)
    OR (status IN ('pending', 'expired') AND (charged <> 0 OR refunded <> 0))
    OR (status = 'expired' AND overage <> 0)
    OR (status = 'refunded' AND (refunded <> charged OR (charged = 0 AND overage <> 0)))
    OR (status = 'partially_refunded' AND NOT (refunded > 0 AND refunded < charged))
    OR (status = 'committed' AND refunded <> 0)
    OR (status IN ('committed', 'partially_refunded') AND overage > charged)
UNION ALL
SELECT 'summary/period ' || s.account_id || ': ' || s.used || ' + ' || s.overage || ' against ' || n.net
  FROM s, LATERAL (SELECT coalesce(sum(a.net), 0) AS net FROM credits.actions a
                    WHERE a.account_id = s.account_id AND NOT a.byok AND a.charged > 0
                      AND a.resolved_at >= s.period_start AND a.resolved_at < s.period_end) n
 WHERE NOT s.byok AND s.used + s.overage <> n.net
UNION ALL
SELECT 'alert ' || s.account_id || ': usage ' || (s.used + s.overage) || ' of ' || s.allocation || ' past '
       || x.pct || '% without its usage_alert'
  FROM s JOIN credits.accounts a USING (account_id), unnest(a.alert_percents) AS x(pct)
 WHERE NOT s.byok AND s.allocation > 0 AND s.used + s.overage >= x.pct * s.allocation / 100
   AND NOT EXISTS (SELECT 1 FROM credits.events e
                    WHERE e.account_id = s.account_id AND e.kind = 'usage_alert'
                      AND (e.payload->>'percent')::numeric = x.pct AND e.created_at >= s.period_start)
UNION ALL
SELECT 'alert ' || e.account_id || ': ' || count(*) || ' alerts at ' || (e.payload->>'percent') || '% in one period'
  FROM s JOIN credits.events e USING (account_id)
 WHERE e.kind = 'usage_alert' AND e.created_at >= s.period_start
 GROUP BY e.account_id, e.payload->>'percent' HAVING count(*) > 1";

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
        let disagreements = rows_of(client, VIEWS_AGREE, &p);
        assert!(
            disagreements.is_empty(),
            "seed {seed}, step {step}, op {op}, {minutes} minutes after 2026-01-20 12:00: {disagreements:?}"
        );
    }
    refused
}

fn rows_of(client: &mut Client, sql: &str, prefix: &str) -> Vec<String> {
    client
        .query(sql, &[&prefix])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
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

/// What must be the same for an account whether it was rolled forward on
/// time or late: its buckets, ledger rows, stored figures and holds, without
/// their ids (and without `next_event`, a lower bound). Buckets alike in
/// kind, priority, expiry and creation (two grants at one instant) are
/// summed, and so are the ledger rows of one instant, kind and product:
/// which of such buckets a reserve draws from first is left to their
/// random ids.
const ACCOUNT_STATE: &str = "
SELECT concat_ws(' | ',
  (SELECT string_agg(x, ';' ORDER BY x)
     FROM (SELECT format('%s/%s/%s/%s/%s/%s/%s', kind, priority, expires_at, created_at, sum(amount), sum(balance),
                         sum(held)) AS x
             FROM credits.buckets WHERE account_id = $1 GROUP BY kind, priority, expires_at, created_at) b),
  (SELECT string_agg(x, ';' ORDER BY x)
     FROM (SELECT format('%s/%s/%s/%s', created_at, kind, product, sum(amount)) AS x
             FROM credits.ledger WHERE account_id = $1 GROUP BY created_at, kind, product) l),
  (SELECT format('%s/%s/%s/%s/%s/%s/%s/%s/%s', balance, held, overage_held, period_start, period_end, period_used,
                 period_overage, debt, alerts_raised)
     FROM credits.accounts WHERE account_id = $1),
  (SELECT string_agg(x, ';' ORDER BY x)
     FROM (SELECT format('%s/%s/%s/%s/%s/%s/%s', created_at, amount, status, charged, refunded, overage, expires_at) AS x
             FROM credits.reservations WHERE account_id = $1) r))";

/// The outcome of a call: its result as text, or its SQLSTATE.
fn outcome(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<String, String> {
    client
        .query_one(sql, params)
        .map(|row| row.get::<_, Option<String>>(0).unwrap_or_default())
        .map_err(|e| sqlstate(&e))
}

/// One seed of the catch-up check: pairs of accounts on the same plans get
/// the same calls at the same times; the on-time one of each pair is rolled
/// forward every six hours of pinned clock, the late one only by its own
/// calls and now and then all at once (`credits_reset`). Plans are edited
/// on the way, and both accounts of a pair changed alike (overrides,
/// anchors, BYOK, plans). Each call must have the same outcome on both, and after each
/// catch-up both must hold the same state.
fn late_equals_on_time(client: &mut Client, seed: u64, steps: u32) {
    let mut rng = Rng(seed);
    let p = format!("c{seed}");
    let at = "timestamptz '2026-01-31 12:00+00' + make_interval(mins => $2::bigint::int)";
    let mut minutes: i64 = 0;
    let clock = |m: i64| {
        format!("SELECT set_config('credits.now', (timestamptz '2026-01-31 12:00+00' + interval '{m} minutes')::text, false)")
    };
    client.batch_execute(&clock(0)).unwrap();
    let plan_h = |alloc: &str, cap: &str| {
        format!(
            "SELECT credits_plan_upsert('{p}h', {alloc}, 'calendar_month', rollover_cap => {cap})"
        )
    };
    let plan_b = |alloc: &str, soft: &str| {
        format!(
            "SELECT credits_plan_upsert('{p}b', {alloc}, 'billing_date', rollover_cap => 50, limit_mode => 'soft', \
             soft_limit => {soft})"
        )
    };
    client.batch_execute(&plan_h("100", "30")).unwrap();
    client.batch_execute(&plan_b("50", "10")).unwrap();
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (i, plan) in ["h", "b", "b"].iter().enumerate() {
        let (late, on_time) = (format!("{p}L{i}"), format!("{p}O{i}"));
        for account in [&late, &on_time] {
            client
                .execute(
                    "SELECT credits_account_upsert($1, $2)",
                    &[account, &format!("{p}{plan}")],
                )
                .unwrap();
        }
        pairs.push((late, on_time));
    }
    // (pair, late hold, on-time hold)
    let mut holds: Vec<(usize, String, String)> = Vec::new();
    let reset = format!("SELECT credits_reset(account_id => $1, as_of => {at})::text");
    for step in 0..steps {
        let i = rng.below(pairs.len() as u64) as usize;
        let op = rng.below(100);
        let (late, on_time) = pairs[i].clone();
        if op < 30 {
            let amount = (1 + rng.below(40)).to_string();
            let ttl = ["1 hour", "3 days", "20 days", "45 days"][rng.below(4) as usize];
            let sql = "SELECT credits_reserve($1, $2::text::numeric, 'editor', ttl => $3::text::interval)::text";
            let l = outcome(client, sql, &[&late, &amount, &ttl]);
            let o = outcome(client, sql, &[&on_time, &amount, &ttl]);
            assert_eq!(
                l.is_ok(),
                o.is_ok(),
                "seed {seed}, step {step}: reserve {amount} on pair {i}: {l:?} {o:?}"
            );
            if let (Ok(l), Ok(o)) = (l, o) {
                holds.push((i, l, o));
            }
        } else if op < 60 && !holds.is_empty() {
            let (_, l_id, o_id) = holds[rng.below(holds.len() as u64) as usize].clone();
            let (l, o) = if op < 50 {
                let amount = match rng.below(3) {
                    0 => None,
                    1 => Some("0".to_string()),
                    _ => Some((1 + rng.below(50)).to_string()),
                };
                let force = rng.below(5) == 0;
                let sql = "SELECT credits_commit($1::text::uuid, $2::text::numeric, $3)::text";
                (
                    outcome(client, sql, &[&l_id, &amount, &force]),
                    outcome(client, sql, &[&o_id, &amount, &force]),
                )
            } else {
                let amount = (rng.below(2) == 0).then(|| (1 + rng.below(20)).to_string());
                let sql = "SELECT credits_refund($1::text::uuid, $2::text::numeric)::text";
                (
                    outcome(client, sql, &[&l_id, &amount]),
                    outcome(client, sql, &[&o_id, &amount]),
                )
            };
            assert_eq!(
                l, o,
                "seed {seed}, step {step}, op {op}: commit or refund differ"
            );
        } else if op < 70 {
            let kind = ["topup", "promo", "pack"][rng.below(3) as usize];
            let hours = (kind == "promo" && rng.below(3) > 0).then(|| 1 + rng.below(2000) as i64);
            let amount = (1 + rng.below(30)).to_string();
            let sql = "SELECT (credits_grant($1, $2::text::numeric, $3,
                                             credits._now() + make_interval(hours => $4::bigint::int)) IS NOT NULL)::text";
            let l = outcome(client, sql, &[&late, &amount, &kind, &hours]);
            let o = outcome(client, sql, &[&on_time, &amount, &kind, &hours]);
            assert_eq!(l, o, "seed {seed}, step {step}: grant differs");
        } else if op < 78 {
            // The same change of both accounts: an override, an anchor,
            // BYOK or another plan.
            let (sql, arg): (&str, Option<String>) = match rng.below(4) {
                0 => (
                    "SELECT credits_account_upsert($1, limit_mode => $2, soft_limit => 5,
                                                   override_until => credits._now() + interval '9 days')::text",
                    Some(["soft", "hard", "plan"][rng.below(3) as usize].to_string()),
                ),
                1 => (
                    "SELECT credits_account_upsert($1, billing_anchor => timestamptz '2026-01-31 12:00+00'
                                                       + make_interval(hours => $2::text::int))::text",
                    Some((rng.below(400 * 24)).to_string()),
                ),
                2 => (
                    "SELECT credits_account_upsert($1, byok => $2::text::boolean)::text",
                    Some((rng.below(3) == 0).to_string()),
                ),
                _ => (
                    "SELECT credits_account_upsert($1, $2)::text",
                    Some(format!("{p}{}", ["h", "b"][rng.below(2) as usize])),
                ),
            };
            let l = outcome(client, sql, &[&late, &arg]);
            let o = outcome(client, sql, &[&on_time, &arg]);
            assert_eq!(l, o, "seed {seed}, step {step}: {sql} {arg:?} differs");
        } else if op < 82 {
            let alloc = ["40", "100", "150"][rng.below(3) as usize];
            if rng.below(2) == 0 {
                client
                    .batch_execute(&plan_h(alloc, ["0", "30"][rng.below(2) as usize]))
                    .unwrap();
            } else {
                client
                    .batch_execute(&plan_b(alloc, ["0", "10"][rng.below(2) as usize]))
                    .unwrap();
            }
        } else {
            let new = minutes
                + if rng.below(2) == 0 {
                    1 + rng.below(600) as i64
                } else {
                    1440 * (1 + rng.below(100) as i64)
                };
            client.batch_execute(&clock(new)).unwrap();
            for (_, on_time) in &pairs {
                let mut t = minutes + 360;
                while t < new {
                    client.query_one(&reset, &[on_time, &t]).unwrap();
                    t += 360;
                }
                client.query_one(&reset, &[on_time, &new]).unwrap();
            }
            minutes = new;
            if rng.below(4) == 0 {
                for (late, on_time) in &pairs {
                    client.query_one(&reset, &[late, &minutes]).unwrap();
                    let l: String = client.query_one(ACCOUNT_STATE, &[late]).unwrap().get(0);
                    let o: String = client.query_one(ACCOUNT_STATE, &[on_time]).unwrap().get(0);
                    assert_eq!(l, o, "seed {seed}, step {step}: {late} rolled late differs from {on_time} rolled on time");
                }
            }
        }
    }
}

#[test]
fn catching_up_late_equals_rolling_on_time_across_plan_edits() {
    let steps: u32 = std::env::var("CREDITS_PERIODS_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(|n: u32| n / 2)
        .unwrap_or(200);
    let url = fresh_db("it_catch_up");
    let mut client = connect(&url);
    for seed in 1..=3 {
        late_equals_on_time(&mut client, seed, steps);
    }
    assert_verify_empty(&mut client);
}
