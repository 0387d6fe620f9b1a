//! `credits`: AI credits ledger for PostgreSQL.
//!
//! The ledger itself (tables, limits, reserve/commit/refund) is plain SQL in
//! `sql/`, one concern per file, loaded below in dependency order. Rust holds
//! what it does better: exact input validation (`input`), the pinned clock
//! (`clock`), the events' NOTIFY setting (`notify`), billing-period
//! arithmetic (`period`), the reset planner (`roll`), JSON assembly
//! (`balance`), the ledger's hash (`chain`), whether the caller is in a
//! transaction block (`session`) and the
//! hot path: the reserve and commit fast paths (`fast_reserve`,
//! `fast_commit`, with their shared plumbing in `fast_path`), which handle
//! the common case through kept SPI plans and leave every other case to the
//! general PL/pgSQL path.

use pgrx::prelude::*;

mod balance;
mod chain;
mod clock;
mod fast_commit;
mod fast_path;
mod fast_reserve;
mod input;
mod notify;
mod period;
mod roll;
mod session;

pgrx::pg_module_magic!(name, version);

/// The schema of every table, view and internal function.
#[pg_schema]
mod credits {}

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../sql/tables.sql",
    name = "tables",
    requires = ["bootstrap"]
);
extension_sql_file!("../sql/guards.sql", name = "guards", requires = ["tables"]);
extension_sql_file!(
    "../sql/ledger_chain.sql",
    name = "ledger_chain",
    requires = ["tables", chain::_ledger_hash]
);
extension_sql_file!(
    "../sql/security.sql",
    name = "security",
    requires = ["tables", "errors", input::_ident]
);
extension_sql_file!(
    "../sql/errors.sql",
    name = "errors",
    requires = ["bootstrap"]
);
extension_sql_file!(
    "../sql/limits.sql",
    name = "limits",
    requires = ["tables", "errors"]
);
extension_sql_file!(
    "../sql/events.sql",
    name = "events",
    requires = [
        "tables",
        "errors",
        input::_ident,
        clock::_now,
        notify::_notify_enabled
    ]
);
extension_sql_file!("../sql/usage.sql", name = "usage", requires = ["tables"]);
extension_sql_file!(
    "../sql/housekeeping.sql",
    name = "housekeeping",
    requires = [
        "tables",
        "errors",
        "limits",
        "security",
        clock::_now,
        roll::_roll_plan
    ]
);
extension_sql_file!(
    "../sql/state.sql",
    name = "state",
    requires = ["housekeeping"]
);
extension_sql_file!(
    "../sql/idempotency.sql",
    name = "idempotency",
    requires = ["tables", "errors"]
);
extension_sql_file!(
    "../sql/draw.sql",
    name = "draw",
    requires = ["housekeeping"]
);
extension_sql_file!(
    "../sql/plans_accounts.sql",
    name = "plans_accounts",
    requires = [
        "housekeeping",
        input::_amount,
        input::_ident,
        period::_period_start,
        period::_period_after
    ]
);
extension_sql_file!(
    "../sql/grant.sql",
    name = "grant",
    requires = ["plans_accounts", "idempotency"]
);
extension_sql_file!(
    "../sql/reserve.sql",
    name = "reserve",
    requires = ["draw", "idempotency", "plans_accounts", "products"]
);
extension_sql_file!(
    "../sql/commit.sql",
    name = "commit",
    requires = ["draw", "reserve", "alerts", "usage"]
);
extension_sql_file!(
    "../sql/refund.sql",
    name = "refund",
    requires = ["draw", "reserve", "usage"]
);
extension_sql_file!(
    "../sql/products.sql",
    name = "products",
    requires = ["housekeeping", input::_ident]
);
extension_sql_file!(
    "../sql/quotes.sql",
    name = "quotes",
    requires = ["tables", "errors", input::_ident, input::_amount]
);
extension_sql_file!(
    "../sql/purchases.sql",
    name = "purchases",
    requires = ["housekeeping", "events", input::_ident, input::_amount]
);
extension_sql_file!(
    "../sql/alerts.sql",
    name = "alerts",
    requires = ["purchases", "events", "limits"]
);
extension_sql_file!(
    "../sql/reset.sql",
    name = "reset",
    requires = [
        "housekeeping",
        input::_ident,
        session::_in_transaction_block
    ]
);
extension_sql_file!(
    "../sql/balance.sql",
    name = "balance",
    requires = ["state", balance::_balance_json]
);
extension_sql_file!(
    "../sql/row_security.sql",
    name = "row_security",
    requires = ["security", "products", "purchases", "events", "usage"]
);
extension_sql_file!(
    "../sql/views.sql",
    name = "views",
    requires = ["state", "usage", "reserve", "row_security"]
);
extension_sql_file!(
    "../sql/verify.sql",
    name = "verify",
    requires = ["state", "usage", "products"]
);
extension_sql_file!("../sql/privileges.sql", name = "privileges", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    no_backtraces_in_errors();
    clock::init();
    notify::init();
    fast_path::init();
}

/// Errors that Postgres raises inside the fast paths' statements (a lock or
/// statement timeout, a serialization failure, a cancel) pass through Rust
/// on their way to the caller, and pgrx then appends a Rust backtrace to
/// their DETAIL whenever the server's environment enables backtraces
/// (`RUST_BACKTRACE=1`, common on machines that build Rust): callers and
/// the server log got `55P03` or `40001` with 30 lines of stack frames
/// instead of Postgres' own DETAIL, and each such error cost the stack walk
/// and its symbolization. Backtraces are off for this backend unless
/// `RUST_LIB_BACKTRACE` is set explicitly (a developer's opt-in, which
/// takes precedence over `RUST_BACKTRACE`).
fn no_backtraces_in_errors() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // A backend is single-threaded, and this runs when the library is
        // loaded, before anything in it captures a backtrace (std reads the
        // variable at the first capture).
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
