//! Integration tests: the events' NOTIFY and two-phase commit, against a
//! real cluster (started by scripts/test.sh with max_prepared_transactions
//! above 0). A listener must hear every event written with credits.notify
//! on and none written with it off; a transaction that raised events with it
//! off must survive PREPARE TRANSACTION, which refuses any transaction that
//! sent a NOTIFY.

mod common;

use common::{assert_verify_empty, base_url, connect, count, fresh_db, rows, sqlstate};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::time::{Duration, Instant};

/// The payloads of the notifications `listener` receives up to a marker
/// that `writer` sends now: notifications arrive in commit order, so these
/// are all that were sent before it.
fn heard(listener: &mut Client, writer: &mut Client) -> Vec<String> {
    writer
        .batch_execute("NOTIFY credits_events, 'marker'")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut payloads = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut notifications = listener.notifications();
        let next = notifications.timeout_iter(left).next();
        match next {
            Ok(Some(n)) if n.payload() == "marker" => return payloads,
            Ok(Some(n)) => {
                assert_eq!(n.channel(), "credits_events");
                payloads.push(n.payload().to_string());
            }
            Ok(None) => panic!("the marker did not arrive in 30 s; heard {payloads:?}"),
            Err(e) => panic!("the listener's connection failed: {e}"),
        }
    }
}

fn spend(client: &mut Client, account: &str, amount: i32) {
    client
        .execute(
            "SELECT credits_commit(credits_reserve(account_id => $1, amount => $2::int::numeric, product => 'editor'))",
            &[&account, &amount],
        )
        .unwrap();
}

#[test]
fn listeners_hear_each_event_unless_the_writer_turned_credits_notify_off() {
    let url = fresh_db("it_notify_listen");
    let mut writer = connect(&url);
    writer
        .batch_execute(
            "SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100, reset => 'calendar_month');
             SELECT credits_account_upsert(account_id => 'loud', plan_id => 'pro');
             SELECT credits_account_upsert(account_id => 'quiet', plan_id => 'pro');",
        )
        .unwrap();
    let mut listener = connect(&url);
    listener.batch_execute("LISTEN credits_events").unwrap();

    spend(&mut writer, "loud", 80);
    assert_eq!(
        heard(&mut listener, &mut writer),
        ["usage_alert"],
        "the 80% alert wakes the listener"
    );

    writer.batch_execute("SET credits.notify = off").unwrap();
    spend(&mut writer, "quiet", 100);
    assert_eq!(
        count(
            &mut writer,
            "SELECT count(*) FROM credits.events WHERE account_id = 'quiet'"
        ),
        2,
        "with credits.notify off the 80% and 100% alerts are still written"
    );
    writer.batch_execute("RESET credits.notify").unwrap();
    spend(&mut writer, "loud", 20);
    assert_eq!(
        heard(&mut listener, &mut writer),
        ["usage_alert"],
        "only the loud 100% alert was notified: the quiet commit sent none"
    );
    assert_verify_empty(&mut writer);
}

/// Rolls back the prepared transactions an earlier failed run of these
/// tests left behind (they would hold their locks, and their database,
/// for good).
fn forget_prepared(prefix: &str) {
    let mut admin = connect(&format!("{} dbname=postgres", base_url()));
    for gid in rows(
        &mut admin,
        &format!("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE '{prefix}%'"),
    ) {
        let db: String = admin
            .query_one(
                "SELECT database::text FROM pg_prepared_xacts WHERE gid = $1",
                &[&gid],
            )
            .unwrap()
            .get(0);
        let mut there = connect(&format!("{} dbname={db}", base_url()));
        there
            .batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
            .unwrap();
    }
}

const STATE: &str =
    "SELECT concat_ws(' ', (SELECT period_used FROM credits.accounts WHERE account_id = 'a'),
                                  (SELECT count(*) FROM credits.events),
                                  (SELECT count(*) FROM credits.recharge_requests),
                                  (SELECT count(*) FROM credits.ledger),
                                  (SELECT count(*) FROM app_log))";

#[test]
fn a_transaction_that_raised_events_can_be_prepared_with_credits_notify_off() {
    forget_prepared("it-2pc-");
    let url = fresh_db("it_notify_2pc");
    let mut app = connect(&url);
    app.batch_execute(
        "SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100, reset => 'calendar_month');
         SELECT credits_pack_upsert(pack_id => 'p20', credits => 200, price => 20, currency => 'EUR');
         SELECT credits_account_upsert(account_id => 'a', plan_id => 'pro');
         SELECT credits_auto_recharge_set(account_id => 'a', enabled => true, pack => 'p20', threshold => 30,
                                          monthly_cap => 50);
         CREATE TABLE app_log (reservation_id uuid PRIMARY KEY, note text);",
    )
    .unwrap();
    let mut other = connect(&url);

    // One AI action and the app's own row in a prepared transaction; the
    // commit crosses the 80% alert and the auto-recharge threshold.
    app.batch_execute("BEGIN; SET LOCAL credits.notify = off")
        .unwrap();
    let r = try_reserve(&mut app, 85).unwrap();
    app.execute(
        "SELECT credits_commit(reservation_id => $1::text::uuid, amount => 85)",
        &[&r],
    )
    .unwrap();
    app.execute(
        "INSERT INTO app_log VALUES ($1::text::uuid, 'summary written')",
        &[&r],
    )
    .unwrap();
    app.batch_execute("PREPARE TRANSACTION 'it-2pc-1'").unwrap();
    let before = rows(&mut other, STATE);
    assert_eq!(
        before,
        ["0.000000 0 0 1 0"],
        "nothing is visible before COMMIT PREPARED"
    );
    other.batch_execute("SET lock_timeout = '300ms'").unwrap();
    let held = try_reserve(&mut other, 1).unwrap_err();
    assert_eq!(
        held, "55P03",
        "the prepared transaction still holds the account"
    );
    other.batch_execute("COMMIT PREPARED 'it-2pc-1'").unwrap();
    assert_eq!(
        rows(
            &mut other,
            "SELECT kind FROM credits.events ORDER BY event_id"
        ),
        ["usage_alert", "recharge_requested"],
        "the events were written with the action"
    );
    assert_eq!(rows(&mut other, STATE), ["85.000000 2 1 2 1"]);

    // Rolled back after PREPARE: nothing of it stays.
    app.batch_execute("BEGIN; SET LOCAL credits.notify = off")
        .unwrap();
    try_reserve(&mut app, 15).unwrap();
    app.batch_execute(
        "SELECT credits_commit(reservation_id) FROM credits.reservations WHERE status = 'pending'",
    )
    .unwrap();
    app.batch_execute("PREPARE TRANSACTION 'it-2pc-2'").unwrap();
    other.batch_execute("ROLLBACK PREPARED 'it-2pc-2'").unwrap();
    assert_eq!(rows(&mut other, STATE), ["85.000000 2 1 2 1"]);

    // With credits.notify on (the default), the same commit crossing the
    // 100% alert cannot be prepared: Postgres refuses, and the whole
    // transaction is rolled back.
    app.batch_execute("BEGIN").unwrap();
    try_reserve(&mut app, 15).unwrap();
    app.batch_execute(
        "SELECT credits_commit(reservation_id) FROM credits.reservations WHERE status = 'pending'",
    )
    .unwrap();
    let refused = app
        .batch_execute("PREPARE TRANSACTION 'it-2pc-3'")
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "0A000", "{refused}");
    assert_eq!(rows(&mut other, STATE), ["85.000000 2 1 2 1"]);
    assert_eq!(
        count(
            &mut other,
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'it-2pc-%'"
        ),
        0
    );

    // Every other write of the API can be prepared as it is (but
    // credits_maintenance, a procedure that commits its batches, which runs
    // outside any transaction block).
    let writes = [
        "SELECT credits_grant(account_id => 'a', amount => 50, kind => 'promo')",
        "SELECT credits_refund(credits_reserve(account_id => 'a', amount => 5, product => 'editor'))",
        "SELECT credits_reset(account_id => 'a')",
        "SELECT credits_plan_upsert(plan_id => 'team', allocation => 500, reset => 'billing_date')",
        "SELECT credits_account_upsert(account_id => 'b', plan_id => 'team')",
        "SELECT credits_purchase(account_id => 'a', pack => 'p20', payment_ref => 'pi_1')",
        "SELECT credits_product_upsert(product => 'images')",
        "SELECT credits_price_upsert(product => 'images', action => 'generate', unit => 'image', price => 2)",
        "SELECT credits_events_ack(ARRAY(SELECT event_id FROM credits_events_claim(consumer => 'w')))",
        "SELECT credits_recharge_fail(request_id, 'card declined') FROM credits.recharge_requests",
        "SELECT credits_events_purge(older_than => '0')",
        "SELECT credits_pack_upsert(pack_id => 'p50', credits => 500, price => 40, currency => 'EUR')",
        "SELECT credits_auto_recharge_set(account_id => 'a', enabled => false, pack => 'p20', threshold => 30)",
        "SELECT credits_account_product_set(account_id => 'a', product => 'images', enabled => false)",
        "SELECT credits_account_bind(account_id => 'a', role => 'credits_app')",
        "SELECT credits_account_unbind(account_id => 'a', role => 'credits_app', last_binding => true)",
    ];
    for (i, write) in writes.iter().enumerate() {
        app.batch_execute("BEGIN").unwrap();
        app.batch_execute(write)
            .unwrap_or_else(|e| panic!("{write}: {e}"));
        app.batch_execute(&format!("PREPARE TRANSACTION 'it-2pc-w{i}'"))
            .unwrap_or_else(|e| panic!("PREPARE after {write}: {e}"));
        other
            .batch_execute(&format!("COMMIT PREPARED 'it-2pc-w{i}'"))
            .unwrap();
    }
    assert_verify_empty(&mut other);
}

/// Reserves `amount` on account `a`; the reservation id as text (the
/// tests' client has no uuid feature), or the SQLSTATE.
fn try_reserve(client: &mut Client, amount: i32) -> Result<String, String> {
    client
        .query_one(
            "SELECT credits_reserve(account_id => 'a', amount => $1::int::numeric, product => 'editor')::text",
            &[&amount],
        )
        .map(|row| row.get(0))
        .map_err(|e| sqlstate(&e))
}
