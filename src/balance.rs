//! `credits_balance(account_id)`: balance and history in one call, the
//! `GET /api/billing/credits` of the products we model. Numbers are carried
//! from Postgres as their exact decimal text into serde_json numbers
//! (`arbitrary_precision`), never through floats.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiHeapTupleData;
use pgrx::JsonB;
use serde_json::{Map, Number, Value};
use std::str::FromStr;

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Num,
    Int,
    Bool,
    Json,
}

const SUMMARY: &[(&str, Kind)] = &[
    ("allocation", Kind::Num),
    ("used", Kind::Num),
    ("percent_used", Kind::Num),
    ("reserved", Kind::Num),
    ("available", Kind::Num),
    ("overage", Kind::Num),
    ("overage_available", Kind::Num),
    ("debt", Kind::Num),
    ("limit_mode", Kind::Text),
    ("soft_limit", Kind::Num),
    ("period_start", Kind::Text),
    ("period_end", Kind::Text),
    ("next_reset", Kind::Text),
    ("days_until_reset", Kind::Int),
    ("override_until", Kind::Text),
];

const BUCKETS: &[(&str, Kind)] = &[
    ("bucket_id", Kind::Text),
    ("kind", Kind::Text),
    ("amount", Kind::Num),
    ("remaining", Kind::Num),
    ("held", Kind::Num),
    ("expires_at", Kind::Text),
    ("created_at", Kind::Text),
    ("metadata", Kind::Json),
];

const TRANSACTIONS: &[(&str, Kind)] = &[
    ("entry_id", Kind::Int),
    ("kind", Kind::Text),
    ("amount", Kind::Num),
    ("bucket_id", Kind::Text),
    ("reservation_id", Kind::Text),
    ("product", Kind::Text),
    ("action", Kind::Text),
    ("created_at", Kind::Text),
    ("metadata", Kind::Json),
];

/// How many ledger rows `credits_balance` returns, newest first.
const RECENT_TRANSACTIONS: i64 = 20;

fn cell(row: &SpiHeapTupleData, ordinal: usize, kind: Kind) -> Value {
    let value = match kind {
        Kind::Text => row.get::<String>(ordinal).ok().flatten().map(Value::String),
        Kind::Num | Kind::Int => row.get::<String>(ordinal).ok().flatten().map(|text| {
            Number::from_str(&text)
                .map(Value::Number)
                .unwrap_or(Value::String(text))
        }),
        Kind::Bool => row.get::<bool>(ordinal).ok().flatten().map(Value::Bool),
        Kind::Json => row.get::<JsonB>(ordinal).ok().flatten().map(|j| j.0),
    };
    value.unwrap_or(Value::Null)
}

fn object(row: &SpiHeapTupleData, columns: &[(&str, Kind)], first: usize) -> Map<String, Value> {
    columns
        .iter()
        .enumerate()
        .map(|(i, (name, kind))| ((*name).to_string(), cell(row, first + i, *kind)))
        .collect()
}

const ISO: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"#;

fn iso(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', {ISO})")
}

/// Assembles the jsonb of `credits_balance(account_id)` (sql/balance.sql),
/// which checks the account first: an error raised with one of our own
/// SQLSTATEs inside SPI would reach the caller as XX000 through pgrx.
/// `summary` is the usage ring, `buckets` the live credit buckets in
/// consumption order, `transactions` the most recent ledger rows. Reads
/// only, so it works in read-only transactions and on standbys.
#[pg_extern(stable, schema = "credits")]
#[search_path(pg_catalog, pg_temp)]
pub fn _balance_json(account_id: &str) -> JsonB {
    let summary_sql = format!(
        "SELECT s.account_id, s.plan_id, s.byok, \
                trim_scale(s.allocation)::text, trim_scale(s.used)::text, \
                CASE WHEN s.allocation > 0 THEN round(100 * s.used / s.allocation, 2) END::text, \
                trim_scale(s.reserved)::text, trim_scale(s.available)::text, trim_scale(s.overage)::text, trim_scale(s.overage_available)::text, \
                trim_scale(s.debt)::text, s.limit_mode, trim_scale(s.soft_limit)::text, {}, {}, {}, s.days_until_reset::text, {} \
           FROM credits._account_state($1, $2) s",
        iso("s.period_start"),
        iso("s.period_end"),
        iso("s.period_end"),
        iso("s.override_until"),
    );
    let buckets_sql = format!(
        "SELECT b.bucket_id::text, b.kind, trim_scale(b.amount)::text, trim_scale(b.remaining)::text, trim_scale(b.held)::text, {}, {}, b.metadata \
           FROM credits._live_buckets($1, $2) b \
          WHERE b.remaining > 0 OR b.held > 0 \
          ORDER BY b.priority, b.expires_at, b.created_at, b.kind, b.bucket_id",
        iso("b.expires_at"),
        iso("b.created_at"),
    );
    let transactions_sql = format!(
        "SELECT l.entry_id::text, l.kind, trim_scale(l.amount)::text, l.bucket_id::text, l.reservation_id::text, \
                l.product, l.action, {}, l.metadata \
           FROM credits.ledger l WHERE l.account_id = $1 \
          ORDER BY l.entry_id DESC LIMIT {RECENT_TRANSACTIONS}",
        iso("l.created_at"),
    );

    // One reading of the clock for the summary and the buckets.
    let now = crate::clock::_now();
    Spi::connect(|client| {
        let args = [account_id.into(), now.into()];
        let summary = client
            .select(&summary_sql, Some(1), &args)?
            .next()
            .ok_or(pgrx::spi::SpiError::InvalidPosition)?;
        let mut out = Map::new();
        out.insert("account_id".into(), cell(&summary, 1, Kind::Text));
        out.insert("plan_id".into(), cell(&summary, 2, Kind::Text));
        out.insert("byok".into(), cell(&summary, 3, Kind::Bool));
        out.insert(
            "summary".into(),
            Value::Object(object(&summary, SUMMARY, 4)),
        );

        let buckets: Vec<Value> = client
            .select(&buckets_sql, None, &args)?
            .map(|row| Value::Object(object(&row, BUCKETS, 1)))
            .collect();
        out.insert("buckets".into(), Value::Array(buckets));

        let transactions: Vec<Value> = client
            .select(&transactions_sql, None, &args)?
            .map(|row| Value::Object(object(&row, TRANSACTIONS, 1)))
            .collect();
        out.insert("transactions".into(), Value::Array(transactions));
        Ok::<_, pgrx::spi::SpiError>(JsonB(Value::Object(out)))
    })
    .unwrap_or_else(|e| {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("credits_balance failed: {e}"),
            "credits_balance",
        )
        .set_detail("The account's summary, buckets or transactions could not be read.")
        .set_hint("Run SELECT * FROM credits_verify() and report the output.")
        .report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    })
}
