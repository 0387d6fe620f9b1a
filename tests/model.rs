//! The model check: random sequences of API calls, with random and hostile
//! arguments, run against the extension on one connection and against a
//! small in-memory model of the spec; every call must have the same outcome
//! (result or SQLSTATE) and every account the same figures afterwards. No
//! call may end in XX000 or lose the connection.
//!
//! The model covers one billing period (the clock moves within March 2026):
//! hard and soft limits, buckets in consumption order with promo expiry,
//! holds and their expiry, commits below, at and above the hold (force and
//! debt), refunds in reverse (debt, overage, buckets), idempotency keys and
//! bad input. CREDITS_MODEL_CASES sets the number of sequences.

mod common;

use common::{connect, fresh_db};
use postgres::Client;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rust_decimal::Decimal;
use std::cell::RefCell;
use std::collections::HashMap;
use std::str::FromStr;

const START: i64 = 0; // minutes after 2026-03-10 12:00 UTC
const PROMO_END_A: i64 = 4 * 24 * 60 + 12 * 60; // 2026-03-15 00:00
const PROMO_END_B: i64 = 21 * 24 * 60 + 11 * 60 + 59; // 2026-03-31 23:59
const PERIOD_END: i64 = 21 * 24 * 60 + 12 * 60; // 2026-04-01 00:00

#[derive(Clone, Debug)]
enum Amount {
    Valid(i64, u8), // units and a tenth
    Null,
    Zero,
    Negative,
    NaN,
    Infinity,
    Huge,
    TooPrecise,
}

impl Amount {
    fn sql(&self) -> String {
        match self {
            Amount::Valid(u, t) => format!("{u}.{t}"),
            Amount::Null => "NULL".into(),
            Amount::Zero => "0".into(),
            Amount::Negative => "-3".into(),
            Amount::NaN => "'NaN'::numeric".into(),
            Amount::Infinity => "'Infinity'::numeric".into(),
            Amount::Huge => "1e20".into(),
            Amount::TooPrecise => "0.0000001".into(),
        }
    }
    /// The value, or the SQLSTATE of validating it (allow_zero for commit).
    fn check(&self, allow_zero: bool) -> Result<Decimal, &'static str> {
        match self {
            Amount::Valid(u, t) => Ok(Decimal::from(*u) + Decimal::new(i64::from(*t), 1)),
            Amount::Null => Err("22004"),
            Amount::Zero if allow_zero => Ok(Decimal::ZERO),
            Amount::Zero
            | Amount::Negative
            | Amount::NaN
            | Amount::Infinity
            | Amount::TooPrecise => Err("22023"),
            Amount::Huge => Err("22003"),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Reserve {
        acct: u8,
        amount: Amount,
        ttl: i64,
        key: Option<u8>,
        product: u8,
    },
    Commit {
        res: usize,
        amount: Option<Amount>,
        force: bool,
    },
    Refund {
        res: usize,
        amount: Option<Amount>,
    },
    Grant {
        acct: u8,
        amount: Amount,
        kind: u8,
    },
    Advance {
        minutes: i64,
    },
}

fn amount() -> impl Strategy<Value = Amount> {
    prop_oneof![
        8 => (1i64..40, 0u8..2).prop_map(|(u, t)| Amount::Valid(u, t * 5)),
        1 => prop_oneof![Just(Amount::Null), Just(Amount::Zero), Just(Amount::Negative), Just(Amount::NaN),
                         Just(Amount::Infinity), Just(Amount::Huge), Just(Amount::TooPrecise)],
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, amount(), prop_oneof![9 => 1i64..300, 1 => -5i64..1], proptest::option::weighted(0.3, 0u8..3), 0u8..5)
            .prop_map(|(acct, amount, ttl, key, product)| Op::Reserve { acct, amount, ttl, key, product }),
        3 => (0usize..12, proptest::option::weighted(0.7, amount()), proptest::bool::weighted(0.2))
            .prop_map(|(res, amount, force)| Op::Commit { res, amount, force }),
        2 => (0usize..12, proptest::option::weighted(0.5, amount())).prop_map(|(res, amount)| Op::Refund { res, amount }),
        1 => (0u8..3, amount(), 0u8..4).prop_map(|(acct, amount, kind)| Op::Grant { acct, amount, kind }),
        1 => (1i64..2000).prop_map(|minutes| Op::Advance { minutes }),
    ]
}

// ---------------------------------------------------------------- the model

#[derive(Clone, Debug)]
struct Bucket {
    priority: u8,
    expires: Option<i64>,
    seq: usize,
    balance: Decimal,
    held: Decimal,
}

#[derive(Clone, Debug, PartialEq)]
enum Status {
    Pending,
    Committed,
    Released,
    Expired,
}

#[derive(Clone, Debug)]
struct Res {
    acct: usize,
    status: Status,
    amount: Decimal,
    draws: Vec<(usize, Decimal)>,
    overage: Decimal,
    debt: Decimal,
    charged: Decimal,
    refunded: Decimal,
    expires: i64,
}

#[derive(Clone, Debug, Default)]
struct Account {
    soft: Option<Decimal>,
    buckets: Vec<Bucket>,
    overage_held: Decimal,
    used: Decimal,
    overage: Decimal,
    debt: Decimal,
}

#[derive(Default)]
struct Model {
    now: i64,
    accounts: Vec<Account>,
    res: Vec<Res>,
    keys: HashMap<(usize, u8), (Decimal, i64, u8, usize)>,
}

type Outcome = Result<Option<Decimal>, String>;

fn err(code: &str) -> Outcome {
    Err(code.to_string())
}

impl Model {
    fn new() -> Model {
        let bucket = |alloc: i64| Bucket {
            priority: 0,
            expires: Some(PERIOD_END),
            seq: 0,
            balance: Decimal::from(alloc),
            held: Decimal::ZERO,
        };
        Model {
            now: START,
            accounts: vec![
                Account {
                    soft: None,
                    buckets: vec![bucket(100)],
                    ..Default::default()
                },
                Account {
                    soft: Some(Decimal::from(20)),
                    buckets: vec![bucket(50)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn live(b: &Bucket, at: i64) -> bool {
        b.expires.is_none_or(|e| e > at)
    }

    /// What a write path does first: holds past their ttl are released (a
    /// share from a bucket expired by then is written off), expired buckets
    /// keep only what pending holds still hold.
    fn housekeep(&mut self, acct: usize) {
        let now = self.now;
        let mut due: Vec<usize> = (0..self.res.len())
            .filter(|&i| {
                self.res[i].acct == acct
                    && self.res[i].status == Status::Pending
                    && self.res[i].expires <= now
            })
            .collect();
        due.sort_by_key(|&i| self.res[i].expires);
        for i in due {
            let r = self.res[i].clone();
            let a = &mut self.accounts[acct];
            for (b, amt) in &r.draws {
                let bucket = &mut a.buckets[*b];
                bucket.held -= amt;
                if !Self::live(bucket, r.expires) {
                    bucket.balance -= amt;
                }
            }
            a.overage_held -= r.overage;
            self.res[i].status = Status::Expired;
        }
        for b in &mut self.accounts[acct].buckets {
            if !Self::live(b, now) {
                b.balance = b.held;
            }
        }
    }

    fn order(a: &Account) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..a.buckets.len()).collect();
        idx.sort_by_key(|&i| {
            (
                a.buckets[i].priority,
                a.buckets[i].expires.unwrap_or(i64::MAX),
                a.buckets[i].seq,
            )
        });
        idx
    }

    /// Draws up to `amount` from live buckets in consumption order, as holds
    /// or as charges.
    fn draw(
        &mut self,
        acct: usize,
        amount: Decimal,
        hold: bool,
    ) -> (Vec<(usize, Decimal)>, Decimal) {
        let now = self.now;
        let a = &mut self.accounts[acct];
        let mut left = amount;
        let mut draws = Vec::new();
        for i in Self::order(a) {
            let b = &mut a.buckets[i];
            let free = b.balance - b.held;
            if left.is_zero() || free <= Decimal::ZERO || !Self::live(b, now) {
                continue;
            }
            let take = free.min(left);
            if hold {
                b.held += take;
            } else {
                b.balance -= take;
            }
            draws.push((i, take));
            left -= take;
        }
        (draws, amount - left)
    }

    fn free(&self, acct: usize) -> Decimal {
        let now = self.now;
        self.accounts[acct]
            .buckets
            .iter()
            .filter(|b| Self::live(b, now))
            .map(|b| b.balance - b.held)
            .sum()
    }

    fn new_bucket(&mut self, acct: usize, priority: u8, expires: Option<i64>, amount: Decimal) {
        let a = &mut self.accounts[acct];
        let settled = a.debt.min(amount);
        a.debt -= settled;
        let seq = a.buckets.len();
        a.buckets.push(Bucket {
            priority,
            expires,
            seq,
            balance: amount - settled,
            held: Decimal::ZERO,
        });
    }

    fn reserve(
        &mut self,
        acct: u8,
        amount: &Amount,
        ttl: i64,
        key: Option<u8>,
        product: u8,
    ) -> Outcome {
        let amount = amount.check(false).map_err(String::from)?;
        if product >= 3 {
            return err("22023"); // an empty product, a 300-character one
        }
        if ttl <= 0 {
            return err("22023");
        }
        if acct == 2 {
            return err("CR002");
        }
        let acct = acct as usize;
        self.housekeep(acct);
        if let Some(k) = key {
            if let Some(&(a, t, p, id)) = self.keys.get(&(acct, k)) {
                return if a == amount && t == ttl && p == product {
                    Ok(Some(Decimal::from(id)))
                } else {
                    err("CR006")
                };
            }
        }
        let a = &self.accounts[acct];
        if a.debt > Decimal::ZERO {
            return err("CR008");
        }
        let free = self.free(acct);
        let mut overage = Decimal::ZERO;
        if free < amount {
            overage = amount - free;
            match a.soft {
                Some(soft) if a.overage + a.overage_held + overage <= soft => {}
                _ => return err("CR001"),
            }
        }
        let (draws, _) = self.draw(acct, amount - overage, true);
        self.accounts[acct].overage_held += overage;
        let id = self.res.len();
        self.res.push(Res {
            acct,
            status: Status::Pending,
            amount,
            draws,
            overage,
            debt: Decimal::ZERO,
            charged: Decimal::ZERO,
            refunded: Decimal::ZERO,
            expires: self.now + ttl,
        });
        if let Some(k) = key {
            self.keys.insert((acct, k), (amount, ttl, product, id));
        }
        Ok(Some(Decimal::from(id)))
    }

    fn commit(&mut self, res: usize, amount: &Option<Amount>, force: bool) -> Outcome {
        let amount = match amount {
            None | Some(Amount::Null) => None,
            Some(a) => Some(a.check(true).map_err(String::from)?),
        };
        if res >= self.res.len() {
            return err("CR004");
        }
        let acct = self.res[res].acct;
        self.housekeep(acct);
        let r = self.res[res].clone();
        let charge = amount.unwrap_or(r.amount);
        match r.status {
            Status::Committed if r.refunded.is_zero() && r.charged == charge => {
                return Ok(Some(r.charged))
            }
            Status::Committed if r.refunded.is_zero() => return err("CR011"),
            Status::Committed | Status::Released => return err("CR005"),
            _ => {}
        }
        let now = self.now;
        let before = self.accounts[acct].clone();
        let mut left = charge;
        let mut charged = Decimal::ZERO;
        let mut overage = Decimal::ZERO;
        let mut new_draws = Vec::new();
        let mut ov_held = Decimal::ZERO;
        if r.status == Status::Pending {
            let a = &mut self.accounts[acct];
            for (b, amt) in &r.draws {
                let take = (*amt).min(left);
                let bucket = &mut a.buckets[*b];
                bucket.held -= amt;
                bucket.balance -= take;
                if !Self::live(bucket, now) {
                    bucket.balance -= *amt - take;
                }
                if take > Decimal::ZERO {
                    new_draws.push((*b, take));
                }
                left -= take;
                charged += take;
            }
            overage = r.overage.min(left);
            left -= overage;
            ov_held = r.overage;
            a.overage_held -= r.overage;
        }
        let mut debt = Decimal::ZERO;
        if left > Decimal::ZERO {
            let (draws, total) = self.draw(acct, left, false);
            new_draws.extend(draws);
            charged += total;
            left -= total;
            if left > Decimal::ZERO {
                let room = match before.soft {
                    Some(soft) => (soft - before.overage - before.overage_held - overage + ov_held)
                        .max(Decimal::ZERO),
                    None => Decimal::ZERO,
                };
                let take = left.min(room);
                overage += take;
                left -= take;
                if left > Decimal::ZERO && !force {
                    self.accounts[acct] = before;
                    return err("CR001");
                }
                debt = left;
            }
        }
        let a = &mut self.accounts[acct];
        a.used += charged + debt;
        a.overage += overage;
        a.debt += debt;
        let r = &mut self.res[res];
        r.status = Status::Committed;
        r.charged = charge;
        r.draws = new_draws;
        r.overage = overage;
        r.debt = debt;
        Ok(Some(charge))
    }

    fn refund(&mut self, res: usize, amount: &Option<Amount>) -> Outcome {
        let amount = match amount {
            None | Some(Amount::Null) => None,
            Some(a) => Some(a.check(false).map_err(String::from)?),
        };
        if res >= self.res.len() {
            return err("CR004");
        }
        let acct = self.res[res].acct;
        self.housekeep(acct);
        let now = self.now;
        let r = self.res[res].clone();
        match r.status {
            Status::Pending => {
                let a = &mut self.accounts[acct];
                for (b, amt) in &r.draws {
                    let bucket = &mut a.buckets[*b];
                    bucket.held -= amt;
                    if !Self::live(bucket, now) {
                        bucket.balance -= amt;
                    }
                }
                a.overage_held -= r.overage;
                self.res[res].status = Status::Released;
                Ok(Some(r.amount))
            }
            Status::Committed => {
                let left = r.charged - r.refunded;
                if amount.is_some_and(|a| a > left) {
                    return err("CR012");
                }
                let ret = amount.unwrap_or(left);
                let mut parts: Vec<(u8, Option<usize>, Decimal)> =
                    vec![(0, None, r.debt), (1, None, r.overage)];
                parts.extend(r.draws.iter().rev().map(|(b, amt)| (2, Some(*b), *amt)));
                let mut pos = Decimal::ZERO;
                for (kind, bucket, size) in parts {
                    let lo = r.refunded.max(pos);
                    let hi = (r.refunded + ret).min(pos + size);
                    pos += size;
                    let take = (hi - lo).max(Decimal::ZERO);
                    if take.is_zero() {
                        continue;
                    }
                    match kind {
                        0 => {
                            let a = &mut self.accounts[acct];
                            a.used -= take;
                            let paid = take.min(a.debt);
                            a.debt -= paid;
                            if take > paid {
                                self.new_bucket(acct, 2, None, take - paid);
                            }
                        }
                        1 => self.accounts[acct].overage -= take,
                        _ => {
                            let a = &mut self.accounts[acct];
                            a.used -= take;
                            let b = &mut a.buckets[bucket.unwrap()];
                            if Self::live(b, now) {
                                b.balance += take;
                            }
                        }
                    }
                }
                self.res[res].refunded += ret;
                Ok(Some(ret))
            }
            _ => err("CR005"),
        }
    }

    fn grant(&mut self, acct: u8, amount: &Amount, kind: u8) -> Outcome {
        let amount = amount.check(false).map_err(String::from)?;
        if acct == 2 {
            return err("CR002");
        }
        let acct = acct as usize;
        self.housekeep(acct);
        let (priority, expires) = match kind {
            0 => (1, Some(PERIOD_END)),
            1 => (2, None),
            2 => (1, Some(PROMO_END_A)),
            _ => (1, Some(PROMO_END_B)),
        };
        if expires.is_some_and(|e| e <= self.now) {
            return err("22023");
        }
        self.new_bucket(acct, priority, expires, amount);
        Ok(None)
    }

    /// available, reserved, used, overage, debt, as credits.account_summary shows them.
    fn figures(&self, acct: usize) -> Vec<Decimal> {
        let mut m = Model {
            now: self.now,
            accounts: self.accounts.clone(),
            res: self.res.clone(),
            keys: HashMap::new(),
        };
        m.housekeep(acct);
        let a = &m.accounts[acct];
        let held: Decimal = a.buckets.iter().map(|b| b.held).sum();
        vec![
            m.free(acct),
            held + a.overage_held,
            a.used,
            a.overage,
            a.debt,
        ]
    }
}

// ------------------------------------------------------------- the real thing

struct Db {
    client: Client,
    prefix: String,
    ids: Vec<String>,
}

const PRODUCTS: [&str; 5] = ["editor", "seo", "images", "", "x"];

impl Db {
    fn account(&self, acct: u8) -> String {
        match acct {
            0 => format!("{}-h", self.prefix),
            1 => format!("{}-s", self.prefix),
            _ => format!("{}-nobody", self.prefix),
        }
    }

    fn run(&mut self, sql: &str) -> Result<Option<String>, String> {
        match self.client.query_one(sql, &[]) {
            Ok(row) => Ok(row.get::<_, Option<String>>(0)),
            Err(e) => match e.code() {
                Some(c) => Err(c.code().to_string()),
                None => panic!("the connection was lost: {e} (running {sql})"),
            },
        }
    }

    fn reservation(&self, res: usize) -> String {
        self.ids
            .get(res)
            .cloned()
            .unwrap_or_else(|| "00000000-0000-4000-8000-000000000000".into())
    }

    fn apply(&mut self, op: &Op, now: i64) -> Outcome {
        let sql = match op {
            Op::Reserve { acct, amount, ttl, key, product } => format!(
                "SELECT credits_reserve(account_id => '{}', amount => {}, product => '{}', ttl => '{ttl} minutes', \
                 idempotency_key => {})::text",
                self.account(*acct),
                amount.sql(),
                if *product == 4 { "x".repeat(300) } else { PRODUCTS[*product as usize].to_string() },
                key.map(|k| format!("'key{k}'")).unwrap_or("NULL".into())
            ),
            Op::Commit { res, amount, force } => format!(
                "SELECT credits_commit(reservation_id => '{}', amount => {}, force => {force})::text",
                self.reservation(*res),
                amount.as_ref().map(Amount::sql).unwrap_or("NULL".into())
            ),
            Op::Refund { res, amount } => format!(
                "SELECT credits_refund(reservation_id => '{}', amount => {})::text",
                self.reservation(*res),
                amount.as_ref().map(Amount::sql).unwrap_or("NULL".into())
            ),
            Op::Grant { acct, amount, kind } => {
                let (kind, expires) = match kind {
                    0 => ("topup", "NULL".to_string()),
                    1 => ("pack", "NULL".to_string()),
                    2 => ("promo", "'2026-03-15 00:00:00+00'".to_string()),
                    _ => ("promo", "'2026-03-31 23:59:00+00'".to_string()),
                };
                format!(
                    "SELECT (credits_grant(account_id => '{}', amount => {}, kind => '{kind}', expires_at => {expires}) IS NULL)::text",
                    self.account(*acct),
                    amount.sql()
                )
            }
            Op::Advance { .. } => {
                self.client
                    .batch_execute(&format!("SET credits.now = '{}'", clock(now)))
                    .unwrap();
                return Ok(None);
            }
        };
        let result = self.run(&sql)?;
        Ok(match op {
            Op::Reserve { .. } => {
                let id = result.unwrap();
                let known = self.ids.iter().position(|x| *x == id);
                Some(Decimal::from(known.unwrap_or_else(|| {
                    self.ids.push(id);
                    self.ids.len() - 1
                })))
            }
            Op::Grant { .. } => None,
            _ => result.map(|v| Decimal::from_str(&v).unwrap()),
        })
    }

    /// The account's state and live buckets as the reads compute them, then
    /// again with its next_event moved to the past, which makes them build
    /// the roll-forward plan (a false alarm: next_event is only a lower
    /// bound): the stored row, taken as is when nothing is due, and the
    /// plan must agree, figure by figure (the plan's sums may carry another
    /// scale: 0 against 0.000000; every output trims it). Provisional ids
    /// of buckets a roll would create differ on each read, so buckets are
    /// compared without ids.
    fn reads_agree_with_the_plan(&mut self, acct: u8) -> (Vec<String>, Vec<String>) {
        const READS: &str = "SELECT (SELECT row(s.account_id, s.plan_id, s.byok, s.limit_mode, trim_scale(s.soft_limit),
                                              trim_scale(s.allocation), trim_scale(s.used), trim_scale(s.overage),
                                              trim_scale(s.reserved), trim_scale(s.available),
                                              trim_scale(s.overage_available), trim_scale(s.debt), s.period_start,
                                              s.period_end, s.days_until_reset, s.override_until)::text
                                       FROM credits._account_state($1, credits._now()) s)
                             UNION ALL
                             SELECT coalesce(string_agg(row(b.kind, b.priority, trim_scale(b.amount), trim_scale(b.remaining),
                                                            trim_scale(b.held), b.expires_at, b.created_at, b.metadata)::text, ';'
                                                        ORDER BY b.priority, b.expires_at, b.created_at, b.kind,
                                                                 b.amount, b.remaining), '')
                               FROM credits._live_buckets($1, credits._now()) b";
        let account = self.account(acct);
        let mut tx = self.client.transaction().unwrap();
        let read = |tx: &mut postgres::Transaction| -> Vec<String> {
            tx.query(READS, &[&account])
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect()
        };
        let stored = read(&mut tx);
        tx.execute(
            "UPDATE credits.accounts SET next_event = '-infinity' WHERE account_id = $1",
            &[&account],
        )
        .unwrap();
        let planned = read(&mut tx);
        tx.rollback().unwrap();
        (stored, planned)
    }

    fn figures(&mut self, acct: u8) -> Vec<Decimal> {
        let row = self
            .client
            .query_one(
                "SELECT available::text, reserved::text, used::text, overage::text, debt::text \
                   FROM credits.account_summary WHERE account_id = $1",
                &[&self.account(acct)],
            )
            .unwrap();
        (0..5)
            .map(|i| Decimal::from_str(&row.get::<_, String>(i)).unwrap())
            .collect()
    }
}

fn clock(minutes: i64) -> String {
    let base = 1_773_144_000i64; // 2026-03-10 12:00:00 UTC
    let t = chrono::DateTime::from_timestamp(base + minutes * 60, 0).unwrap();
    t.format("%Y-%m-%d %H:%M:%S+00").to_string()
}

#[test]
fn the_extension_behaves_like_the_model() {
    let cases: u32 = std::env::var("CREDITS_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48);
    let url = fresh_db("it_model");
    let client = RefCell::new(connect(&url));
    client
        .borrow_mut()
        .batch_execute(
            "SELECT credits_plan_upsert(plan_id => 'hard', allocation => 100, reset => 'calendar_month');
             SELECT credits_plan_upsert(plan_id => 'soft', allocation => 50, reset => 'calendar_month',
                                        limit_mode => 'soft', soft_limit => 20);",
        )
        .unwrap();
    let case = RefCell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let zones = ["UTC", "Pacific/Kiritimati", "America/St_Johns"];
    runner
        .run(
            &(proptest::collection::vec(op(), 1..40), 0usize..3),
            |(ops, zone)| {
                *case.borrow_mut() += 1;
                let prefix = format!("m{}", case.borrow());
                let mut c = client.borrow_mut();
                c.batch_execute(&format!(
                    "SET TimeZone = '{}'; SET credits.now = '{}';
                 SELECT credits_account_upsert(account_id => '{prefix}-h', plan_id => 'hard');
                 SELECT credits_account_upsert(account_id => '{prefix}-s', plan_id => 'soft');",
                    zones[zone],
                    clock(START)
                ))
                .unwrap();
                drop(c);
                let mut db = Db {
                    client: std::mem::replace(&mut *client.borrow_mut(), connect(&url)),
                    prefix,
                    ids: vec![],
                };
                let mut model = Model::new();
                for (i, op) in ops.iter().enumerate() {
                    if let Op::Advance { minutes } = op {
                        model.now = (model.now + minutes).min(PERIOD_END - 60);
                    }
                    let want = match op {
                        Op::Reserve {
                            acct,
                            amount,
                            ttl,
                            key,
                            product,
                        } => model.reserve(*acct, amount, *ttl, *key, *product),
                        Op::Commit { res, amount, force } => model.commit(*res, amount, *force),
                        Op::Refund { res, amount } => model.refund(*res, amount),
                        Op::Grant { acct, amount, kind } => model.grant(*acct, amount, *kind),
                        Op::Advance { .. } => Ok(None),
                    };
                    let have = db.apply(op, model.now);
                    if have.as_ref().err().is_some_and(|e| e == "XX000") {
                        return Err(TestCaseError::fail(format!(
                            "step {i} {op:?}: internal error"
                        )));
                    }
                    prop_assert_eq!(&have, &want, "step {} {:?}", i, op);
                    for acct in 0..2u8 {
                        let (stored, planned) = db.reads_agree_with_the_plan(acct);
                        prop_assert_eq!(
                            stored,
                            planned,
                            "after step {} {:?}, account {}: the reads from the stored row and from the plan",
                            i,
                            op,
                            acct
                        );
                        prop_assert_eq!(
                            db.figures(acct),
                            model.figures(acct as usize),
                            "after step {} {:?}, account {}",
                            i,
                            op,
                            acct
                        );
                    }
                }
                let violations = db
                    .client
                    .query("SELECT invariant, detail FROM credits_verify()", &[])
                    .unwrap();
                prop_assert!(
                    violations.is_empty(),
                    "credits_verify() found {} violations",
                    violations.len()
                );
                *client.borrow_mut() = db.client;
                Ok(())
            },
        )
        .unwrap();
    println!(
        "model check: {} sequences agreed with the model",
        case.borrow()
    );
}
