//! Calibration for `make bench-decompose`, not part of `credits`: the least
//! an implementation of the spec writes per action (the rows of
//! `bench/min_reservation_action.sql`), written *below the executor*, by
//! the heap and index calls that Postgres' own catalog code and logical
//! replication's apply worker use, with no statement, plan or executor
//! node per row.
//!
//! - `bench_heap_min_reserve(account, amount)`: finds the account's row of
//!   `lean_accounts` by its primary key and locks it (as the apply worker
//!   does: `RelationFindReplTupleByIndex`, which waits for and follows a
//!   concurrent update), checks `balance - held >= amount` on the locked
//!   version, writes the new version with `held + amount`, and inserts a
//!   `lean_reservations` row (its id from the table's sequence). Returns
//!   the id.
//! - `bench_heap_min_commit(reservation, charge)`: finds and locks the
//!   reservation by its primary key, deletes it, locks and updates its
//!   account (`held - amount`, `balance - charge`), and appends a
//!   `lean_ledger` row.
//!
//! The row writes are `CatalogTupleInsert`, `CatalogTupleUpdate` and
//! `CatalogTupleDelete`: `simple_heap_*` plus the insertion of the new
//! version into each index (none for a HOT update), WAL-logged as any heap
//! write. That is the leanest write Postgres has, leaner than the apply
//! worker's (no executor state, constraint checks or triggers): the
//! `CHECK (held <= balance)` of `lean_accounts` is not evaluated here, the
//! balance check above stands for it. So this measures what writing the
//! minimum's rows costs without statements, an upper bound for any design
//! that writes them.

use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::prelude::*;
use pgrx::AnyNumeric;
use std::cell::Cell;
use std::ffi::CStr;

pgrx::pg_module_magic!();

/// The lean reference's relations (`bench/setup.sql`), looked up once per
/// backend; each database of the benchmark is new, so they do not change.
#[derive(Clone, Copy)]
struct Relations {
    accounts: Oid,
    reservations: Oid,
    reservations_seq: Oid,
    ledger: Oid,
    ledger_seq: Oid,
}

/// How many times `Table::lock_row` looks a key up before it is missing.
const LOOKUPS: usize = 20;

thread_local! {
    static RELATIONS: Cell<Option<Relations>> = const { Cell::new(None) };
}

fn relid(name: &CStr) -> Oid {
    // SAFETY: a name looked up in the search path; no pointer is kept.
    let oid = unsafe { pg_sys::RelnameGetRelid(name.as_ptr()) };
    if oid == pg_sys::InvalidOid {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("relation {} does not exist", name.to_string_lossy()),
            "bench/setup.sql creates the lean reference's tables"
        );
    }
    oid
}

fn relations() -> Relations {
    RELATIONS.with(|cell| {
        cell.get().unwrap_or_else(|| {
            let found = Relations {
                accounts: relid(c"lean_accounts"),
                reservations: relid(c"lean_reservations"),
                reservations_seq: relid(c"lean_reservations_id_seq"),
                ledger: relid(c"lean_ledger"),
                ledger_seq: relid(c"lean_ledger_id_seq"),
            };
            cell.set(Some(found));
            found
        })
    })
}

/// An open relation, closed at the end of the call; its lock is held to
/// the end of the transaction, as a statement's is.
struct Table(pg_sys::Relation);

impl Table {
    fn open(oid: Oid, columns: usize) -> Table {
        // SAFETY: the relation is opened with a lock and closed in drop.
        let rel = unsafe { pg_sys::table_open(oid, pg_sys::RowExclusiveLock as i32) };
        let table = Table(rel);
        if table.columns() != columns {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                "the lean reference's tables are not as bench/setup.sql makes them"
            );
        }
        table
    }

    fn columns(&self) -> usize {
        // SAFETY: the relation is open.
        unsafe { (*(*self.0).rd_att).natts as usize }
    }

    /// Finds the row whose primary key (the first column) is `key` and
    /// locks it FOR UPDATE, waiting for a concurrent writer and following
    /// its update; None if there is no such row.
    ///
    /// The apply worker's look-up can miss a row that exists: the index
    /// scan reads a page's matching entries at once, so when a concurrent
    /// update that is not HOT commits after the scan read the old version's
    /// entry and before it checked that version, the old version is dead
    /// and the new one's entry was not read (seen on the hot row at 32
    /// clients; the apply worker reports such a miss as a conflict). A
    /// statement would follow the old version's ctid to the new one
    /// instead. Here the look-up is repeated, which finds the committed
    /// entry; only a key missing on every try is missing.
    fn lock_row(&self, key: Datum) -> Option<Row> {
        (0..LOOKUPS).find_map(|_| self.try_lock_row(key))
    }

    fn try_lock_row(&self, key: Datum) -> Option<Row> {
        // SAFETY: slots are made for this relation's descriptor, filled
        // within their column count and dropped (releasing their buffer
        // pins) here or in Row's drop.
        unsafe {
            let search = pg_sys::MakeSingleTupleTableSlot((*self.0).rd_att, &pg_sys::TTSOpsVirtual);
            pg_sys::ExecClearTuple(search);
            let n = self.columns();
            std::slice::from_raw_parts_mut((*search).tts_isnull, n).fill(true);
            *(*search).tts_values = key;
            *(*search).tts_isnull = false;
            pg_sys::ExecStoreVirtualTuple(search);
            let out = pg_sys::table_slot_create(self.0, std::ptr::null_mut());
            let found = pg_sys::RelationFindReplTupleByIndex(
                self.0,
                pg_sys::RelationGetPrimaryKeyIndex(self.0),
                pg_sys::LockTupleMode::LockTupleExclusive,
                search,
                out,
            );
            pg_sys::ExecDropSingleTupleTableSlot(search);
            let row = Row(out);
            if !found {
                return None;
            }
            pg_sys::slot_getallattrs(out);
            Some(row)
        }
    }

    fn insert(&self, values: &mut [Datum], nulls: &mut [bool]) {
        assert_eq!(values.len(), self.columns());
        // SAFETY: one datum and null flag per column of the descriptor.
        unsafe {
            let tuple =
                pg_sys::heap_form_tuple((*self.0).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::CatalogTupleInsert(self.0, tuple);
        }
    }

    fn update(&self, row: &Row, values: &mut [Datum], nulls: &mut [bool]) {
        assert_eq!(values.len(), self.columns());
        // SAFETY: as insert; the row is locked by this transaction.
        unsafe {
            let tuple =
                pg_sys::heap_form_tuple((*self.0).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::CatalogTupleUpdate(self.0, &mut (*row.0).tts_tid, tuple);
        }
    }

    fn delete(&self, row: &Row) {
        // SAFETY: the row is locked by this transaction.
        unsafe { pg_sys::CatalogTupleDelete(self.0, &mut (*row.0).tts_tid) }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // SAFETY: opened in Table::open; the lock stays to the end of the
        // transaction.
        unsafe { pg_sys::table_close(self.0, pg_sys::NoLock as i32) }
    }
}

/// A locked row in a slot that pins its buffer: its values stay valid
/// while the Row lives.
struct Row(*mut pg_sys::TupleTableSlot);

impl Row {
    fn values(&self) -> (Vec<Datum>, Vec<bool>) {
        // SAFETY: slot_getallattrs filled every column.
        unsafe {
            let n = (*(*self.0).tts_tupleDescriptor).natts as usize;
            (
                std::slice::from_raw_parts((*self.0).tts_values, n).to_vec(),
                std::slice::from_raw_parts((*self.0).tts_isnull, n).to_vec(),
            )
        }
    }
}

impl Drop for Row {
    fn drop(&mut self) {
        // SAFETY: made by table_slot_create for this call.
        unsafe { pg_sys::ExecDropSingleTupleTableSlot(self.0) }
    }
}

fn numeric(f: unsafe fn(pg_sys::FunctionCallInfo) -> Datum, a: Datum, b: Datum) -> Datum {
    // SAFETY: numeric functions of two non-null numerics.
    unsafe { pgrx::direct_function_call_as_datum(f, &[Some(a), Some(b)]) }.expect("numeric result")
}

fn next_id(sequence: Oid) -> Datum {
    // SAFETY: nextval of a sequence by oid.
    unsafe {
        pgrx::direct_function_call_as_datum(pg_sys::nextval_oid, &[Some(Datum::from(sequence))])
    }
    .expect("nextval result")
}

fn text(s: &CStr) -> Datum {
    // SAFETY: copies the string into a new text.
    Datum::from(unsafe { pg_sys::cstring_to_text(s.as_ptr()) })
}

fn no_such(what: &str, key: String) -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
        format!("{what} {key} does not exist"),
        "the benchmark's calibration finds rows by their primary key"
    );
}

/// Adds a hold of `amount` to the account's balance row and inserts its
/// reservation; returns the reservation's id.
#[pg_extern]
fn bench_heap_min_reserve(account: i32, amount: AnyNumeric) -> i64 {
    let rels = relations();
    let amount = amount.into_datum().expect("numeric datum");
    let accounts = Table::open(rels.accounts, 3);
    let Some(row) = accounts.lock_row(Datum::from(account)) else {
        no_such("account", account.to_string())
    };
    let (mut values, mut nulls) = row.values();
    let free = numeric(pg_sys::numeric_sub, values[1], values[2]);
    if numeric(pg_sys::numeric_ge, free, amount).value() == 0 {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            "insufficient credits",
            format!("account {account}")
        );
    }
    values[2] = numeric(pg_sys::numeric_add, values[2], amount);
    accounts.update(&row, &mut values, &mut nulls);
    drop(row);
    drop(accounts);

    let reservations = Table::open(rels.reservations, 5);
    let id = next_id(rels.reservations_seq);
    reservations.insert(
        &mut [
            id,
            Datum::from(account),
            amount,
            Datum::from(0),
            text(c"pending"),
        ],
        &mut [false, false, false, true, false],
    );
    id.value() as i64
}

/// Deletes the reservation, takes its hold off the balance row with the
/// charge, and appends the charge's ledger row.
#[pg_extern]
fn bench_heap_min_commit(reservation: i64, charge: AnyNumeric) {
    let rels = relations();
    let charge = charge.into_datum().expect("numeric datum");
    let reservations = Table::open(rels.reservations, 5);
    let Some(held) = reservations.lock_row(Datum::from(reservation)) else {
        no_such("reservation", reservation.to_string())
    };
    let (hold, _) = held.values();
    reservations.delete(&held);
    let (account, amount) = (hold[1], hold[2]);

    let accounts = Table::open(rels.accounts, 3);
    let Some(row) = accounts.lock_row(account) else {
        no_such("account", account.value().to_string())
    };
    let (mut values, mut nulls) = row.values();
    values[1] = numeric(pg_sys::numeric_sub, values[1], charge);
    values[2] = numeric(pg_sys::numeric_sub, values[2], amount);
    accounts.update(&row, &mut values, &mut nulls);
    drop(row);
    drop(accounts);

    let ledger = Table::open(rels.ledger, 6);
    ledger.insert(
        &mut [
            next_id(rels.ledger_seq),
            account,
            Datum::from(reservation),
            text(c"charge"),
            // SAFETY: a new numeric, the charge's negation.
            unsafe { pgrx::direct_function_call_as_datum(pg_sys::numeric_uminus, &[Some(charge)]) }
                .expect("numeric result"),
            // SAFETY: the transaction's start, as now() is.
            Datum::from(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }),
        ],
        &mut [false; 6],
    );
    drop(held);
    drop(reservations);
}
