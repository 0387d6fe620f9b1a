//! The reserve fast path: `credits._reserve_fast`, called first by
//! `credits_reserve` (sql/reserve.sql). It handles the common case — valid
//! input, an enabled product, an account that is not BYOK, owes nothing, has
//! nothing due and has enough credits, and an idempotency key (if any) not
//! used before — in two statements run through kept SPI plans, two more
//! with a key (see KEY_SEEN):
//!
//! 1. one guarded UPDATE of the account row takes the row lock and adds the
//!    hold; its WHERE clause is rechecked on the locked row's newest version
//!    (the clock re-read), so two sessions can never both pass;
//! 2. one statement holds the first live bucket (CHECK held <= balance on
//!    the bucket row) and inserts the reservation with its draw; when that
//!    bucket alone does not cover the amount, a third statement draws across
//!    the buckets in consumption order (credits._draw).
//!
//! When the guarded UPDATE matches nothing, a second guarded UPDATE
//! (`TAKE_HOLD_DUE`) takes the hold if the account's `next_event` has come
//! with nothing due — a false alarm, the first reserve of any account quiet
//! for longer than its last hold's ttl — and moves `next_event` on.
//! Otherwise nothing was written and the function returns NULL: the general
//! path judges the call.

use crate::fast_path::{
    arg, enabled, finfo_v1, may_touch, param, plausible_ident, result, text_arg, Plans, INTERVAL,
    JSONB, NUMERIC, TEXT, TIMESTAMPTZ, UUID,
};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;

/// The common case on the account row, all but its `next_event`: valid
/// input, enough free credits, no debt, not BYOK, an account the caller may
/// touch, an enabled product. Parameters: $1 account, $2 amount, $3
/// product, $4 ttl, $5 metadata. A ttl of 1,000 years or more goes to the
/// general path, which refuses one that ends in the year 10000 or later
/// (so that `now + ttl` never overflows here). `$switches` is the account's
/// product switches: `switches_on_row!` or `switches_in_table!`.
macro_rules! common_case {
    ($switches:expr) => {
        concat!(
            "account_id = $1
   AND $2 > 0 AND $2 < 1e14 AND scale($2) <= 6 AND $4 > interval '0' AND $4 < interval '1000 years'
   AND jsonb_typeof($5) = 'object'
   AND balance - held >= $2 AND debt = 0 AND NOT byok
   AND ",
            may_touch!("account_id"),
            "
   AND EXISTS (SELECT 1 FROM credits.products p WHERE p.product = $3 AND p.enabled)
   AND ",
            $switches
        )
    };
}

/// The product is not switched off for the account, read on the account
/// row (`products_off`, since SQL 0.3.5): when the guarded UPDATE waited
/// for the account's lock, Postgres rechecks its WHERE clause on the row's
/// newest version, so a switch-off committed by the call it waited for
/// counts, as it does in the general path, which reads the switches after
/// the lock.
macro_rules! switches_on_row {
    () => {
        "(products_off IS NULL OR $3 <> ALL (products_off))"
    };
}

/// The same from `credits.account_products`, for databases at SQL versions
/// before 0.3.5 (the library is shared by every database of the cluster),
/// whose account rows have no `products_off`. A sub-select reads the
/// snapshot taken before the statement waited for the account's lock, so a
/// reserve that waited for a switch-off went through.
macro_rules! switches_in_table {
    () => {
        "NOT EXISTS (SELECT 1 FROM credits.account_products ap
                    WHERE ap.account_id = $1 AND ap.product = $3 AND NOT ap.enabled)"
    };
}

macro_rules! take_hold {
    ($switches:expr) => {
        concat!(
            "
UPDATE credits.accounts
   SET held = held + $2, next_event = least(next_event, $6 + $4)
 WHERE ",
            common_case!($switches),
            "
   AND next_event > credits._now()
RETURNING period_start"
        )
    };
}

const TAKE_HOLD: &str = take_hold!(switches_on_row!());
const TAKE_HOLD_BEFORE_0_3_5: &str = take_hold!(switches_in_table!());

/// TAKE_HOLD on an account whose `next_event` has come: the hold is taken
/// when that is a false alarm (nothing due as of $6: the period goes on, no
/// pending hold has expired, no bucket with free credits has expired), and
/// `next_event` moves on to the true next event, or the new hold's expiry if
/// sooner: `credits._next_event()` (sql/housekeeping.sql) in one statement,
/// every live bucket's expiry included (also of a bucket whose credits are
/// all held or spent: a release or a refund gives credits back to it).
/// Its sub-selects read the snapshot taken before the row lock was granted,
/// so it goes ahead only when the row it updates is the version that
/// snapshot sees (`ctid` unchanged): every write that adds a hold or a
/// bucket, or frees a bucket's credits, also writes the account row, so
/// nothing of the account was missed. Anything else (a real due, another
/// session's write meanwhile, any other decline) matches nothing and leaves
/// the call to the general path; like TAKE_HOLD, it locks the account only
/// when every other condition holds, so the general path keeps its lock
/// order (a product's first registration, then the account).
macro_rules! take_hold_due {
    ($switches:expr) => {
        concat!(
            "
UPDATE credits.accounts
   SET held = held + $2,
       next_event = least(period_end, $6 + $4,
                          (SELECT min(b.expires_at) FROM credits.buckets b
                            WHERE b.account_id = $1 AND b.expires_at > $6),
                          (SELECT min(r.expires_at) FROM credits.reservations r
                            WHERE r.account_id = $1 AND r.status = 'pending'))
 WHERE ",
            common_case!($switches),
            "
   AND next_event <= $6 AND period_end > $6
   AND ctid = (SELECT x.ctid FROM credits.accounts x WHERE x.account_id = $1)
   AND NOT EXISTS (SELECT 1 FROM credits.reservations r
                    WHERE r.account_id = $1 AND r.status = 'pending' AND r.expires_at <= $6)
   AND NOT EXISTS (SELECT 1 FROM credits.buckets b
                    WHERE b.account_id = $1 AND b.expires_at <= $6 AND b.balance > b.held)
RETURNING period_start"
        )
    };
}

const TAKE_HOLD_DUE: &str = take_hold_due!(switches_on_row!());
const TAKE_HOLD_DUE_BEFORE_0_3_5: &str = take_hold_due!(switches_in_table!());

const HOLD_FIRST_BUCKET: &str = "
WITH hold AS (
    UPDATE credits.buckets SET held = held + $2
     WHERE account_id = $1 AND balance - held >= $2
       AND bucket_id = (SELECT b.bucket_id FROM credits.buckets b
                         WHERE b.account_id = $1 AND b.balance > b.held
                           AND (b.expires_at IS NULL OR b.expires_at > $7)
                         ORDER BY b.priority, b.expires_at, b.created_at, b.kind, b.bucket_id
                         LIMIT 1)
    RETURNING bucket_id)
INSERT INTO credits.reservations (reservation_id, account_id, status, product, action, amount,
                                  draw_buckets, draw_amounts, period_start, expires_at, created_at, metadata)
SELECT $8, $1, 'pending', $3, $4, $2, ARRAY[hold.bucket_id], ARRAY[$2], $9, $7 + $5, $7, $6
  FROM hold";

const HOLD_ACROSS_BUCKETS: &str = "
INSERT INTO credits.reservations (reservation_id, account_id, status, product, action, amount,
                                  draw_buckets, draw_amounts, period_start, expires_at, created_at, metadata)
SELECT $8, $1, 'pending', $3, $4, $2, d.buckets, d.amounts, $9, $7 + $5, $7, $6
  FROM credits._draw($1, $2, $7, true) d";

/// A call with an idempotency key: whether the key was used before, as far
/// as a snapshot taken before the account's lock shows. A replay (the key
/// stored by a committed call) goes to the general path, which returns the
/// first call's result or raises CR006, with nothing written here.
/// Parameters: $1 account, $2 key.
const KEY_SEEN: &str = "
SELECT 1 FROM credits.idempotency_keys WHERE account_id = $1 AND fn = 'reserve' AND key = $2";

/// After the hold on the account row is taken (so under the account's lock,
/// where every write path stores its keys): the key with the request the
/// general path compares a replay against (`credits._reserve`, the same
/// jsonb) and the reservation id. It stores nothing, returning no row, only
/// when a call with the same key committed between KEY_SEEN's snapshot and
/// the lock: then the hold is given back (RELEASE_HOLD) and the general path
/// answers as for any replay. Parameters: $1 account, $2 key, $3 amount, $4
/// product, $5 action, $6 ttl, $7 metadata, $8 reservation id, $9 now.
const KEY_STORE: &str = "
INSERT INTO credits.idempotency_keys (account_id, fn, key, request, result, created_at)
VALUES ($1, 'reserve', $2,
        jsonb_build_object('amount', $3, 'product', $4, 'action', $5,
                           'ttl', extract(epoch FROM $6), 'metadata', $7),
        $8::text, $9)
ON CONFLICT (account_id, fn, key) DO NOTHING
RETURNING 1";

/// Gives back the hold TAKE_HOLD took when KEY_STORE found the key taken.
/// The account's `next_event` stays as TAKE_HOLD left it: at most as late as
/// before, and a `next_event` earlier than the account's next event is a
/// false alarm, never a missed event. Parameters: $1 account, $2 amount.
const RELEASE_HOLD: &str = "
UPDATE credits.accounts SET held = held - $2 WHERE account_id = $1";

const KEY_SEEN_ARGS: &[pg_sys::Oid] = &[TEXT, TEXT];

const KEY_STORE_ARGS: &[pg_sys::Oid] = &[
    TEXT,
    TEXT,
    NUMERIC,
    TEXT,
    TEXT,
    INTERVAL,
    JSONB,
    UUID,
    TIMESTAMPTZ,
];

const RELEASE_ARGS: &[pg_sys::Oid] = &[TEXT, NUMERIC];

const HOLD_ARGS: &[pg_sys::Oid] = &[
    TEXT,
    NUMERIC,
    TEXT,
    TEXT,
    INTERVAL,
    JSONB,
    TIMESTAMPTZ,
    UUID,
    TIMESTAMPTZ,
];

const TAKE_ARGS: &[pg_sys::Oid] = &[TEXT, NUMERIC, TEXT, INTERVAL, JSONB, TIMESTAMPTZ];

// The statements above, by their place in PLANS.
const TAKE: usize = 0;
const HOLD_FIRST: usize = 1;
const HOLD_ACROSS: usize = 2;
const TAKE_DUE: usize = 3;
const SEEN: usize = 4;
const STORE: usize = 5;
const RELEASE: usize = 6;
const TAKE_OLD: usize = 7;
const TAKE_DUE_OLD: usize = 8;

thread_local! {
    static PLANS: Plans<9> = const {
        Plans::new([
            (TAKE_HOLD, TAKE_ARGS),
            (HOLD_FIRST_BUCKET, HOLD_ARGS),
            (HOLD_ACROSS_BUCKETS, HOLD_ARGS),
            (TAKE_HOLD_DUE, TAKE_ARGS),
            (KEY_SEEN, KEY_SEEN_ARGS),
            (KEY_STORE, KEY_STORE_ARGS),
            (RELEASE_HOLD, RELEASE_ARGS),
            (TAKE_HOLD_BEFORE_0_3_5, TAKE_ARGS),
            (TAKE_HOLD_DUE_BEFORE_0_3_5, TAKE_ARGS),
        ])
    };
}

thread_local! {
    /// Whether this database's account rows carry `products_off` (SQL
    /// 0.3.5 and later), as last found; `None` until asked, and again after
    /// any change of a table's columns (`forget_switches`), so that a
    /// session switches over with its first reserve after `ALTER EXTENSION
    /// credits UPDATE`, and back should the extension be dropped and
    /// created again at an older version.
    static SWITCHES_ON_ROW: Cell<Option<bool>> = const { Cell::new(None) };
    /// Whether `forget_switches` is registered in this backend.
    static FORGETS: Cell<bool> = const { Cell::new(false) };
}

/// An invalidation of the catalog cache of columns by name (a column of
/// any table added or dropped, a table created or dropped):
/// `switches_on_row` asks the catalog again at the next reserve.
#[pg_guard]
unsafe extern "C-unwind" fn forget_switches(
    _arg: pg_sys::Datum,
    _cache: std::ffi::c_int,
    _hash: u32,
) {
    SWITCHES_ON_ROW.with(|known| known.set(None));
}

/// Whether `credits.accounts` has the column `products_off`. Asking the
/// catalog caches on every call (three look-ups by name) cost about 16% of
/// the reserves per second at 8 clients here, so the answer is kept until
/// the column cache is invalidated. (A syscache callback: Postgres has 64
/// slots for them, against 10 for relcache callbacks, and a backend that
/// finds its slots full fails with FATAL.)
fn switches_on_row() -> bool {
    SWITCHES_ON_ROW.with(|known| {
        if let Some(found) = known.get() {
            return found;
        }
        if !FORGETS.with(Cell::get) {
            // SAFETY: registers a callback with the signature Postgres
            // calls, once per backend.
            unsafe {
                pg_sys::CacheRegisterSyscacheCallback(
                    pg_sys::SysCacheIdentifier::ATTNAME as std::ffi::c_int,
                    Some(forget_switches),
                    pg_sys::Datum::from(0),
                )
            };
            FORGETS.with(|f| f.set(true));
        }
        // SAFETY: catalog cache look-ups by name, inside a transaction.
        let found = unsafe {
            let schema = pg_sys::get_namespace_oid(c"credits".as_ptr(), true);
            schema != pg_sys::InvalidOid && {
                let table = pg_sys::get_relname_relid(c"accounts".as_ptr(), schema);
                table != pg_sys::InvalidOid
                    && pg_sys::get_attnum(table, c"products_off".as_ptr()) > 0
            }
        };
        known.set(Some(found));
        found
    })
}

finfo_v1!(pg_finfo_credits_reserve_fast);

/// `credits._reserve_fast(account_id text, amount numeric, product text,
/// action text, idempotency_key text, ttl interval, metadata jsonb)
/// RETURNS uuid`: the reservation id, or NULL when the general path must
/// judge the call (nothing written then).
///
/// # Safety
/// Called by Postgres through the fmgr interface with the arguments above.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn credits_reserve_fast(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: Postgres calls this with the seven arguments declared in
    // sql/reserve.sql, and fcinfo is this call's.
    unsafe {
        let id = reserve(fcinfo);
        result(
            fcinfo,
            id.map(|id| id.into_datum().expect("a uuid is never NULL as a datum")),
        )
    }
}

unsafe fn reserve(fcinfo: pg_sys::FunctionCallInfo) -> Option<pgrx::Uuid> {
    if !enabled() {
        return None;
    }
    // SAFETY: argument positions and types are those of the SQL declaration.
    let (account, amount, product, action, key, ttl, metadata) = unsafe {
        (
            arg(fcinfo, 0),
            arg(fcinfo, 1)?,
            arg(fcinfo, 2),
            arg(fcinfo, 3),
            arg(fcinfo, 4),
            arg(fcinfo, 5)?,
            arg(fcinfo, 6)?,
        )
    };
    // SAFETY: text arguments.
    let (account_text, product_text, action_text, key_text) = unsafe {
        (
            text_arg(account)?,
            text_arg(product)?,
            text_arg(action),
            text_arg(key),
        )
    };
    if !plausible_ident(account_text)
        || !plausible_ident(product_text)
        || action.is_some() && !action_text.is_some_and(plausible_ident)
        || key.is_some() && !key_text.is_some_and(plausible_ident)
    {
        return None;
    }

    let now = crate::clock::_now()
        .into_datum()
        .expect("a timestamptz is never NULL as a datum");
    let id = pgrx::Uuid::from_bytes(*uuid::Uuid::new_v4().as_bytes());
    let id_datum = id.into_datum().expect("a uuid is never NULL as a datum");

    let (take, take_due) = if switches_on_row() {
        (TAKE, TAKE_DUE)
    } else {
        (TAKE_OLD, TAKE_DUE_OLD)
    };
    let reserved = PLANS.with(|plans| {
        Spi::connect_mut(|client| {
            if key.is_some() {
                let seen = client
                    .update(
                        plans.get(client, SEEN),
                        None,
                        &[param(account, TEXT), param(key, TEXT)],
                    )
                    .expect("credits: the reserve fast path failed to look its key up");
                if !seen.is_empty() {
                    return false;
                }
            }
            let take_args = [
                param(account, TEXT),
                param(Some(amount), NUMERIC),
                param(product, TEXT),
                param(Some(ttl), INTERVAL),
                param(Some(metadata), JSONB),
                param(Some(now), TIMESTAMPTZ),
            ];
            let mut taken = client
                .update(plans.get(client, take), None, &take_args)
                .expect("credits: the reserve fast path failed to take the hold");
            if taken.is_empty() {
                taken = client
                    .update(plans.get(client, take_due), None, &take_args)
                    .expect("credits: the reserve fast path failed to take the hold");
                if taken.is_empty() {
                    return false;
                }
            }
            let period_start = taken
                .first()
                .get_datum_by_ordinal(1)
                .expect("the hold returns the period start");
            if key.is_some() {
                let store_args = [
                    param(account, TEXT),
                    param(key, TEXT),
                    param(Some(amount), NUMERIC),
                    param(product, TEXT),
                    param(action, TEXT),
                    param(Some(ttl), INTERVAL),
                    param(Some(metadata), JSONB),
                    param(Some(id_datum), UUID),
                    param(Some(now), TIMESTAMPTZ),
                ];
                let stored = client
                    .update(plans.get(client, STORE), None, &store_args)
                    .expect("credits: the reserve fast path failed to store its key");
                if stored.is_empty() {
                    client
                        .update(
                            plans.get(client, RELEASE),
                            None,
                            &[param(account, TEXT), param(Some(amount), NUMERIC)],
                        )
                        .expect("credits: the reserve fast path failed to give its hold back");
                    return false;
                }
            }
            let hold_args = [
                param(account, TEXT),
                param(Some(amount), NUMERIC),
                param(product, TEXT),
                param(action, TEXT),
                param(Some(ttl), INTERVAL),
                param(Some(metadata), JSONB),
                param(Some(now), TIMESTAMPTZ),
                param(Some(id_datum), UUID),
                param(period_start, TIMESTAMPTZ),
            ];
            let held = client
                .update(plans.get(client, HOLD_FIRST), None, &hold_args)
                .expect("credits: the reserve fast path failed to hold a bucket");
            if held.is_empty() {
                client
                    .update(plans.get(client, HOLD_ACROSS), None, &hold_args)
                    .expect("credits: the reserve fast path failed to draw from the buckets");
            }
            true
        })
    });
    reserved.then_some(id)
}
