//! Shared plumbing of the reserve and commit fast paths (`fast_reserve`,
//! `fast_commit`): the setting `credits.fast_paths` that turns them off, raw
//! argument access, SPI plans prepared once per backend and kept (each
//! prepared when first needed), and the conversions between them.
//!
//! A fast path handles the common case only and never raises a domain error:
//! when anything is unusual it returns NULL without having written anything
//! (a keyed reserve that finds its key taken once it holds the account's
//! lock gives its hold back first: `fast_reserve`), and the SQL wrapper (`credits_reserve`, `credits_commit`) calls the
//! general PL/pgSQL path, which judges the call and raises the documented
//! SQLSTATE itself (pgrx would turn a custom SQLSTATE passing through Rust
//! into XX000).

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::cell::OnceCell;

static FAST_PATHS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// The setting `credits.fast_paths` (on by default, superuser only): off,
/// every reserve and commit takes the general path. `make test` runs the
/// pgTAP files again with it off, so that each behaviour they check is
/// checked on the general path too, also in the cases the fast paths take.
pub fn init() {
    GucRegistry::define_bool_guc(
        c"credits.fast_paths",
        c"Lets the reserve and commit fast paths of the credits extension take the common case.",
        c"Off, every reserve and commit takes the general PL/pgSQL path: the same \
          results, slower. For tests and diagnosis. Superuser only.",
        &FAST_PATHS,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// Argument `n` of the call: `None` when SQL NULL.
///
/// # Safety
/// `fcinfo` must be the call's own, with at least `n + 1` arguments.
pub unsafe fn arg(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> Option<pg_sys::Datum> {
    // SAFETY: the caller passes the live fcinfo of this call.
    unsafe {
        if pgrx::fcinfo::pg_arg_is_null(fcinfo, n) {
            None
        } else {
            Some(pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, n))
        }
    }
}

/// A datum of type `oid` as an SPI argument (NULL when `None`).
pub fn param<'a>(datum: Option<pg_sys::Datum>, oid: pg_sys::Oid) -> DatumWithOid<'a> {
    match datum {
        // SAFETY: the datum is a valid value of type `oid` for the duration
        // of the call (an argument of the call or a value SPI returned).
        Some(d) => unsafe { DatumWithOid::new(d, oid) },
        None => DatumWithOid::null_oid(oid),
    }
}

/// A text argument as `&str`, without copying when it is not toasted.
///
/// # Safety
/// `datum` must be a text datum valid for the rest of the call.
pub unsafe fn text_arg<'a>(datum: Option<pg_sys::Datum>) -> Option<&'a str> {
    // SAFETY: a text datum, per the caller; a detoasted copy lives in the
    // call's memory context.
    datum.and_then(|d| unsafe { <&str as FromDatum>::from_datum(d, false) })
}

/// Whether a fast path may take this call: `credits.fast_paths` is on and
/// the transaction may write.
pub fn enabled() -> bool {
    FAST_PATHS.get() && writable()
}

/// Whether this transaction may write. A fast path declines at once when it
/// may not: in a read-only transaction or on a hot standby the general path
/// raises Postgres' own `25006`. (pgrx's `Spi::connect_mut` asks for the
/// transaction's id first, and on a standby that fails with XX000, "cannot
/// assign TransactionIds during recovery".) durability.rs calls both write
/// paths on a streaming standby.
fn writable() -> bool {
    // SAFETY: a plain read of a backend-global flag that Postgres sets when
    // the transaction starts (and on `SET transaction_read_only`).
    !unsafe { pg_sys::XactReadOnly }
}

/// What the API accepts as an identifier (account, product, action): 1 to
/// 255 characters, not only spaces. Anything else goes to the general path,
/// which raises the precise error.
pub fn plausible_ident(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && !s.bytes().all(|b| b == b' ')
}

/// The binding rule for the account in column `$col`, written into the
/// fast paths' statements: with no account bound at all (one probe of an
/// empty table, the common case) nothing more is asked; otherwise
/// `credits._may_touch` (sql/security.sql) probes that account's bindings
/// by key. Until 0.3.5 the statements listed the caller's accounts with
/// `credits._bound_accounts()` and looked for `$col` in the list: a role
/// bound to 10,000 accounts paid 13 ms per reserve + commit. The library is
/// shared by every database of the cluster, and `credits._may_touch` has
/// the same meaning in every SQL version since 0.2.0 (in those before
/// 0.3.5 a SQL function, planned anew on each call, as their
/// `_sees_all()` and `_bound_accounts()` were). pgTAP 12 checks that a
/// role bound to one account can neither reserve nor commit on another.
macro_rules! may_touch {
    ($col:literal) => {
        concat!(
            "(NOT EXISTS (SELECT 1 FROM credits.account_roles) OR credits._may_touch(",
            $col,
            "))"
        )
    };
}
pub(crate) use may_touch;

/// The V1 call-convention record Postgres looks up as `pg_finfo_<name>`
/// for a C function called `<name>`.
macro_rules! finfo_v1 {
    ($finfo:ident) => {
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static pgrx::pg_sys::Pg_finfo_record {
            const V1: pgrx::pg_sys::Pg_finfo_record =
                pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    };
}
pub(crate) use finfo_v1;

/// Returns `value` from a fast path, or SQL NULL (the general path's turn).
///
/// # Safety
/// `fcinfo` must be the call's own.
pub unsafe fn result(
    fcinfo: pg_sys::FunctionCallInfo,
    value: Option<pg_sys::Datum>,
) -> pg_sys::Datum {
    value.unwrap_or_else(|| {
        // SAFETY: fcinfo is this call's, per the caller.
        unsafe { (*fcinfo).isnull = true };
        pg_sys::Datum::from(0)
    })
}

/// A statement of a fast path: its text and its argument types.
pub type Source = (&'static str, &'static [pg_sys::Oid]);

/// The statements of a fast path, each prepared the first time a call needs
/// it and kept for the backend's life (Postgres revalidates a kept plan when
/// the objects it uses change). A statement that only unusual calls run is
/// not prepared by a session that never needs it.
pub struct Plans<const N: usize> {
    sources: [Source; N],
    kept: [OnceCell<OwnedPreparedStatement>; N],
}

impl<const N: usize> Plans<N> {
    pub const fn new(sources: [Source; N]) -> Self {
        Plans {
            sources,
            kept: [const { OnceCell::new() }; N],
        }
    }

    /// Statement `i` of the sources, prepared if it was not yet.
    pub fn get(&self, client: &SpiClient<'_>, i: usize) -> &OwnedPreparedStatement {
        self.kept[i].get_or_init(|| {
            let (query, args) = self.sources[i];
            let args: Vec<PgOid> = args.iter().map(|oid| PgOid::from(*oid)).collect();
            client
                .prepare_mut(query, &args)
                .unwrap_or_else(|e| panic!("credits: cannot prepare a fast-path plan: {e}"))
                .keep()
        })
    }
}

pub const TEXT: pg_sys::Oid = pg_sys::TEXTOID;
pub const NUMERIC: pg_sys::Oid = pg_sys::NUMERICOID;
pub const INTERVAL: pg_sys::Oid = pg_sys::INTERVALOID;
pub const JSONB: pg_sys::Oid = pg_sys::JSONBOID;
pub const TIMESTAMPTZ: pg_sys::Oid = pg_sys::TIMESTAMPTZOID;
pub const UUID: pg_sys::Oid = pg_sys::UUIDOID;
pub const TID: pg_sys::Oid = pg_sys::TIDOID;

#[cfg(test)]
mod unit {
    use super::plausible_ident;

    #[test]
    fn identifiers_the_fast_path_accepts() {
        assert!(plausible_ident("acct1"));
        assert!(plausible_ident(" a "));
        assert!(!plausible_ident(""));
        assert!(!plausible_ident("   "));
        assert!(!plausible_ident(&"x".repeat(256)));
        assert!(plausible_ident(&"x".repeat(255)));
    }
}
