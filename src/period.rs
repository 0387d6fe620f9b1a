//! Billing-period arithmetic, in UTC.
//!
//! `calendar_month` periods start on the 1st at 00:00 UTC. `billing_date`
//! periods start on the anchor's day of the month at the anchor's time of
//! day; an anchor on the 29th-31st falls on the last day of shorter months
//! and comes back to its own day afterwards, because every boundary is
//! computed from the anchor itself, never from the previous boundary.

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reset {
    CalendarMonth,
    BillingDate,
}

impl Reset {
    pub fn parse(text: &str) -> Option<Reset> {
        match text {
            "calendar_month" => Some(Reset::CalendarMonth),
            "billing_date" => Some(Reset::BillingDate),
            _ => None,
        }
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(next_year, next_month, 1)
        .and_then(|first| first.pred_opt())
        .map(|last| last.day())
        .expect("valid month")
}

/// The anchor moved by `months` whole months, its day clamped to the month.
fn add_months(anchor: NaiveDateTime, months: i64) -> NaiveDateTime {
    let index = i64::from(anchor.year()) * 12 + i64::from(anchor.month0()) + months;
    let year = i32::try_from(index.div_euclid(12)).expect("year in range");
    let month = u32::try_from(index.rem_euclid(12)).expect("month in range") + 1;
    let day = anchor.day().min(days_in_month(year, month));
    NaiveDate::from_ymd_opt(year, month, day)
        .expect("clamped day is valid")
        .and_time(anchor.time())
}

fn month_index(t: NaiveDateTime) -> i64 {
    i64::from(t.year()) * 12 + i64::from(t.month0())
}

fn boundary_anchor(reset: Reset, anchor: NaiveDateTime) -> NaiveDateTime {
    match reset {
        Reset::CalendarMonth => NaiveDate::from_ymd_opt(2000, 1, 1)
            .expect("valid")
            .and_hms_opt(0, 0, 0)
            .expect("valid"),
        Reset::BillingDate => anchor,
    }
}

/// Start of the period that contains `at`.
pub fn period_start(reset: Reset, anchor: NaiveDateTime, at: NaiveDateTime) -> NaiveDateTime {
    let base = boundary_anchor(reset, anchor);
    let mut k = month_index(at) - month_index(base);
    while add_months(base, k) > at {
        k -= 1;
    }
    while add_months(base, k + 1) <= at {
        k += 1;
    }
    add_months(base, k)
}

/// End of the period that contains `at` (the next reset after it).
pub fn period_after(reset: Reset, anchor: NaiveDateTime, at: NaiveDateTime) -> NaiveDateTime {
    let base = boundary_anchor(reset, anchor);
    let start = period_start(reset, anchor, at);
    let k = month_index(start) - month_index(base);
    add_months(base, k + 1)
}

fn epoch() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2000, 1, 1)
        .expect("valid")
        .and_hms_opt(0, 0, 0)
        .expect("valid")
}

fn to_naive(t: TimestampWithTimeZone, name: &str) -> NaiveDateTime {
    if !t.is_finite() {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{name} must be a finite timestamp"),
            "credits",
        )
        .set_detail(format!("{name} is infinite."))
        .set_hint("Billing periods need a real date.")
        .report(PgLogLevel::ERROR);
    }
    // Years 1 to 9999 (UTC), ISO 8601's four-digit years, which periods
    // are computed for and written back in: before 0.3.5 an anchor in year
    // 20000 was let in and its account could not be rolled forward (the
    // planner read no five-digit year), and one in year 290000 overflowed
    // chrono's range (XX000).
    epoch()
        .checked_add_signed(Duration::microseconds(t.into_inner()))
        .filter(|naive| (1..=9999).contains(&naive.year()))
        .unwrap_or_else(|| {
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_DATETIME_FIELD_OVERFLOW,
                format!("{name} is out of range"),
                "credits",
            )
            .set_detail(format!("{name} is {t}, outside the years 1 to 9999."))
            .set_hint("Billing periods are computed for the years 1 to 9999 (UTC).")
            .report(PgLogLevel::ERROR);
            unreachable!("ERROR does not return")
        })
}

fn from_naive(t: NaiveDateTime) -> TimestampWithTimeZone {
    let micros = (t - epoch())
        .num_microseconds()
        .expect("within timestamptz range");
    TimestampWithTimeZone::try_from(micros).expect("within timestamptz range")
}

fn reset_arg(reset: &str) -> Reset {
    Reset::parse(reset).unwrap_or_else(|| {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown reset \"{reset}\""),
            "credits",
        )
        .set_detail("reset must be one of: billing_date, calendar_month.")
        .set_hint("Use 'billing_date' or 'calendar_month'.")
        .report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    })
}

/// Start of the billing period containing `at`.
#[pg_extern(immutable, parallel_safe, schema = "credits")]
pub fn _period_start(
    anchor: TimestampWithTimeZone,
    reset: &str,
    at: TimestampWithTimeZone,
) -> TimestampWithTimeZone {
    from_naive(period_start(
        reset_arg(reset),
        to_naive(anchor, "billing_anchor"),
        to_naive(at, "time"),
    ))
}

/// End of the billing period containing `at`: the next reset.
#[pg_extern(immutable, parallel_safe, schema = "credits")]
pub fn _period_after(
    anchor: TimestampWithTimeZone,
    reset: &str,
    at: TimestampWithTimeZone,
) -> TimestampWithTimeZone {
    from_naive(period_after(
        reset_arg(reset),
        to_naive(anchor, "billing_anchor"),
        to_naive(at, "time"),
    ))
}

#[cfg(test)]
mod unit {
    use super::*;
    use chrono::{DateTime, TimeZone, Utc};

    fn utc(text: &str) -> NaiveDateTime {
        DateTime::parse_from_rfc3339(text)
            .map(|t| Utc.from_utc_datetime(&t.naive_utc()).naive_utc())
            .expect("RFC 3339 timestamp")
    }

    fn start(reset: Reset, anchor: &str, at: &str) -> NaiveDateTime {
        period_start(reset, utc(anchor), utc(at))
    }
    fn end(reset: Reset, anchor: &str, at: &str) -> NaiveDateTime {
        period_after(reset, utc(anchor), utc(at))
    }

    #[test]
    fn calendar_periods_start_on_the_first() {
        let a = "2026-03-17T10:00:00Z";
        assert_eq!(
            start(Reset::CalendarMonth, a, "2026-03-17T10:00:00Z"),
            utc("2026-03-01T00:00:00Z")
        );
        assert_eq!(
            end(Reset::CalendarMonth, a, "2026-03-31T23:59:59Z"),
            utc("2026-04-01T00:00:00Z")
        );
        assert_eq!(
            end(Reset::CalendarMonth, a, "2026-12-05T00:00:00Z"),
            utc("2027-01-01T00:00:00Z")
        );
        assert_eq!(
            start(Reset::CalendarMonth, a, "2026-04-01T00:00:00Z"),
            utc("2026-04-01T00:00:00Z")
        );
    }

    #[test]
    fn billing_date_on_the_31st_clamps_and_comes_back() {
        let a = "2026-01-31T08:30:00Z";
        assert_eq!(
            end(Reset::BillingDate, a, "2026-01-31T08:30:00Z"),
            utc("2026-02-28T08:30:00Z")
        );
        assert_eq!(
            end(Reset::BillingDate, a, "2026-02-28T08:30:00Z"),
            utc("2026-03-31T08:30:00Z")
        );
        assert_eq!(
            end(Reset::BillingDate, a, "2026-04-15T00:00:00Z"),
            utc("2026-04-30T08:30:00Z")
        );
        assert_eq!(
            start(Reset::BillingDate, a, "2026-02-28T08:29:59Z"),
            utc("2026-01-31T08:30:00Z")
        );
    }

    #[test]
    fn billing_date_in_leap_years() {
        let a = "2027-12-30T00:00:00Z";
        assert_eq!(
            end(Reset::BillingDate, a, "2028-02-01T00:00:00Z"),
            utc("2028-02-29T00:00:00Z")
        );
        assert_eq!(
            end(Reset::BillingDate, a, "2028-02-29T00:00:00Z"),
            utc("2028-03-30T00:00:00Z")
        );
        let leap = "2028-02-29T12:00:00Z";
        assert_eq!(
            end(Reset::BillingDate, leap, "2028-02-29T12:00:00Z"),
            utc("2028-03-29T12:00:00Z")
        );
        assert_eq!(
            end(Reset::BillingDate, leap, "2029-02-01T00:00:00Z"),
            utc("2029-02-28T12:00:00Z")
        );
    }

    #[test]
    fn times_before_the_anchor_fall_in_earlier_periods() {
        let a = "2026-05-10T00:00:00Z";
        assert_eq!(
            start(Reset::BillingDate, a, "2026-05-01T00:00:00Z"),
            utc("2026-04-10T00:00:00Z")
        );
        assert_eq!(
            end(Reset::BillingDate, a, "2026-05-01T00:00:00Z"),
            utc("2026-05-10T00:00:00Z")
        );
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn sql_period_functions_compute_in_utc_whatever_the_session_time_zone() {
        Spi::run("SET TimeZone = 'Pacific/Kiritimati'").unwrap();
        let end = Spi::get_one::<bool>(
            "SELECT credits._period_after('2026-01-31 08:00+00', 'billing_date', '2026-02-10 00:00+00') \
                    = '2026-02-28 08:00+00'::timestamptz",
        )
        .unwrap();
        assert_eq!(end, Some(true));
        let start = Spi::get_one::<bool>(
            "SELECT credits._period_start('2026-01-31 08:00+00', 'calendar_month', '2026-03-01 00:00:00+00') \
                    = '2026-03-01 00:00+00'::timestamptz",
        )
        .unwrap();
        assert_eq!(start, Some(true));
    }

    #[pg_test(error = "unknown reset \"weekly\"")]
    fn sql_period_functions_refuse_unknown_reset_rules() {
        Spi::run("SELECT credits._period_after(now(), 'weekly', now())").unwrap();
    }
}
