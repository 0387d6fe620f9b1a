//! What the calling session is doing, for the procedure that commits as it
//! goes: `credits_maintenance` refuses to run inside a transaction block,
//! where Postgres would refuse its first `COMMIT` only after a batch's work
//! (`2D000`, "invalid transaction termination").

use pgrx::prelude::*;

/// Whether the caller is inside a transaction block: an explicit `BEGIN`, or
/// several statements sent as one query string.
#[pg_extern(volatile, schema = "credits")]
pub fn _in_transaction_block() -> bool {
    // SAFETY: reads the state of the current transaction; callable whenever
    // a statement runs.
    unsafe { pg_sys::IsTransactionBlock() }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn a_pg_test_runs_inside_a_transaction_block() {
        // pgrx runs each #[pg_test] in a transaction that it rolls back.
        let inside = Spi::get_one::<bool>("SELECT credits._in_transaction_block()").unwrap();
        assert_eq!(inside, Some(true));
    }
}
