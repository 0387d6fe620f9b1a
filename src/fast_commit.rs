//! The commit fast path: `credits._commit_fast`, called first by
//! `credits_commit` (sql/commit.sql). It handles the common case — a
//! pending, unexpired hold drawn from one bucket that has not expired
//! either, charged at most what was reserved, on an account with nothing
//! due — in two statements run through kept SPI plans. (A hold outlives its
//! bucket when it was pending across a reset, or drawn from a promo that
//! expired before it: what its commit releases must then be written off,
//! which the general path does. The account's `next_event` does not tell:
//! a bucket whose credits are all held has nothing of its own to expire.)
//!
//! 1. lock the reservation's account row (FOR NO KEY UPDATE) and read the
//!    reservation;
//! 2. one statement, under that lock and with a fresh snapshot: mark the
//!    reservation committed (found by the row address the first statement
//!    read, and only if that row is still the pending one: a racing commit
//!    or refund that got the lock first makes it match nothing, and then
//!    nothing else in the statement happens), charge the bucket and release
//!    the rest of its hold, append the charge row to the ledger with its
//!    hash chained to the account's previous row, add it to the usage
//!    roll-up and update the account.
//!
//! Alerts and auto-recharge run (credits._after_usage) only when the commit
//! crossed one of their lines. When the account's `next_event` has come with
//! nothing due (a false alarm: `REFRESH_NEXT_EVENT` below), it is
//! moved on and the lock statement run again. Anything else returns NULL
//! with nothing written, and the general path judges the call.

use crate::fast_path::{
    arg, enabled, finfo_v1, may_touch, param, plausible_ident, result, text_arg, Plans, NUMERIC,
    TEXT, TID, TIMESTAMPTZ, UUID,
};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::AnyNumeric;

const LOCK: &str = concat!(
    "
SELECT a.account_id, a.period_start, a.balance,
       a.next_event > credits._now() AND ",
    may_touch!("a.account_id"),
    "
         AND r.status = 'pending' AND NOT r.byok AND r.overage = 0 AND cardinality(r.draw_buckets) = 1
         AND r.expires_at > credits._now()
         AND coalesce((SELECT b.expires_at > credits._now() FROM credits.buckets b
                        WHERE b.account_id = a.account_id AND b.bucket_id = r.draw_buckets[1]), true)
         AND ($2 IS NULL OR ($2 >= 0 AND $2 < 1e14 AND scale($2) <= 6 AND $2 <= r.amount)) AS simple,
       r.amount, r.draw_buckets[1], r.product, r.action, coalesce($2, r.amount),
       pg_catalog.trim_scale(coalesce($2, r.amount))::text,
       CASE WHEN pg_catalog.current_setting('role') = 'none' THEN session_user::text
            ELSE pg_catalog.current_setting('role') END,
       credits._now(), r.ctid, a.next_event <= credits._now() AS due
  FROM credits.accounts a
  JOIN credits.reservations r ON r.reservation_id = $1 AND r.account_id = a.account_id
 WHERE a.account_id = (SELECT x.account_id FROM credits.reservations x WHERE x.reservation_id = $1 LIMIT 1)
   FOR NO KEY UPDATE OF a"
);

const CHARGE: &str = "
WITH r AS (
    UPDATE credits.reservations
       SET status = 'committed', charged = $3,
           draw_buckets = CASE WHEN $3 > 0 THEN ARRAY[$5] ELSE '{}' END,
           draw_amounts = CASE WHEN $3 > 0 THEN ARRAY[$3] ELSE '{}' END,
           period_start = $7, resolved_at = $6
     WHERE ctid = $12 AND reservation_id = $1 AND account_id = $2 AND status = 'pending'
    RETURNING 1
), b AS (
    UPDATE credits.buckets SET held = held - $4, balance = balance - $3
     WHERE account_id = $2 AND bucket_id = $5 AND EXISTS (SELECT 1 FROM r)
), l AS (
    INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, reservation_id, product, action, actor,
                                created_at, seq, hash)
    SELECT $2, 'charge', -$3, $5, $1, $8, $9, $10, $6, coalesce(p.seq, 0) + 1,
           -- The row as hashed: the same content function as the chain
           -- trigger and credits_verify() (inlined by the planner).
           credits._ledger_hash(coalesce(p.hash, ''), credits._ledger_content(
               ROW(NULL, $2, 'charge', -$3, $5, $1, $8, $9, NULL, $10, NULL, '{}', $6,
                   coalesce(p.seq, 0) + 1, NULL)::credits.ledger))
      FROM r
      LEFT JOIN LATERAL (SELECT e.seq, e.hash FROM credits.ledger e
                          WHERE e.account_id = $2 ORDER BY e.entry_id DESC LIMIT 1) p ON true
     WHERE $3 > 0
), u AS (
    INSERT INTO credits.usage_rollup AS u (account_id, day, product, used, actions)
    SELECT $2, ($6 AT TIME ZONE 'UTC')::date, $8, $3, 1 FROM r
    ON CONFLICT (account_id, day, product) DO UPDATE
       SET used = u.used + EXCLUDED.used, actions = u.actions + 1
)
UPDATE credits.accounts
   SET held = held - $4, balance = balance - $3, period_used = period_used + $3
  FROM r
 WHERE account_id = $2
RETURNING period_used + period_overage >= next_alert_at
          OR (balance < recharge_below AND $11 >= recharge_below)";

/// A false alarm at commit: the account's `next_event` (a lower bound,
/// lowered by every reserve to its hold's expiry) has come although nothing
/// is due, because the hold that set it was committed or refunded since.
/// (The reserve fast path settles its own false alarms in its guarded
/// UPDATE, src/fast_reserve.rs; a commit meets one when its hold outlived
/// another that was resolved before it.) `credits._refresh_next_event`
/// (sql/housekeeping.sql) locks the account and, when nothing is due, moves
/// `next_event` to the true next event and returns true; then the commit
/// reads the account again. When something is due it writes nothing, and
/// the general path rolls the account forward. Only for an account the
/// caller may touch.
const REFRESH_NEXT_EVENT: &str = concat!(
    "SELECT credits._refresh_next_event($1, credits._now()) WHERE ",
    may_touch!("$1")
);

/// Runs [`REFRESH_NEXT_EVENT`] for `account` (a text datum): whether its
/// `next_event` was a false alarm, now moved on. The function it calls
/// comes with the 0.3.2 SQL: a library installed before `ALTER EXTENSION
/// credits UPDATE` finds none and leaves the account to the general path,
/// as before, rather than failing.
fn refreshed(client: &mut SpiClient<'_>, account: Option<pg_sys::Datum>) -> bool {
    // SAFETY: to_regprocedure(text) returns an oid or NULL, raising nothing
    // for a name that does not exist.
    let installed = unsafe {
        pgrx::direct_function_call::<pg_sys::Oid>(
            pg_sys::to_regprocedure,
            &["credits._refresh_next_event(text, timestamptz)".into_datum()],
        )
    }
    .is_some();
    if !installed {
        return false;
    }
    PLANS.with(|plans| {
        let row = client
            .update(plans.get(client, REFRESH), None, &[param(account, TEXT)])
            .expect("credits: the commit fast path failed to refresh next_event")
            .first();
        !row.is_empty() && row.get::<bool>(1).ok().flatten() == Some(true)
    })
}

const AFTER_USAGE: &str = "SELECT credits._after_usage($1, $2, $3)";

// The statements above, by their place in PLANS.
const LOCK_ROW: usize = 0;
const CHARGE_ROW: usize = 1;
const ALERTS: usize = 2;
const REFRESH: usize = 3;

thread_local! {
    static PLANS: Plans<4> = const {
        Plans::new([
            (LOCK, &[UUID, NUMERIC]),
            (
                CHARGE,
                &[
                    UUID,
                    TEXT,
                    NUMERIC,
                    NUMERIC,
                    UUID,
                    TIMESTAMPTZ,
                    TIMESTAMPTZ,
                    TEXT,
                    TEXT,
                    TEXT,
                    NUMERIC,
                    TID,
                ],
            ),
            (AFTER_USAGE, &[TEXT, NUMERIC, TIMESTAMPTZ]),
            (REFRESH_NEXT_EVENT, &[TEXT]),
        ])
    };
}

finfo_v1!(pg_finfo_credits_commit_fast);

/// `credits._commit_fast(reservation_id uuid, amount numeric, force boolean,
/// account_id text) RETURNS numeric`: the amount charged, or NULL when the
/// general path must judge the call (nothing written then).
///
/// # Safety
/// Called by Postgres through the fmgr interface with the arguments above.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn credits_commit_fast(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: Postgres calls this with the four arguments declared in
    // sql/commit.sql, and fcinfo is this call's.
    unsafe {
        let charged = commit(fcinfo).and_then(|text| AnyNumeric::try_from(text.as_str()).ok());
        result(
            fcinfo,
            charged.map(|n| n.into_datum().expect("a numeric is never NULL as a datum")),
        )
    }
}

unsafe fn commit(fcinfo: pg_sys::FunctionCallInfo) -> Option<String> {
    if !enabled() {
        return None;
    }
    // SAFETY: argument positions and types are those of the SQL declaration.
    let (id, amount, force, account) = unsafe {
        (
            arg(fcinfo, 0)?,
            arg(fcinfo, 1),
            arg(fcinfo, 2),
            arg(fcinfo, 3),
        )
    };
    force?;
    // SAFETY: a text argument.
    let account_text = unsafe { text_arg(account) };
    if account.is_some() && !account_text.is_some_and(plausible_ident) {
        return None;
    }

    PLANS.with(|plans| {
        Spi::connect_mut(|client| {
            let lock_args = [param(Some(id), UUID), param(amount, NUMERIC)];
            let mut row = client
                .update(plans.get(client, LOCK_ROW), None, &lock_args)
                .expect("credits: the commit fast path failed to lock the account")
                .first();
            if row.is_empty() {
                return None;
            }
            if row.get::<bool>(4).ok().flatten() != Some(true) {
                let due = row.get::<bool>(14).ok().flatten() == Some(true);
                let account = row
                    .get_datum_by_ordinal(1)
                    .expect("the lock returns the account");
                if !due || !refreshed(client, account) {
                    return None;
                }
                row = client
                    .update(plans.get(client, LOCK_ROW), None, &lock_args)
                    .expect("credits: the commit fast path failed to lock the account")
                    .first();
                if row.is_empty() || row.get::<bool>(4).ok().flatten() != Some(true) {
                    return None;
                }
            }
            let col = |n: usize| {
                row.get_datum_by_ordinal(n)
                    .expect("the lock returns every column")
            };
            let account_id: String = row.get(1).ok().flatten()?;
            if account_text.is_some_and(|a| a != account_id) {
                return None;
            }
            let charged_text: String = row.get(10).ok().flatten()?;
            let (acct, period_start, balance_before) = (col(1), col(2), col(3));
            let (reserved, bucket, product, action) = (col(5), col(6), col(7), col(8));
            let (charge, actor, now, row_id) = (col(9), col(11), col(12), col(13));

            let charged = client
                .update(
                    plans.get(client, CHARGE_ROW),
                    None,
                    &[
                        param(Some(id), UUID),
                        param(acct, TEXT),
                        param(charge, NUMERIC),
                        param(reserved, NUMERIC),
                        param(bucket, UUID),
                        param(now, TIMESTAMPTZ),
                        param(period_start, TIMESTAMPTZ),
                        param(product, TEXT),
                        param(action, TEXT),
                        param(actor, TEXT),
                        param(balance_before, NUMERIC),
                        param(row_id, TID),
                    ],
                )
                .expect("credits: the commit fast path failed to charge");
            if charged.is_empty() {
                // A racing commit or refund resolved it first.
                return None;
            }
            if charged.first().get::<bool>(1).ok().flatten() == Some(true) {
                client
                    .update(
                        plans.get(client, ALERTS),
                        None,
                        &[
                            param(acct, TEXT),
                            param(balance_before, NUMERIC),
                            param(now, TIMESTAMPTZ),
                        ],
                    )
                    .expect("credits: the commit fast path failed to raise alerts");
            }
            Some(charged_text)
        })
    })
}
