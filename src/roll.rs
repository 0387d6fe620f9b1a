//! Bringing an account up to a moment: the one implementation of what time
//! does to an account, used by both sides.
//!
//! - Write paths (`credits._housekeep`, sql/housekeeping.sql) apply the plan
//!   it returns: ledger rows, bucket balances, expired holds, the new period.
//! - Reads (`credits._account_state`, sql/state.sql) show its end state
//!   without writing, so they work in read-only transactions and on standbys.
//!
//! Events are taken in time order: holds past their ttl are released (a
//! share drawn from a bucket that had expired by then is written off); at
//! each period boundary the unused allocation and rollover carry over up to
//! the cap into a rollover bucket that expires at the end of the next
//! period, every bucket due expires, and the new allocation is granted; new
//! credit pays off debt first. A late run therefore gives exactly what
//! on-time runs would have given.

use crate::period::{period_after, Reset};
use chrono::{Duration, NaiveDate, NaiveDateTime, NaiveTime};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::JsonB;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Deserialize)]
pub struct Input {
    now: String,
    period_start: String,
    period_end: String,
    anchor: String,
    reset: String,
    allocation: Decimal,
    rollover_cap: Decimal,
    byok: bool,
    debt: Decimal,
    buckets: Vec<BucketIn>,
    holds: Vec<HoldIn>,
}

#[derive(Deserialize)]
struct BucketIn {
    id: Uuid,
    kind: String,
    priority: i16,
    balance: Decimal,
    held: Decimal,
    expires_at: Option<String>,
    created_at: String,
}

/// A pending hold whose ttl has passed by `now`.
#[derive(Deserialize)]
struct HoldIn {
    id: Uuid,
    expires_at: String,
    overage: Decimal,
    buckets: Vec<Uuid>,
    amounts: Vec<Decimal>,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Bucket {
    pub id: Uuid,
    pub kind: String,
    pub priority: i16,
    pub amount: Decimal,
    pub balance: Decimal,
    pub held: Decimal,
    pub expires_at: Option<String>,
    pub created_at: String,
    /// Created by this plan (to insert) rather than changed (to update).
    pub new: bool,
    pub changed: bool,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct LedgerRow {
    pub kind: &'static str,
    pub amount: Decimal,
    pub bucket_id: Option<Uuid>,
    pub reservation_id: Option<Uuid>,
    pub at: String,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct ExpiredHold {
    pub id: Uuid,
    pub at: String,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Plan {
    pub period_start: String,
    pub period_end: String,
    pub rolled: i32,
    pub debt: Decimal,
    pub balance_delta: Decimal,
    pub held_delta: Decimal,
    pub overage_released: Decimal,
    pub buckets: Vec<Bucket>,
    pub ledger: Vec<LedgerRow>,
    pub expired_holds: Vec<ExpiredHold>,
}

#[derive(Debug)]
pub struct PlanError(String);

fn parse_time(text: &str) -> Result<NaiveDateTime, PlanError> {
    postgres_time(text).ok_or_else(|| PlanError(format!("bad timestamp {text:?}")))
}

/// A timestamptz as Postgres writes it into JSON in the session's time
/// zone (or as `format_time` writes it, with `Z`), as UTC. That is RFC 3339
/// but where RFC 3339 does not reach: a year of five or more digits, a
/// `BC` suffix, an offset with seconds (a zone's local mean time before it
/// took a standard time, such as -10:29:20 in Pacific/Kiritimati before
/// 1901). In Kiritimati the last instant of year 9999 UTC is
/// "10000-01-01T13:59:59.999999+14:00", and an account anchored in year 1
/// reads "0001-12-31T13:30:40-10:29:20 BC": either account could not be
/// rolled forward in such a session before 0.3.5, when only RFC 3339 was
/// read.
fn postgres_time(text: &str) -> Option<NaiveDateTime> {
    let (text, bc) = match text.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    let (date, rest) = text.split_once('T')?;
    let mut ymd = date.splitn(3, '-');
    let year: i32 = ymd.next()?.parse().ok()?;
    let month: u32 = ymd.next()?.parse().ok()?;
    let day: u32 = ymd.next()?.parse().ok()?;
    // Postgres counts 1 BC as year 0, as chrono does.
    let year = if bc { 1 - year } else { year };
    let (clock, offset) = match rest.strip_suffix('Z') {
        Some(clock) => (clock, 0),
        None => {
            let sign_at = rest.rfind(['+', '-'])?;
            let (clock, offset) = rest.split_at(sign_at);
            let mut parts = offset[1..].split(':').map(|p| p.parse::<i64>().ok());
            let hours = parts.next()??;
            let minutes = parts.next().unwrap_or(Some(0))?;
            let seconds = parts.next().unwrap_or(Some(0))?;
            if parts.next().is_some() {
                return None;
            }
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            (clock, sign * (hours * 3600 + minutes * 60 + seconds))
        }
    };
    let time = NaiveTime::parse_from_str(clock, "%H:%M:%S%.f").ok()?;
    NaiveDate::from_ymd_opt(year, month, day)?
        .and_time(time)
        .checked_sub_signed(Duration::seconds(offset))
}

fn format_time(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

struct Work {
    buckets: Vec<(Bucket, Option<NaiveDateTime>)>,
    ledger: Vec<LedgerRow>,
    debt: Decimal,
    balance_delta: Decimal,
}

impl Work {
    /// Writes off the free part of every bucket that expired by `at` (or
    /// strictly before it), in consumption order, each dated at its own expiry.
    fn expire_buckets(&mut self, at: NaiveDateTime, inclusive: bool) {
        for (b, expires) in self.buckets.iter_mut() {
            if let Some(expires) = *expires {
                let free = b.balance - b.held;
                let due = if inclusive {
                    expires <= at
                } else {
                    expires < at
                };
                if due && free > Decimal::ZERO {
                    b.balance = b.held;
                    b.changed = true;
                    self.balance_delta -= free;
                    self.ledger.push(LedgerRow {
                        kind: "expire",
                        amount: -free,
                        bucket_id: Some(b.id),
                        reservation_id: None,
                        at: format_time(expires),
                    });
                }
            }
        }
    }

    /// A new bucket and its grant row; new credit pays off debt first.
    fn grant(
        &mut self,
        kind: &'static str,
        amount: Decimal,
        expires: NaiveDateTime,
        at: NaiveDateTime,
    ) {
        let id = Uuid::new_v4();
        let settled = self.debt.min(amount);
        self.debt -= settled;
        self.balance_delta += amount - settled;
        let at_text = format_time(at);
        self.ledger.push(LedgerRow {
            kind,
            amount,
            bucket_id: Some(id),
            reservation_id: None,
            at: at_text.clone(),
        });
        if settled > Decimal::ZERO {
            self.ledger.push(LedgerRow {
                kind: "debt_payment",
                amount: -settled,
                bucket_id: Some(id),
                reservation_id: None,
                at: at_text.clone(),
            });
        }
        let bucket = Bucket {
            id,
            kind: kind.to_string(),
            priority: 0,
            amount,
            balance: amount - settled,
            held: Decimal::ZERO,
            expires_at: Some(format_time(expires)),
            created_at: at_text,
            new: true,
            changed: true,
        };
        self.buckets.push((bucket, Some(expires)));
    }
}

/// Plans what bringing the account described by `input` up to its `now`
/// does. Pure: the caller applies it or only looks at it.
pub fn plan(input: Input) -> Result<Plan, PlanError> {
    let now = parse_time(&input.now)?;
    let anchor = parse_time(&input.anchor)?;
    let reset = Reset::parse(&input.reset)
        .ok_or_else(|| PlanError(format!("bad reset {:?}", input.reset)))?;
    let mut period_start = parse_time(&input.period_start)?;
    let mut period_end = parse_time(&input.period_end)?;

    let mut buckets = Vec::with_capacity(input.buckets.len() + 2);
    for b in input.buckets {
        let expires = b.expires_at.as_deref().map(parse_time).transpose()?;
        buckets.push((
            Bucket {
                id: b.id,
                kind: b.kind,
                priority: b.priority,
                amount: Decimal::ZERO,
                balance: b.balance,
                held: b.held,
                expires_at: b.expires_at,
                created_at: b.created_at,
                new: false,
                changed: false,
            },
            expires,
        ));
    }
    let mut holds = Vec::with_capacity(input.holds.len());
    for h in input.holds {
        if h.buckets.len() != h.amounts.len() {
            return Err(PlanError(format!("hold {} has uneven draws", h.id)));
        }
        holds.push((parse_time(&h.expires_at)?, h));
    }
    holds.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.id.cmp(&b.1.id)));

    let mut work = Work {
        buckets,
        ledger: Vec::new(),
        debt: input.debt,
        balance_delta: Decimal::ZERO,
    };
    let mut held_delta = Decimal::ZERO;
    let mut overage_released = Decimal::ZERO;
    let mut expired_holds = Vec::new();
    let mut rolled = 0;
    let mut next_hold = holds.iter().peekable();

    loop {
        let horizon = period_end.min(now);
        while let Some((expires, hold)) = next_hold.next_if(|(e, _)| *e <= horizon) {
            let at = format_time(*expires);
            for (bucket_id, amount) in hold.buckets.iter().zip(&hold.amounts) {
                let Some((b, b_expires)) =
                    work.buckets.iter_mut().find(|(b, _)| b.id == *bucket_id)
                else {
                    return Err(PlanError(format!(
                        "hold {} drew from unknown bucket {bucket_id}",
                        hold.id
                    )));
                };
                b.held -= *amount;
                b.changed = true;
                held_delta -= *amount;
                if b_expires.is_some_and(|e| e <= *expires) {
                    b.balance -= *amount;
                    work.balance_delta -= *amount;
                    work.ledger.push(LedgerRow {
                        kind: "expire",
                        amount: -*amount,
                        bucket_id: Some(b.id),
                        reservation_id: Some(hold.id),
                        at: at.clone(),
                    });
                }
            }
            overage_released += hold.overage;
            work.ledger.push(LedgerRow {
                kind: "hold_expired",
                amount: Decimal::ZERO,
                bucket_id: None,
                reservation_id: Some(hold.id),
                at: at.clone(),
            });
            expired_holds.push(ExpiredHold { id: hold.id, at });
        }
        if period_end > now {
            break;
        }
        let boundary = period_end;
        work.expire_buckets(boundary, false);
        let unused: Decimal = work
            .buckets
            .iter()
            .filter(|(b, e)| {
                (b.kind == "allocation" || b.kind == "rollover") && e.is_some_and(|e| e <= boundary)
            })
            .map(|(b, _)| b.balance - b.held)
            .sum();
        let carry = unused.min(input.rollover_cap).max(Decimal::ZERO);
        work.expire_buckets(boundary, true);
        period_start = boundary;
        period_end = period_after(reset, anchor, boundary);
        rolled += 1;
        if !input.byok && carry > Decimal::ZERO {
            work.grant("rollover", carry, period_end, boundary);
        }
        if !input.byok && input.allocation > Decimal::ZERO {
            work.grant("allocation", input.allocation, period_end, boundary);
        }
    }
    work.expire_buckets(now, true);

    Ok(Plan {
        period_start: format_time(period_start),
        period_end: format_time(period_end),
        rolled,
        debt: work.debt,
        balance_delta: work.balance_delta,
        held_delta,
        overage_released,
        buckets: work.buckets.into_iter().map(|(b, _)| b).collect(),
        ledger: work.ledger,
        expired_holds,
    })
}

/// SQL entry point of [`plan`]: takes the jsonb built by
/// `credits._roll_input()` and returns the plan as jsonb.
#[pg_extern(volatile, parallel_safe, schema = "credits")]
pub fn _roll_plan(input: JsonB) -> JsonB {
    let result = serde_json::from_value::<Input>(input.0)
        .map_err(|e| PlanError(format!("bad input: {e}")))
        .and_then(plan)
        .and_then(|p| serde_json::to_value(p).map_err(|e| PlanError(e.to_string())));
    match result {
        Ok(value) => JsonB(value),
        Err(PlanError(message)) => {
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!("cannot bring the account up to date: {message}"),
                "credits._roll_plan",
            )
            .set_detail(
                "The account's stored rows are not a state it can be rolled forward from \
                 (a row changed by hand?); nothing was written.",
            )
            .set_hint("Run SELECT * FROM credits_verify() and report the output.")
            .report(PgLogLevel::ERROR);
            unreachable!("ERROR does not return")
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use serde_json::json;

    fn dec(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    fn input(value: serde_json::Value) -> Input {
        serde_json::from_value(value).unwrap()
    }

    fn account(
        now: &str,
        cap: &str,
        buckets: serde_json::Value,
        holds: serde_json::Value,
    ) -> Input {
        input(json!({
            "now": now, "period_start": "2026-01-01T00:00:00+00:00", "period_end": "2026-02-01T00:00:00+00:00",
            "anchor": "2025-06-01T00:00:00+00:00", "reset": "calendar_month",
            "allocation": 100, "rollover_cap": cap, "byok": false, "debt": 0,
            "buckets": buckets, "holds": holds
        }))
    }

    #[test]
    fn times_are_read_in_any_offset_postgres_writes() {
        let utc = |text: &str| parse_time(text).map(format_time).unwrap();
        assert_eq!(
            utc("2026-03-01T00:00:00+00:00"),
            "2026-03-01T00:00:00.000000Z"
        );
        assert_eq!(
            utc("2026-03-01T14:00:00.25+14:00"),
            "2026-03-01T00:00:00.250000Z"
        );
        // In Pacific/Kiritimati: local mean time (an offset with seconds),
        // BC, a five-digit year.
        assert_eq!(
            utc("0001-01-30T23:30:40-10:29:20"),
            "0001-01-31T10:00:00.000000Z"
        );
        assert_eq!(
            utc("0001-12-31T13:30:40-10:29:20 BC"),
            "0001-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            utc("10000-01-01T13:59:59.999999+14:00"),
            "9999-12-31T23:59:59.999999Z"
        );
        assert_eq!(
            utc("20000-01-01T00:00:00Z"),
            "+20000-01-01T00:00:00.000000Z"
        );
        assert!(parse_time("2026-03-01").is_err());
        assert!(parse_time("2026-03-01T00:00:00+01:00:00:00").is_err());
    }

    const ALLOC: &str = "00000000-0000-0000-0000-000000000001";
    const PACK: &str = "00000000-0000-0000-0000-000000000002";
    const HOLD: &str = "00000000-0000-0000-0000-0000000000aa";

    fn january(balance: i64, held: i64) -> serde_json::Value {
        json!([
            {"id": ALLOC, "kind": "allocation", "priority": 0, "balance": balance, "held": held,
             "expires_at": "2026-02-01T00:00:00+00:00", "created_at": "2026-01-01T00:00:00+00:00"},
            {"id": PACK, "kind": "pack", "priority": 2, "balance": 50, "held": 0,
             "expires_at": null, "created_at": "2025-12-01T00:00:00+00:00"}
        ])
    }

    fn new_bucket<'a>(p: &'a Plan, kind: &str) -> Vec<&'a Bucket> {
        p.buckets
            .iter()
            .filter(|b| b.new && b.kind == kind)
            .collect()
    }

    #[test]
    fn nothing_due_changes_nothing() {
        let p = plan(account(
            "2026-01-15T00:00:00Z",
            "0",
            january(60, 0),
            json!([]),
        ))
        .unwrap();
        assert_eq!(p.rolled, 0);
        assert!(p.ledger.is_empty());
        assert!(p.buckets.iter().all(|b| !b.changed));
    }

    #[test]
    fn rollover_is_capped_and_the_rest_expires() {
        let p = plan(account(
            "2026-02-01T00:00:00Z",
            "25",
            january(60, 0),
            json!([]),
        ))
        .unwrap();
        assert_eq!(p.rolled, 1);
        assert_eq!(p.period_end, "2026-03-01T00:00:00.000000Z");
        let rollover = new_bucket(&p, "rollover");
        assert_eq!(rollover.len(), 1);
        assert_eq!(rollover[0].balance, dec("25"));
        assert_eq!(
            rollover[0].expires_at.as_deref(),
            Some("2026-03-01T00:00:00.000000Z")
        );
        assert_eq!(new_bucket(&p, "allocation")[0].balance, dec("100"));
        let kinds: Vec<(&str, Decimal)> = p.ledger.iter().map(|l| (l.kind, l.amount)).collect();
        assert_eq!(
            kinds,
            vec![
                ("expire", dec("-60")),
                ("rollover", dec("25")),
                ("allocation", dec("100"))
            ]
        );
        assert_eq!(p.balance_delta, dec("65"));
    }

    #[test]
    fn rollover_never_compounds_past_the_cap() {
        // Two missed periods with nothing used: at most one cap carried.
        let p = plan(account(
            "2026-03-05T00:00:00Z",
            "30",
            january(100, 0),
            json!([]),
        ))
        .unwrap();
        assert_eq!(p.rolled, 2);
        let live: Decimal = p
            .buckets
            .iter()
            .filter(|b| b.balance > b.held)
            .map(|b| b.balance)
            .sum();
        assert_eq!(live, dec("180"), "100 allocation + 30 rollover + 50 pack");
    }

    #[test]
    fn a_late_run_equals_on_time_runs() {
        let late = plan(account(
            "2026-04-10T00:00:00Z",
            "40",
            january(70, 0),
            json!([]),
        ))
        .unwrap();
        let mut on_time = account("2026-02-01T00:00:00Z", "40", january(70, 0), json!([]));
        let mut result = None;
        for now in [
            "2026-02-01T00:00:00Z",
            "2026-03-01T00:00:00Z",
            "2026-04-01T00:00:00Z",
            "2026-04-10T00:00:00Z",
        ] {
            on_time.now = now.into();
            let step = plan(on_time).unwrap();
            let buckets: Vec<serde_json::Value> = step
                .buckets
                .iter()
                .filter(|b| b.balance > Decimal::ZERO || b.held > Decimal::ZERO)
                .map(|b| json!({"id": b.id, "kind": b.kind, "priority": b.priority, "balance": b.balance,
                                "held": b.held, "expires_at": b.expires_at, "created_at": b.created_at}))
                .collect();
            on_time = input(json!({
                "now": now, "period_start": step.period_start, "period_end": step.period_end,
                "anchor": "2025-06-01T00:00:00+00:00", "reset": "calendar_month",
                "allocation": 100, "rollover_cap": "40", "byok": false, "debt": step.debt,
                "buckets": buckets, "holds": []
            }));
            result = Some(step);
        }
        let on_time = result.unwrap();
        assert_eq!(late.rolled, 3);
        assert_eq!(late.period_end, on_time.period_end);
        let live = |p: &Plan, kind: &str| -> Decimal {
            p.buckets
                .iter()
                .filter(|b| b.kind == kind)
                .map(|b| b.balance - b.held)
                .sum()
        };
        for kind in ["allocation", "rollover", "pack"] {
            assert_eq!(live(&late, kind), live(&on_time, kind), "{kind}");
        }
    }

    #[test]
    fn holds_that_expired_before_the_boundary_count_as_unused() {
        let holds = json!([{"id": HOLD, "expires_at": "2026-01-20T00:00:00+00:00", "overage": 0,
                            "buckets": [ALLOC], "amounts": [40]}]);
        let p = plan(account(
            "2026-02-02T00:00:00Z",
            "100",
            january(100, 40),
            holds,
        ))
        .unwrap();
        assert_eq!(p.expired_holds.len(), 1);
        assert_eq!(
            new_bucket(&p, "rollover")[0].balance,
            dec("100"),
            "the released hold was unused"
        );
    }

    #[test]
    fn a_hold_released_after_its_bucket_expired_is_written_off() {
        let holds = json!([{"id": HOLD, "expires_at": "2026-02-01T00:10:00+00:00", "overage": 0,
                            "buckets": [ALLOC], "amounts": [40]}]);
        let p = plan(account(
            "2026-02-01T00:20:00Z",
            "100",
            january(100, 40),
            holds,
        ))
        .unwrap();
        assert_eq!(
            new_bucket(&p, "rollover")[0].balance,
            dec("60"),
            "the held 40 was not unused"
        );
        let alloc = p
            .buckets
            .iter()
            .find(|b| b.id.to_string() == ALLOC)
            .unwrap();
        assert_eq!((alloc.balance, alloc.held), (Decimal::ZERO, Decimal::ZERO));
        assert!(p
            .ledger
            .iter()
            .any(|l| l.kind == "expire" && l.amount == dec("-40") && l.reservation_id.is_some()));
    }

    #[test]
    fn new_allocation_pays_debt_first() {
        let mut i = account("2026-02-01T00:00:00Z", "0", january(0, 0), json!([]));
        i.debt = dec("30");
        let p = plan(i).unwrap();
        assert_eq!(p.debt, Decimal::ZERO);
        assert_eq!(new_bucket(&p, "allocation")[0].balance, dec("70"));
        assert!(p
            .ledger
            .iter()
            .any(|l| l.kind == "debt_payment" && l.amount == dec("-30")));
    }

    #[test]
    fn byok_accounts_get_no_allocation() {
        let mut i = account("2026-02-01T00:00:00Z", "0", json!([]), json!([]));
        i.byok = true;
        let p = plan(i).unwrap();
        assert_eq!(p.rolled, 1);
        assert!(p.buckets.is_empty());
    }
}
