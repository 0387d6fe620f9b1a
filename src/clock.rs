//! The one clock of the extension. Every SQL path reads time through
//! `credits._now()`, so tests can pin it with the superuser-only setting
//! `credits.now`. Without the setting it is the wall clock at the moment of
//! the call (not the transaction start), which is what lazy hold expiry needs.

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

static NOW: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub fn init() {
    GucRegistry::define_string_guc(
        c"credits.now",
        c"Pins the clock of the credits extension (for tests).",
        c"A timestamptz, or empty for the wall clock. Superuser only.",
        &NOW,
        GucContext::Suset,
        GucFlags::default(),
    );
}

#[pg_extern(volatile, parallel_safe, schema = "credits")]
pub fn _now() -> TimestampWithTimeZone {
    match NOW.get() {
        Some(text) if !text.as_bytes().is_empty() => {
            // SAFETY: timestamptz_in takes (cstring, oid, int4) and returns a
            // timestamptz datum or raises a regular Postgres error (22007).
            unsafe {
                pgrx::direct_function_call::<TimestampWithTimeZone>(
                    pg_sys::timestamptz_in,
                    &[
                        text.as_c_str().into_datum(),
                        pg_sys::InvalidOid.into_datum(),
                        (-1i32).into_datum(),
                    ],
                )
            }
            .expect("timestamptz_in never returns NULL")
        }
        _ => {
            // SAFETY: plain read of the system clock.
            let now = unsafe { pg_sys::GetCurrentTimestamp() };
            TimestampWithTimeZone::try_from(now).expect("the system clock is finite")
        }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn pinned_clock_is_returned_verbatim() {
        Spi::run("SET credits.now = '2026-02-28 23:59:59+00'").unwrap();
        let pinned =
            Spi::get_one::<bool>("SELECT credits._now() = '2026-02-28 23:59:59+00'::timestamptz")
                .unwrap();
        assert_eq!(pinned, Some(true));
    }

    #[pg_test]
    fn unpinned_clock_moves_within_a_transaction() {
        Spi::run("SET credits.now = ''").unwrap();
        let moved = Spi::get_one::<bool>(
            "SELECT credits._now() >= now() AND credits._now() <= clock_timestamp()",
        )
        .unwrap();
        assert_eq!(moved, Some(true));
    }
}
