//! Durability: pg_dump and pg_restore keep every balance and the hash chain;
//! a streaming standby serves the read API and refuses writes with 25006;
//! a logical replication subscriber reads what its publisher reads and
//! takes over from it;
//! an install of each released version upgrades to the current version with its
//! data and behaviour intact, into the same schema as a fresh install;
//! DROP EXTENSION removes the schema and its data, and installs again.

mod common;

use common::{assert_verify_empty, base_url, connect, count, empty_db, fresh_db, rows};
use postgres::Client;
use std::process::Command;

const PGBIN: &str = "/usr/lib/postgresql/15/bin";

/// A bit of everything: plans, accounts (one bound to a role, one BYOK),
/// grants, a purchase, commits, refunds, a pending hold and overage.
fn populate(client: &mut Client) {
    client
        .batch_execute(
            "SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100, reset => 'calendar_month',
                                        limit_mode => 'soft', soft_limit => 30, rollover_cap => 10);
             SELECT credits_pack_upsert(pack_id => 'p', credits => 50, price => 5);
             SELECT credits_account_upsert(account_id => 'a' || i, plan_id => 'pro') FROM generate_series(1, 5) i;
             SELECT credits_account_upsert(account_id => 'own', plan_id => 'pro', byok => true);
             SELECT credits_grant(account_id => 'a1', amount => 20, kind => 'topup');
             SELECT credits_purchase(account_id => 'a2', pack => 'p', payment_ref => 'pi_1');
             SELECT credits_commit(credits_reserve(account_id => 'a' || i, amount => 20 * i, product => 'editor'))
               FROM generate_series(1, 5) i;
             SELECT credits_refund(credits_reserve(account_id => 'a3', amount => 5, product => 'seo'));
             SELECT credits_refund(reservation_id, 7) FROM credits.reservations WHERE account_id = 'a4' AND status = 'committed';
             SELECT credits_reserve(account_id => 'a1', amount => 3, product => 'seo', ttl => '1 day');
             SELECT credits_commit(credits_reserve(account_id => 'own', amount => 50, product => 'editor'));
             SELECT credits_account_product_set(account_id => 'a3', product => 'translate', enabled => false);",
        )
        .unwrap();
    client.batch_execute(KEYED_RESERVE).unwrap();
}

/// A reserve with an idempotency key (populate's last call): run again, a
/// replay, which returns the first call's reservation under any version.
const KEYED_RESERVE: &str =
    "SELECT credits_reserve(account_id => 'a2', amount => 2, product => 'editor', \
                             idempotency_key => 'req-1', metadata => '{\"n\": 1}')::text";

/// The reservation populate's keyed reserve made: a replay must return it.
fn replay_of_keyed_reserve(client: &mut Client) -> String {
    let replayed: String = client.query_one(KEYED_RESERVE, &[]).unwrap().get(0);
    let first: String = client
        .query_one(
            "SELECT result FROM credits.idempotency_keys WHERE account_id = 'a2' AND key = 'req-1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(replayed, first, "a replay returns the first reservation");
    replayed
}

/// Binds account a1 to `role`, a member of credits_app made if missing.
fn bind_a1_to(client: &mut Client, role: &str) {
    client
        .batch_execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                 CREATE ROLE {role} IN ROLE credits_app; END IF; END $$;
             SELECT credits_account_bind('a1', '{role}');"
        ))
        .unwrap();
}

/// The only binding names `role`, and confines it to a1 (see
/// [`assert_a1_alone_reached_by`]).
fn assert_a1_alone_bound_to(client: &mut Client, role: &str) {
    assert_eq!(
        rows(
            client,
            "SELECT account_id || ' ' || role_id::text FROM credits.account_roles"
        ),
        [format!("a1 {role}")],
        "the binding names its role"
    );
    assert_a1_alone_reached_by(client, role);
}

/// `role` (bound to a1) reads, reserves and commits on a1, and a2 is
/// unknown to it: its balance, a reserve, and the commit of a hold that
/// another role made there. The reserve and the commit go through the
/// library's fast paths where the SQL version has them, so this also checks
/// their binding rule against each released version's SQL functions.
fn assert_a1_alone_reached_by(client: &mut Client, role: &str) {
    let foreign: String = client
        .query_one(
            "SELECT credits_reserve(account_id => 'a2', amount => 1, product => 'editor')::text",
            &[],
        )
        .unwrap()
        .get(0);
    client.batch_execute(&format!("SET ROLE {role}")).unwrap();
    client
        .query_one("SELECT credits_balance('a1')::text", &[])
        .unwrap();
    client
        .query_one(
            "SELECT credits_commit(credits_reserve(account_id => 'a1', amount => 1, product => 'editor'))",
            &[],
        )
        .unwrap();
    for (call, code) in [
        ("SELECT credits_balance('a2')::text", "CR002"),
        (
            "SELECT credits_reserve(account_id => 'a2', amount => 1, product => 'editor')::text",
            "CR002",
        ),
        (
            &format!("SELECT credits_commit('{foreign}')::text") as &str,
            "CR004",
        ),
    ] {
        let refused = client.query_one(call, &[]).unwrap_err();
        assert_eq!(
            common::sqlstate(&refused),
            code,
            "{role} reaches a1 alone: {call}"
        );
    }
    client.batch_execute("RESET ROLE").unwrap();
    client
        .query_one(&format!("SELECT credits_refund('{foreign}')"), &[])
        .unwrap();
}

const STATE: &str = "SELECT concat_ws(' ', account_id, balance, held, overage_held, period_used, period_overage, debt) \
                     FROM credits.accounts ORDER BY account_id";

/// The schema of the extension, as text lines sorted: functions (with their
/// body, privileges and comment), columns (with their comment),
/// constraints, indexes, triggers, policies, relations (with row security,
/// privileges, options, comment), views and the tables pg_dump keeps.
const FINGERPRINT: &str = r#"
SELECT x FROM (
  SELECT 'fn ' || p.oid::regprocedure::text || ' ' || md5(pg_get_functiondef(p.oid)) || ' '
         || coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(p.proacl) a), '') || ' '
         || coalesce(obj_description(p.oid, 'pg_proc'), '')
    FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
    JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'credits'
  UNION ALL
  SELECT 'col ' || c.relname || ' ' || a.attnum || ' ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
         || ' ' || a.attnotnull || ' ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '')
         || ' ' || coalesce(col_description(a.attrelid, a.attnum), '')
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
   WHERE c.relnamespace = 'credits'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT 'con ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
    FROM pg_constraint WHERE connamespace = 'credits'::regnamespace
  UNION ALL
  SELECT 'idx ' || pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'credits'::regnamespace
  UNION ALL
  SELECT 'trg ' || pg_get_triggerdef(oid) FROM pg_trigger
   WHERE NOT tgisinternal AND tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'credits'::regnamespace)
  UNION ALL
  SELECT 'pol ' || tablename || ' ' || policyname || ' ' || cmd || ' ' || qual FROM pg_policies WHERE schemaname = 'credits'
  UNION ALL
  SELECT 'rel ' || c.relname || ' ' || c.relkind::text || ' ' || c.relrowsecurity || ' ' || c.relforcerowsecurity || ' '
         || coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(c.relacl) a), '') || ' '
         || coalesce(c.reloptions::text, '') || ' ' || coalesce(obj_description(c.oid, 'pg_class'), '')
    FROM pg_class c WHERE c.relnamespace = 'credits'::regnamespace
  UNION ALL
  SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid) FROM pg_class c
   WHERE c.relnamespace = 'credits'::regnamespace AND c.relkind = 'v'
  UNION ALL
  SELECT 'dump ' || (SELECT string_agg(t::regclass::text, ',' ORDER BY t::regclass::text) FROM unnest(extconfig) t)
    FROM pg_extension WHERE extname = 'credits'
) s(x) ORDER BY x
"#;

fn pg_tool(tool: &str, args: &[&str]) {
    let status = Command::new(format!("{PGBIN}/{tool}"))
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(status.success(), "{tool} {args:?} failed");
}

fn conn_args() -> Vec<String> {
    // CREDITS_TEST_URL is "host=... port=... user=..."
    base_url()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .flat_map(|(k, v)| match k {
            "host" => vec!["-h".to_string(), v.to_string()],
            "port" => vec!["-p".to_string(), v.to_string()],
            "user" => vec!["-U".to_string(), v.to_string()],
            _ => vec![],
        })
        .collect()
}

#[test]
fn pg_dump_and_pg_restore_keep_every_balance_and_the_chain() {
    let url = fresh_db("it_dump");
    let mut client = connect(&url);
    populate(&mut client);
    bind_a1_to(&mut client, "it_dump_app");
    let before = rows(&mut client, STATE);
    let ledger_before = count(&mut client, "SELECT count(*) FROM credits.ledger");
    assert_verify_empty(&mut client);

    let dump = std::env::temp_dir().join("credits-it-dump.pgdump");
    let dump = dump.to_str().unwrap();
    let mut args: Vec<String> = conn_args();
    args.extend(["-Fc", "-d", "it_dump", "-f", dump].map(String::from));
    pg_tool(
        "pg_dump",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // As on another server, where pg_dumpall --roles-only made the roles
    // anew: the bound role has another OID now.
    client
        .batch_execute("DROP ROLE it_dump_app; CREATE ROLE it_dump_app IN ROLE credits_app;")
        .unwrap();
    empty_db("it_restored");
    let mut args: Vec<String> = conn_args();
    args.extend(["-d", "it_restored", "--exit-on-error", dump].map(String::from));
    pg_tool(
        "pg_restore",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let mut restored = connect(&format!("{} dbname=it_restored", base_url()));
    assert_eq!(
        rows(&mut restored, STATE),
        before,
        "balances are identical after the restore"
    );
    assert_eq!(
        count(&mut restored, "SELECT count(*) FROM credits.ledger"),
        ledger_before
    );
    // Bindings are kept by the role's name: before 0.3.5 the binding named
    // the old OID, and the role, bound to nothing, reached every account.
    assert_a1_alone_bound_to(&mut restored, "it_dump_app");
    assert_verify_empty(&mut restored);
    // And it goes on working: the chain continues, no identity collides.
    restored
        .batch_execute(
            "SELECT credits_commit(credits_reserve(account_id => 'a5', amount => 1, product => 'editor'));
             SELECT credits_grant(account_id => 'a5', amount => 1);",
        )
        .unwrap();
    assert_verify_empty(&mut restored);
}

#[test]
fn drop_extension_removes_the_schema_and_its_data_keeps_the_roles_and_installs_again() {
    let url = fresh_db("it_drop");
    let mut client = connect(&url);
    populate(&mut client);
    bind_a1_to(&mut client, "it_drop_app");
    client.batch_execute("DROP EXTENSION credits").unwrap();
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'credits'"
        ),
        0,
        "the schema and every table in it are gone"
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM pg_proc WHERE proname LIKE 'credits%'"
        ),
        0,
        "and the API functions"
    );
    assert_eq!(
        rows(
            &mut client,
            "SELECT rolname FROM pg_roles WHERE rolname IN ('credits_admin', 'credits_app', 'credits_reader')
              ORDER BY rolname"
        ),
        ["credits_admin", "credits_app", "credits_reader"],
        "the roles are the cluster's: they stay for other databases"
    );
    client.batch_execute("CREATE EXTENSION credits").unwrap();
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM credits.accounts"),
        0
    );
    populate(&mut client);
    assert_verify_empty(&mut client);
}

/// populate's switch-off holds: a reserve of that product on a3 is refused
/// (the library's reserve fast path reads the switches from the account row
/// where the SQL version has them there, else from their table), another
/// product goes on.
fn assert_switched_off(client: &mut Client, when: &str) {
    let refused = client
        .query_one(
            "SELECT credits_reserve(account_id => 'a3', amount => 1, product => 'translate')::text",
            &[],
        )
        .unwrap_err();
    assert_eq!(common::sqlstate(&refused), "CR009", "{when}");
    client
        .query_one(
            "SELECT credits_refund(credits_reserve(account_id => 'a3', amount => 1, product => 'editor'))",
            &[],
        )
        .unwrap();
}

/// Installs the released `version`, fills it, upgrades it to the current
/// version and checks data, behaviour and schema against a fresh install.
fn upgrade_from(version: &str) {
    let tag = version.replace('.', "_");
    let url = empty_db(&format!("it_upgrade_{tag}"));
    let mut client = connect(&url);
    client
        .batch_execute(&format!("CREATE EXTENSION credits VERSION '{version}'"))
        .unwrap();
    populate(&mut client);
    // What versions before 0.3.5 let in and could not roll forward from:
    // a promo expiring in year 20000, an anchor in year 20000 (which the
    // library, shared by every version, now refuses: written directly).
    client
        .batch_execute(
            "SELECT credits_grant(account_id => 'a5', amount => 1, kind => 'promo',
                                  expires_at => '20000-01-01 00:00:00+00');
             SELECT credits_account_upsert(account_id => 'far', plan_id => 'pro');
             UPDATE credits.accounts SET billing_anchor = '20000-01-15 10:00:00+00' WHERE account_id = 'far';",
        )
        .unwrap();
    // A binding (since 0.2.0), whose column becomes a regrole in 0.3.5.
    let binds = version != "0.1.0";
    if binds {
        bind_a1_to(&mut client, "it_upgrade_app");
        // The library is the current one: its fast paths' binding rule
        // must hold with the released version's SQL functions too.
        assert_a1_alone_reached_by(&mut client, "it_upgrade_app");
    }
    let keyed = replay_of_keyed_reserve(&mut client);
    assert_switched_off(&mut client, "before the upgrade");
    let before = rows(&mut client, STATE);
    let ledger_before = count(&mut client, "SELECT count(*) FROM credits.ledger");
    assert_verify_empty(&mut client);

    client
        .batch_execute("ALTER EXTENSION credits UPDATE")
        .unwrap();
    let version: String = client
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'credits'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        rows(
            &mut client,
            "SELECT products_off::text FROM credits.accounts WHERE products_off IS NOT NULL"
        ),
        ["{translate}"],
        "the upgrade copies each account's switched-off products onto its row"
    );
    assert_switched_off(&mut client, "after the upgrade, in the session that ran it");
    assert_switched_off(&mut connect(&url), "after the upgrade, in a new session");
    assert_eq!(
        rows(&mut client, STATE),
        before,
        "balances are identical after the upgrade"
    );
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM credits.ledger"),
        ledger_before
    );
    assert_verify_empty(&mut client);
    assert_eq!(
        replay_of_keyed_reserve(&mut client),
        keyed,
        "a key stored before the upgrade is replayed after it"
    );
    assert_eq!(
        rows(&mut client, STATE),
        before,
        "and the replay changes no balance"
    );
    client
        .batch_execute(
            "SELECT credits_commit(credits_reserve(account_id => 'a5', amount => 1, product => 'editor'));
             SELECT credits_reset();",
        )
        .unwrap();
    assert_verify_empty(&mut client);

    let fresh_url = fresh_db(&format!("it_fresh_{tag}"));
    let mut fresh = connect(&fresh_url);
    let upgraded = rows(&mut client, FINGERPRINT);
    let installed = rows(&mut fresh, FINGERPRINT);
    let only_upgraded: Vec<&String> = upgraded.iter().filter(|x| !installed.contains(x)).collect();
    let only_fresh: Vec<&String> = installed.iter().filter(|x| !upgraded.contains(x)).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "the upgrade script does not give the schema of a fresh install:\nonly after upgrade: {only_upgraded:#?}\nonly in a fresh install: {only_fresh:#?}"
    );

    if binds {
        assert_a1_alone_bound_to(&mut client, "it_upgrade_app");
    }

    // The upgrade repaired them (the expiry at the end of year 9999, the
    // anchor's day and time in year 9999), and both accounts roll forward
    // through the next two resets (in a transaction rolled back).
    assert_eq!(
        rows(
            &mut client,
            "SELECT concat_ws(' ', to_char(b.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'),
                                   to_char(a.billing_anchor AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'))
               FROM credits.buckets b, credits.accounts a
              WHERE b.account_id = 'a5' AND b.kind = 'promo' AND a.account_id = 'far'"
        ),
        ["9999-12-31 23:59:59.999999 9999-01-15 10:00"]
    );
    client
        .batch_execute(
            "BEGIN;
             SET LOCAL credits.now = '2100-03-20 00:00:00+00';
             SELECT credits_commit(credits_reserve(account_id => a, amount => 1, product => 'editor'))
               FROM unnest(ARRAY['a5', 'far']) a;
             SELECT credits_reset();",
        )
        .unwrap();
    assert_verify_empty(&mut client);
    client.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn the_released_0_1_0_upgrades_with_its_data_and_behaviour_intact() {
    upgrade_from("0.1.0");
}

#[test]
fn the_released_0_2_0_upgrades_with_its_data_and_behaviour_intact() {
    upgrade_from("0.2.0");
}

#[test]
fn the_released_0_3_0_upgrades_with_its_data_and_behaviour_intact() {
    upgrade_from("0.3.0");
}

#[test]
fn the_released_0_3_1_upgrades_with_its_data_and_behaviour_intact() {
    upgrade_from("0.3.1");
}

#[test]
fn the_released_0_3_2_upgrades_with_its_data_and_behaviour_intact() {
    upgrade_from("0.3.2");
}

#[test]
fn the_released_0_3_3_upgrades_with_its_data_and_behaviour_intact() {
    upgrade_from("0.3.3");
}

#[test]
fn the_released_0_3_4_upgrades_with_its_data_and_behaviour_intact() {
    upgrade_from("0.3.4");
}

/// A streaming standby of the test cluster (pg_basebackup -R), stopped and
/// removed when dropped, also when the test fails.
struct Standby {
    dir: std::path::PathBuf,
    port: u16,
}

impl Standby {
    fn start() -> Standby {
        let port: u16 = base_url()
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("port="))
            .and_then(|p| p.parse().ok())
            .expect("CREDITS_TEST_URL names a port");
        let standby = Standby {
            dir: std::env::temp_dir().join("credits-it-standby"),
            port: port + 5,
        };
        standby.stop();
        let _ = std::fs::remove_dir_all(&standby.dir);
        std::fs::create_dir_all(&standby.dir).unwrap();
        let dir = standby.dir.to_str().unwrap().to_string();
        let data = format!("{dir}/data");
        let chown = Command::new("chown")
            .args(["postgres:postgres", &dir])
            .status();
        assert!(chown.is_ok_and(|s| s.success()), "chown {dir}");
        let mut args = vec!["--".to_string(), format!("{PGBIN}/pg_basebackup")];
        args.extend(conn_args());
        args.extend(["-D", &data, "-R", "-X", "stream", "-c", "fast"].map(String::from));
        as_postgres(&args.iter().map(String::as_str).collect::<Vec<_>>());
        std::fs::OpenOptions::new()
            .append(true)
            .open(format!("{data}/postgresql.conf"))
            .and_then(|mut f| {
                use std::io::Write;
                writeln!(
                    f,
                    "port = {}\nunix_socket_directories = '{dir}'\nshared_preload_libraries = ''",
                    standby.port
                )
            })
            .unwrap();
        as_postgres(&[
            "--",
            &format!("{PGBIN}/pg_ctl"),
            "-D",
            &data,
            "-l",
            &format!("{dir}/server.log"),
            "-w",
            "start",
        ]);
        standby
    }

    fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    fn stop(&self) {
        let data = self.dir.join("data");
        if data.join("postmaster.pid").exists() {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--", &format!("{PGBIN}/pg_ctl")])
                .args([
                    "-D",
                    data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ])
                .status();
        }
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a command as the postgres user.
fn as_postgres(args: &[&str]) {
    let status = Command::new("runuser")
        .args(["-u", "postgres"])
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(status.success(), "{args:?} failed");
}

/// The read API as text, one line per query, for comparing two servers.
const READS: &[&str] = &[
    // A bucket that the next write will create is shown with a new id on
    // each read: compared without the ids.
    "SELECT jsonb_set(b, '{buckets}', (SELECT jsonb_agg(x - 'bucket_id') FROM jsonb_array_elements(b -> 'buckets') x))::text \
     FROM credits_balance('a1') b",
    "SELECT credits_balance('own')::text",
    "SELECT string_agg(s::text, ' ' ORDER BY account_id) FROM credits.account_summary s",
    "SELECT string_agg(a::text, ' ' ORDER BY reservation_id) FROM credits.actions a",
    "SELECT string_agg(t::text, ' ' ORDER BY entry_id) FROM credits.transactions t",
    "SELECT string_agg(d::text, ' ' ORDER BY d::text) FROM credits.usage_daily d",
    "SELECT string_agg(m::text, ' ' ORDER BY m::text) FROM credits.usage_monthly m",
    "SELECT string_agg(m::text, ' ' ORDER BY m::text) FROM credits.metrics m",
    "SELECT string_agg(u::text, ' ' ORDER BY u::text) FROM credits_usage_daily('a3', current_date - 1, current_date + 1) u",
    "SELECT string_agg(u::text, ' ' ORDER BY u::text) FROM credits_usage_by_tag('a1', 'n') u",
    "SELECT credits_quote(product => 'editor', action => 'chat', calls => 3)::text",
    "SELECT count(*)::text FROM credits_verify()",
];

fn reads(client: &mut Client) -> Vec<String> {
    // Next month by the pinned clock: every account is due, and reads show
    // it rolled forward without writing.
    client
        .batch_execute("SET credits.now = '2100-01-15 00:00:00+00'")
        .unwrap();
    let out = READS
        .iter()
        .map(|q| {
            client
                .query_one(*q, &[])
                .unwrap_or_else(|e| panic!("{q}: {e}"))
                .get::<_, Option<String>>(0)
                .unwrap_or_default()
        })
        .collect();
    client.batch_execute("RESET credits.now").unwrap();
    out
}

/// A hot standby serves the whole read API (balances, the views, the usage
/// functions, the quote, credits_verify), rolled forward by the clock and
/// identical to the primary's; every write path refuses with Postgres' own
/// 25006 (read-only), never XX000.
#[test]
fn a_streaming_standby_serves_every_read_and_refuses_writes_with_25006() {
    let url = fresh_db("it_standby");
    let mut primary = connect(&url);
    populate(&mut primary);
    primary
        .batch_execute(
            "SELECT credits_price_upsert(product => 'editor', action => 'chat', unit => 'call', price => 2);
             SELECT credits_commit(credits_reserve(account_id => 'a1', amount => 1, product => 'editor',
                                                   metadata => '{\"n\": \"x\"}'));",
        )
        .unwrap();
    let pending: String = primary
        .query_one(
            "SELECT credits_reserve(account_id => 'a5', amount => 1, product => 'editor')::text",
            &[],
        )
        .unwrap()
        .get(0);
    let standby = Standby::start();
    // A write after the base backup reaches the standby by streaming.
    primary
        .batch_execute("SELECT credits_grant(account_id => 'a4', amount => 3, kind => 'pack')")
        .unwrap();
    let lsn: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    let mut replica = connect(&standby.url("it_standby"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !replica
        .query_one(
            "SELECT pg_is_in_recovery() AND pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
            &[&lsn],
        )
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the standby did not replay {lsn}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let on_primary = {
        primary.batch_execute("BEGIN READ ONLY").unwrap();
        let r = reads(&mut primary);
        primary.batch_execute("COMMIT").unwrap();
        r
    };
    assert!(
        on_primary[0].contains("\"period_start\": \"2100-01-01"),
        "{}",
        on_primary[0]
    );
    assert_eq!(on_primary.last().unwrap(), "0", "credits_verify() is empty");
    for ((query, standby_read), primary_read) in
        READS.iter().zip(reads(&mut replica)).zip(&on_primary)
    {
        assert_eq!(
            &standby_read, primary_read,
            "{query}: the standby reads what the primary reads"
        );
    }

    // By this clock every account is due: credits_reset() has periods to roll.
    replica
        .batch_execute("SET credits.now = '2100-01-15 00:00:00+00'")
        .unwrap();
    for (what, sql) in [
        ("reserve", "SELECT credits_reserve(account_id => 'a5', amount => 1, product => 'editor')::text"),
        ("keyed reserve", "SELECT credits_reserve(account_id => 'a5', amount => 1, product => 'editor', idempotency_key => 'k')::text"),
        ("commit", &format!("SELECT credits_commit(reservation_id => '{pending}')::text")),
        ("refund", &format!("SELECT credits_refund(reservation_id => '{pending}')::text")),
        ("grant", "SELECT credits_grant(account_id => 'a5', amount => 1)::text"),
        ("reset", "SELECT credits_reset(account_id => 'a5')::text"),
    ] {
        let state = replica
            .query_one(sql, &[])
            .map(|_| "no error".to_string())
            .map_err(|e| format!("{}: {e}", common::sqlstate(&e)))
            .unwrap_err();
        assert!(state.starts_with("25006"), "{what} on the standby: {state}");
    }
}

/// What README, "Logical replication", tells a subscriber to run once it
/// takes over: sequences are not replicated, so the ledger's and the
/// events' identities would start again at 1 and meet the replicated rows'.
const SEQUENCES_AT_TAKEOVER: &str =
    "SELECT setval('credits.ledger_entry_id_seq', (SELECT coalesce(max(entry_id), 0) + 1 FROM credits.ledger), false),
            setval('credits.events_event_id_seq', (SELECT coalesce(max(event_id), 0) + 1 FROM credits.events), false)";

/// A logical replication subscription of database `sub` to the publication
/// `it_credits` of database `publisher`, through a slot made beforehand
/// (a subscription to its own cluster cannot make one); dropped with its
/// slot when this is dropped, also when the test fails.
struct Subscription {
    publisher: String,
    subscriber: String,
}

impl Subscription {
    fn create(publisher: &str, subscriber: &str) -> Subscription {
        let mut client = connect(publisher);
        // Two transactions: a slot is made in one that has written nothing.
        client
            .batch_execute("CREATE PUBLICATION it_credits FOR TABLES IN SCHEMA credits")
            .unwrap();
        client
            .batch_execute("SELECT pg_create_logical_replication_slot('it_credits', 'pgoutput')")
            .unwrap();
        let link = Subscription {
            publisher: publisher.to_string(),
            subscriber: subscriber.to_string(),
        };
        connect(subscriber)
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION it_credits CONNECTION '{publisher}' PUBLICATION it_credits
                   WITH (create_slot = false, slot_name = 'it_credits')"
            ))
            .unwrap();
        link
    }

    /// Waits until the subscriber has copied every table and applied
    /// everything the publisher wrote so far.
    fn catch_up(&self) {
        let mut publisher = connect(&self.publisher);
        let mut subscriber = connect(&self.subscriber);
        let lsn: String = publisher
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .unwrap()
            .get(0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let copied = count(
                &mut subscriber,
                "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'",
            ) == 0;
            let applied: bool = publisher
                .query_one(
                    "SELECT coalesce(bool_and(confirmed_flush_lsn >= $1::text::pg_lsn), false)
                       FROM pg_replication_slots WHERE slot_name = 'it_credits'",
                    &[&lsn],
                )
                .unwrap()
                .get(0);
            if copied && applied {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the subscriber did not catch up with {lsn}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut subscriber) = Client::connect(&self.subscriber, postgres::NoTls) {
            let _ = subscriber.batch_execute(
                "ALTER SUBSCRIPTION it_credits DISABLE;
                 ALTER SUBSCRIPTION it_credits SET (slot_name = NONE);
                 DROP SUBSCRIPTION it_credits;",
            );
        }
        if let Ok(mut publisher) = Client::connect(&self.publisher, postgres::NoTls) {
            let _ = publisher.batch_execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                  WHERE slot_name = 'it_credits'",
            );
        }
    }
}

/// Logical replication, the way to move a database to a new server or a
/// new major version with little downtime: a subscriber of the publication
/// of schema credits (README, Logical replication) reads exactly what the
/// publisher reads, ledger hash chain included; and once it takes over,
/// with its sequences set as the README says, every write path works on it
/// and credits_verify() stays empty.
#[test]
fn a_logical_subscriber_reads_what_the_publisher_reads_and_takes_over_once_its_sequences_are_set() {
    let publisher_url = fresh_db("it_logical_pub");
    let subscriber_url = fresh_db("it_logical_sub");
    let mut publisher = connect(&publisher_url);
    populate(&mut publisher);
    let link = Subscription::create(&publisher_url, &subscriber_url);
    // Writes after the initial copy reach the subscriber by streaming.
    publisher
        .batch_execute(
            "SELECT credits_price_upsert(product => 'editor', action => 'chat', unit => 'call', price => 2);
             SELECT credits_commit(credits_reserve(account_id => 'a1', amount => 1, product => 'editor',
                                                   metadata => '{\"n\": \"x\"}'));
             SELECT credits_grant(account_id => 'a4', amount => 3, kind => 'pack');
             SELECT credits_refund(reservation_id, 1) FROM credits.reservations
              WHERE account_id = 'a2' AND status = 'committed';",
        )
        .unwrap();
    link.catch_up();
    let mut subscriber = connect(&subscriber_url);
    let on_publisher = reads(&mut publisher);
    assert_eq!(
        on_publisher.last().unwrap(),
        "0",
        "credits_verify() is empty"
    );
    for ((query, subscriber_read), publisher_read) in
        READS.iter().zip(reads(&mut subscriber)).zip(&on_publisher)
    {
        assert_eq!(
            &subscriber_read, publisher_read,
            "{query}: the subscriber reads what the publisher reads"
        );
    }
    let chain =
        "SELECT string_agg(account_id || ':' || seq || ':' || hash, ' ' ORDER BY account_id, seq) \
                 FROM credits.ledger";
    assert_eq!(rows(&mut subscriber, chain), rows(&mut publisher, chain));

    // The subscriber takes over: the publisher stops writing, the
    // subscription goes, the sequences are set.
    drop(link);
    subscriber.batch_execute(SEQUENCES_AT_TAKEOVER).unwrap();
    subscriber
        .batch_execute(
            "SELECT credits_commit(credits_reserve(account_id => 'a' || i, amount => 1, product => 'editor'))
               FROM generate_series(1, 5) i;
             SELECT credits_grant(account_id => 'a' || i, amount => 2) FROM generate_series(1, 5) i;
             SELECT credits_refund(credits_reserve(account_id => 'a3', amount => 1, product => 'seo'));
             SELECT credits_commit(credits_reserve(account_id => 'own', amount => 5, product => 'editor'));
             SELECT credits_purchase(account_id => 'a2', pack => 'p', payment_ref => 'pi_2');
             SELECT credits_reset();
             SELECT credits_account_upsert(account_id => 'a6', plan_id => 'pro');
             SELECT credits_commit(credits_reserve(account_id => 'a6', amount => 100, product => 'editor'));",
        )
        .unwrap();
    assert_eq!(
        count(
            &mut subscriber,
            "SELECT count(*) FROM credits.events WHERE account_id = 'a6'"
        ),
        2,
        "the new account's alerts are written after the replicated events"
    );
    assert_verify_empty(&mut subscriber);
}

/// A database whose encoding is not UTF8 is refused at CREATE EXTENSION
/// with 0A000, and nothing is left of the extension there: the library
/// handles names as UTF-8 text, and there the first name beyond ASCII
/// failed with XX000.
#[test]
fn a_database_not_in_utf8_is_refused_at_create_extension() {
    let mut admin = connect(&format!("{} dbname=postgres", base_url()));
    admin
        .batch_execute("DROP DATABASE IF EXISTS it_latin1 WITH (FORCE)")
        .unwrap();
    admin
        .batch_execute(
            "CREATE DATABASE it_latin1 TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'",
        )
        .unwrap();
    let mut client = connect(&format!("{} dbname=it_latin1", base_url()));
    let refused = client
        .batch_execute("CREATE EXTENSION credits")
        .unwrap_err();
    let db = refused.as_db_error().unwrap();
    assert_eq!(
        (db.code().code(), db.message()),
        (
            "0A000",
            "the credits extension needs a database with UTF8 encoding"
        )
    );
    assert_eq!(
        db.detail(),
        Some("This database's encoding is LATIN1; credits handles names as UTF-8 text.")
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'credits'"
        ),
        0
    );
}
