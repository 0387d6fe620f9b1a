//! Whether writing an event also sends `NOTIFY credits_events`: the setting
//! `credits.notify` (on by default, any role may change it for its session
//! or transaction). A transaction that has sent a NOTIFY cannot be prepared
//! for two-phase commit (`PREPARE TRANSACTION` fails with 0A000), so an
//! application that prepares its transactions turns it off and its event
//! consumers poll; the events themselves are written either way.

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

static NOTIFY: GucSetting<bool> = GucSetting::<bool>::new(true);

pub fn init() {
    GucRegistry::define_bool_guc(
        c"credits.notify",
        c"Sends NOTIFY credits_events when the credits extension writes an event.",
        c"Turn it off in transactions that are prepared for two-phase commit: \
          PREPARE TRANSACTION refuses a transaction that sent a NOTIFY. \
          The events are written either way.",
        &NOTIFY,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// The setting's value, for `credits._emit`.
#[pg_extern(stable, parallel_safe, schema = "credits")]
pub fn _notify_enabled() -> bool {
    NOTIFY.get()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn notify_is_on_by_default_and_follows_the_setting() {
        let on = Spi::get_one::<bool>("SELECT credits._notify_enabled()").unwrap();
        assert_eq!(on, Some(true));
        Spi::run("SET LOCAL credits.notify = off").unwrap();
        let off = Spi::get_one::<bool>("SELECT credits._notify_enabled()").unwrap();
        assert_eq!(off, Some(false));
    }
}
