#!/usr/bin/env python3
"""make bench-profile: where the time of one action goes, reproducibly.

Against a cluster started by scripts/bench.sh --profile (pg_stat_statements
preloaded, track = all, track_planning = on), it runs each script of PROFILE
at 1 client and reads pg_stat_statements after each run: per action, the
time of every top-level statement (what the client calls) and of every
nested one (the statements our fast paths and the lean reference's PL/pgSQL
run), how often each was planned, and what the top-level calls spend outside
their nested statements (starting those statements, the function calls).
Then two real-world cases at 1 client, timed by the server's clock: a
reserve + commit after a quiet spell (a false alarm, which must stay on the
fast paths) and at the month start (an account's first action after its
period ended rolls it forward; credits_maintenance() rolling others).
Then EXPLAIN (ANALYZE, BUFFERS) of every statement inside one reserve and
one commit of ours (auto_explain, after a warm-up, so the session's kept
plans are those of the runs). From the WAL of each run
(pg_walinspect): what one action writes, counted: rows inserted, updated
(HOT or with new index entries), deleted and locked, index entries, per
table and index. With perf installed and
allowed to record (--perf auto, the default), a CPU profile of ours A at 8
clients by function.

Prints the tables and writes them to bench/results/profile-<time>.md (the
plans to profile-<time>-plans.txt)."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from run import HERE, common_arguments, pgbench, psql, psql_script

# (name, script): ours, the baseline and the calibration runs of make bench.
PROFILE = [
    ("baseline A: UPDATE one random row", "baseline_one_row.sql"),
    ("ours A: reserve + commit", "action.sql"),
    ("ours A with an idempotency key", "action_keyed.sql"),
    ("ours A, failed action: reserve + refund", "action_failed.sql"),
    ("floor A: our action's rows by plain SQL", "floor_action.sql"),
    ("lean reference A: PL/pgSQL", "lean_action.sql"),
    ("minimum A with a reservation row", "min_reservation_action.sql"),
]

# Postgres functions whose inclusive share of the CPU profile is printed,
# in this order, when perf finds them.
PERF_FUNCTIONS = [
    ("SPI_execute_plan", "statements of our fast paths (SPI)"),
    ("standard_ExecutorStart", "executor start-up (all statements)"),
    ("standard_ExecutorFinish", "data-modifying CTEs run to completion"),
    ("ExecInitModifyTable", "... setting up the writes"),
    ("ExecConstraints", "CHECK and NOT NULL constraints"),
    ("stringToNode", "... of which reading expressions from the catalog text"),
    ("ExecInsertIndexTuples", "index insertion"),
    ("index_getnext_slot", "index scans"),
    ("fmgr_security_definer", "SECURITY DEFINER calls with their pinned search_path"),
    ("CommitTransactionCommand", "commits"),
    ("XLogFlush", "... WAL flush"),
    ("exec_execute_message", "everything a statement call runs (extended protocol)"),
]


def one_line(query, width=90):
    text = re.sub(r"\s+", " ", query).strip()
    return text if len(text) <= width else text[: width - 3] + "..."


def statements(args, actions):
    """The statements pg_stat_statements saw in this database since the last
    reset that ran at least once every other action: (toplevel, calls,
    plans, total ms, query)."""
    rows = psql(args, f"""
        SELECT toplevel, calls, plans, total_exec_time, regexp_replace(query, '\\s+', ' ', 'g')
          FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND calls * 2 >= {actions}
         ORDER BY toplevel DESC, total_exec_time DESC""")
    out = []
    for line in rows.splitlines():
        toplevel, calls, plans, total, query = line.split("|", 4)
        out.append((toplevel == "t", int(calls), int(plans), float(total), query))
    return out


# What one action writes, from the WAL records of its run (pg_walinspect),
# by (resource manager, record type) with "+INIT" dropped: the column each
# kind of record counts in. Other records (B-tree page splits, vacuum) count
# only in the totals.
WAL_KINDS = {
    ("Heap", "INSERT"): "rows inserted",
    ("Heap", "HOT_UPDATE"): "rows updated in place (HOT)",
    ("Heap", "UPDATE"): "rows updated with new index entries",
    ("Heap", "DELETE"): "rows deleted",
    ("Heap", "LOCK"): "rows locked",
    ("Heap2", "LOCK_UPDATED"): "rows locked",
    ("Btree", "INSERT_LEAF"): "index entries inserted",
    ("Btree", "INSERT_POST"): "index entries inserted",
    ("Heap2", "PRUNE"): "pages pruned",
    ("Transaction", "COMMIT"): "commits",
}
WAL_COLUMNS = list(dict.fromkeys(WAL_KINDS.values()))

WAL_RECORDS = """
SELECT w.resource_manager, split_part(w.record_type, '+', 1),
       coalesce(pg_filenode_relation(0, (regexp_match(w.block_ref, 'rel \\d+/\\d+/(\\d+)'))[1]::oid)::text, ''),
       count(*), sum(w.record_length - w.fpi_length), sum(w.fpi_length), count(*) FILTER (WHERE w.fpi_length > 0)
  FROM pg_get_wal_records_info('{start}', '{end}') w
 GROUP BY 1, 2, 3"""


def wal_writes(args, start, actions):
    """What the WAL between `start` and now holds, per action: the totals
    (records, bytes without and with full-page images) and the counts of
    WAL_KINDS, in all and per relation."""
    end = psql(args, "SELECT pg_current_wal_flush_lsn()")
    totals = {"records": 0, "bytes": 0, "fpi bytes": 0, "fpi": 0}
    kinds = dict.fromkeys(WAL_COLUMNS, 0)
    by_relation = {}
    for line in psql(args, WAL_RECORDS.format(start=start, end=end)).splitlines():
        rmgr, rtype, rel, count, length, fpi_length, fpi = line.split("|")
        totals["records"] += int(count)
        totals["bytes"] += int(length)
        totals["fpi bytes"] += int(fpi_length)
        totals["fpi"] += int(fpi)
        kind = WAL_KINDS.get((rmgr, rtype))
        if kind:
            kinds[kind] += int(count)
            if rel and kind != "commits":
                by_relation.setdefault(rel, {}).setdefault(kind, 0)
                by_relation[rel][kind] += int(count)
    per = {k: v / actions for k, v in totals.items()}
    return per, {k: v / actions for k, v in kinds.items()}, {
        rel: {k: v / actions for k, v in ks.items()} for rel, ks in by_relation.items()}


def wal_tables(walled):
    """The two WAL tables of the report, from (run name, wal_writes()) pairs."""
    summary = ["| run | WAL records | WAL bytes | full-page images (bytes) | "
               + " | ".join(WAL_COLUMNS) + " |", "|---|" + "---:|" * (3 + len(WAL_COLUMNS))]
    detail = ["| run | table or index | per action |", "|---|---|---|"]
    for name, (totals, kinds, by_relation) in walled:
        summary.append(f"| {name} | {totals['records']:.1f} | {totals['bytes']:.0f} | "
                       f"{totals['fpi']:.2f} ({totals['fpi bytes']:.0f}) | "
                       + " | ".join(f"{kinds[c]:.2f}" for c in WAL_COLUMNS) + " |")
        for rel in sorted(by_relation, key=lambda r: (-sum(by_relation[r].values()), r)):
            what = ", ".join(f"{kind} {by_relation[rel][kind]:.2f}" for kind in WAL_COLUMNS
                             if by_relation[rel].get(kind, 0) >= 0.005)
            if what and sum(by_relation[rel].values()) >= 0.05:
                detail.append(f"| {name} | `{rel}` | {what} |")
    return summary + [""] + detail


def per_call_table(args, logdir):
    lines = ["| run | statement | level | calls per action | plans | µs per call | µs per action |",
             "|---|---|---|---:|---:|---:|---:|"]
    summary = ["| run | actions/s at 1 client | µs per action (pgbench) | executing its statements | "
               "... in nested statements | ... outside them |", "|---|---:|---:|---:|---:|---:|"]
    walled = []
    for name, script in PROFILE:
        psql(args, "CHECKPOINT")
        psql(args, "SELECT pg_stat_statements_reset()")
        start = psql(args, "SELECT pg_current_wal_insert_lsn()")
        r = pgbench(args, script, 1, logdir, f"profile-{script}")
        actions = r["processed"]
        wal = wal_writes(args, start, actions)
        commits = wal[1]["commits"]
        if commits < 1:
            sys.exit(f"bench: the WAL of the {script} run holds {commits:.2f} commits per action, "
                     "expected at least 1: pg_walinspect did not read the run's WAL")
        walled.append((name, wal))
        found = statements(args, actions)
        if not any(top for top, *_ in found):
            sys.exit(f"bench: pg_stat_statements saw no statement of {script}; is it preloaded?")
        top_us = nested_us = 0.0
        for top, calls, plans, total, query in found:
            per_action = total * 1000 / actions
            if top:
                top_us += per_action
            else:
                nested_us += per_action
            lines.append(f"| {name} | `{one_line(query)}` | {'top' if top else 'nested'} | "
                         f"{calls / actions:.2f} | {plans} | {total * 1000 / calls:.0f} | {per_action:.0f} |")
        outside = f"{top_us - nested_us:.0f}" if nested_us else ""
        nested = f"{nested_us:.0f}" if nested_us else ""
        summary.append(f"| {name} | {r['tps']:.0f} | {r['avg_ms'] * 1000:.0f} | {top_us:.0f} | {nested} | {outside} |")
        print(f"  {name:<48} {r['tps']:>7.0f} actions/s  {top_us:>5.0f} µs per action "
              f"({nested_us:.0f} in nested statements)", flush=True)
    return summary + [""] + lines, wal_tables(walled)


# One reserve and one commit of ours with every statement inside explained,
# after ten actions in the same session: the fast paths keep their plans per
# session, generic from the first call since 0.3.4 (before, Postgres made
# them generic after five executions), and the warm-up loads the session's
# caches as in the runs.
EXPLAIN_SQL = r"""
DO $$
DECLARE r uuid;
BEGIN
    FOR i IN 1..10 LOOP
        r := credits_reserve(account_id => 'acct' || (1 + i), amount => 10, product => 'editor');
        PERFORM credits_commit(reservation_id => r, amount => 7);
    END LOOP;
END $$;
LOAD 'auto_explain';
SET auto_explain.log_min_duration = 0;
SET auto_explain.log_analyze = on;
SET auto_explain.log_buffers = on;
SET auto_explain.log_nested_statements = on;
SET auto_explain.log_level = notice;
SELECT credits_reserve(account_id => 'acct1', amount => 10, product => 'editor') AS r \gset
SELECT credits_commit(reservation_id => :'r', amount => 7);
"""


def explain(args):
    out = psql_script(args, EXPLAIN_SQL)
    if out.returncode != 0:
        sys.exit(f"bench: explaining an action failed:\n{out.stderr}")
    plans = out.stderr
    count = plans.count("Query Text:")
    if count < 4:
        sys.exit(f"bench: auto_explain reported {count} statements of one reserve + commit, expected at least 4:\n{plans}")
    return plans, count


# A reserve after a quiet spell: 400 accounts (fewer with a smaller --rows)
# each reserve and commit with a one-minute ttl, then, two minutes later (the
# clock pinned with credits.now), reserve and commit again: their next_event
# (the expiry of the committed hold) has passed with nothing due, a false
# alarm that the fast paths settle (0.3.2). Then the same accounts once
# more, next_event ahead. Timed by the server's clock; the general paths'
# calls counted.
QUIET_SQL = r"""
SET track_functions = 'all';
SELECT now()::text AS t0 \gset
SET credits.now = :'t0';
SELECT count(credits_commit(credits_reserve(account_id => 'acct' || i, amount => 1, product => 'editor',
                                            ttl => '1 minute'))) FROM generate_series(1, :n) i;
SET credits.now = :'t1';
BEGIN;
SELECT clock_timestamp() AS s \gset
SELECT count(credits_commit(credits_reserve(account_id => 'acct' || i, amount => 1, product => 'editor')))
  FROM generate_series(1, :n) i;
SELECT round(extract(epoch FROM clock_timestamp() - :'s') * 1e6 / :n) AS quiet_us,
       (SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions
         WHERE schemaname = 'credits' AND funcname IN ('_reserve', '_commit', '_roll_plan')) AS general_calls;
COMMIT;
SELECT clock_timestamp() AS s \gset
SELECT count(credits_commit(credits_reserve(account_id => 'acct' || i, amount => 1, product => 'editor')))
  FROM generate_series(1, :n) i;
SELECT round(extract(epoch FROM clock_timestamp() - :'s') * 1e6 / :n) AS ahead_us;
"""


def quiet_spell(args):
    """µs per reserve + commit on up to 400 accounts after a quiet spell (a
    false alarm) and on the same accounts again; fails if a false alarm left
    the fast paths."""
    t1 = psql(args, "SELECT (now() + interval '2 minutes')::text")
    n = min(400, args.rows)
    out = psql_script(args, QUIET_SQL, t1=t1, n=n)
    lines = [line for line in out.stdout.splitlines() if "|" in line or line.isdigit()]
    if out.returncode != 0 or len(lines) < 5:
        sys.exit(f"bench: the quiet-spell run failed:\n{out.stdout}{out.stderr}")
    quiet_us, general_calls = (int(x) for x in lines[2].split("|"))
    ahead_us = int(lines[4])
    if general_calls:
        sys.exit(f"bench: after a quiet spell, {general_calls} calls went to the general path (expected none)")
    return [f"Reserve + commit after a quiet spell (the account's next_event passed with nothing due, a false "
            f"alarm), {n} accounts in one session: {quiet_us} µs per action, none through the general path; "
            f"the same accounts again (next_event ahead): {ahead_us} µs."]


# The first action of each account after its period ended (the month start
# of calendar-month plans): up to 400 accounts (fewer with a smaller --rows)
# and as many more are created, and each reserves and commits once, with the
# clock pinned to noon on the last day of last month (credits.now), so that
# with the clock unpinned their period has ended and a reset is due. Then,
# timed by the server's clock: the first reserve + commit of the first
# accounts (the reserve rolls the account forward on the general path:
# expiry and allocation rows, the new period's bucket), the same accounts
# again, and credits_maintenance() rolling the others (as pg_cron would, at
# the month start, before their first action).
MONTH_START_SQL = r"""
SET track_functions = 'all';
SELECT ((date_trunc('month', now() AT TIME ZONE 'UTC') - interval '12 hours') AT TIME ZONE 'UTC')::text AS past \gset
SET credits.now = :'past';
SELECT count(credits_account_upsert(account_id => :'prefix' || i, plan_id => 'bench')) FROM generate_series(1, 2 * :n) i;
SELECT count(credits_commit(credits_reserve(account_id => :'prefix' || i, amount => 3, product => 'editor'), 2))
  FROM generate_series(1, 2 * :n) i;
RESET credits.now;
SELECT count(*) FROM credits.accounts WHERE account_id LIKE :'prefix' || '%' AND next_event <= now();
BEGIN;
SELECT clock_timestamp() AS s \gset
SELECT count(credits_commit(credits_reserve(account_id => :'prefix' || i, amount => 1, product => 'editor')))
  FROM generate_series(1, :n) i;
SELECT round(extract(epoch FROM clock_timestamp() - :'s') * 1e6 / :n) AS first_us,
       (SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions
         WHERE schemaname = 'credits' AND funcname = '_reserve') AS general_reserves;
COMMIT;
SELECT clock_timestamp() AS s \gset
SELECT count(credits_commit(credits_reserve(account_id => :'prefix' || i, amount => 1, product => 'editor')))
  FROM generate_series(1, :n) i;
SELECT round(extract(epoch FROM clock_timestamp() - :'s') * 1e6 / :n) AS again_us;
SELECT count(*) AS due FROM credits.accounts WHERE next_event <= now() \gset
SELECT clock_timestamp() AS s \gset
CALL credits_maintenance();
SELECT round(extract(epoch FROM clock_timestamp() - :'s') * 1e6 / :due) AS maintenance_us, :due,
       (SELECT count(*) FROM credits.accounts WHERE account_id LIKE :'prefix' || '%' AND next_event <= now()) AS left;
"""


def month_start(args):
    """µs per first reserve + commit of up to 400 accounts whose period has
    ended (rolled forward by the reserve), per later one, and per account
    rolled forward by credits_maintenance(); fails if the accounts were not
    due or maintenance left any."""
    n = min(400, args.rows)
    out = psql_script(args, MONTH_START_SQL, n=n, prefix=f"month{int(time.time())}-")
    lines = [line for line in out.stdout.splitlines() if "|" in line or line.isdigit()]
    if out.returncode != 0 or len(lines) < 8:
        sys.exit(f"bench: the month-start run failed:\n{out.stdout}{out.stderr}")
    due = int(lines[2])
    first_us, general = (int(x) for x in lines[4].split("|"))
    again_us = int(lines[6])
    maintenance_us, rolled, left = (int(x) for x in lines[7].split("|"))
    if due != 2 * n or left:
        sys.exit(f"bench: month start: {due} of {2 * n} accounts were due, {left} left after credits_maintenance()")
    return [f"The first reserve + commit of an account after its period ended (the month start of a calendar-month "
            f"plan), {n} accounts in one session: {first_us} µs per action ({general} reserves rolled their "
            f"account forward on the general path); the same accounts again: {again_us} µs. credits_maintenance() "
            f"rolling {rolled} due accounts forward before their first action: {maintenance_us} µs per account."]


def perf_can_record(logdir):
    """Whether `perf record -a` works here (perf installed, and access to
    the perf events of every process: root, or perf_event_paranoid <= 0)."""
    if shutil.which("perf") is None:
        return False
    probe = subprocess.run(["perf", "record", "-a", "-q", "-o", os.path.join(logdir, "probe.data"), "--", "true"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return probe.returncode == 0


def perf_profile(args, logdir):
    """ours A at 8 clients under `perf record -a -g`: the inclusive share of
    the CPU of the postgres processes in PERF_FUNCTIONS."""
    data = os.path.join(logdir, "perf.data")
    rec = subprocess.Popen(["perf", "record", "-a", "-g", "-o", data, "--", "sleep", str(args.seconds)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = pgbench(args, "action.sql", 8, logdir, "profile-perf")
    if rec.wait() != 0:
        sys.exit("bench: perf record failed; run with --perf no")
    report = subprocess.run(
        ["perf", "report", "-i", data, "--stdio", "--children", "--sort", "sym", "--comm", "postgres",
         "-g", "none", "--percentage", "relative"], capture_output=True, text=True).stdout
    share = {}
    for line in report.splitlines():
        m = re.match(r"\s*([0-9.]+)%\s+[0-9.]+%\s+\[[.k]\]\s+(\S+)", line)
        if m and m.group(2) not in share:
            share[m.group(2)] = float(m.group(1))
    lines = [f"CPU of the postgres processes during ours A at 8 clients ({r['tps']:.0f} actions/s under perf), "
             "inclusive, by function:", "", "| function | what | share |", "|---|---|---:|"]
    for fn, what in PERF_FUNCTIONS:
        if fn in share:
            lines.append(f"| `{fn}` | {what} | {share[fn]:.1f}% |")
    if len(lines) == 4:
        sys.exit("bench: perf found none of the Postgres functions it looks for")
    return lines


def main():
    ap = common_arguments(seconds=10)
    ap.add_argument("--perf", choices=["auto", "yes", "no"], default="auto",
                    help="profile ours A at 8 clients with perf (auto: when perf can record here)")
    args = ap.parse_args()

    version = psql(args, "SELECT version()")
    with tempfile.TemporaryDirectory(prefix="credits-profile-") as logdir:
        table, wal = per_call_table(args, logdir)
        perf = []
        if args.perf == "yes" or args.perf == "auto" and perf_can_record(logdir):
            perf = [""] + perf_profile(args, logdir)
        elif args.perf == "auto":
            perf = ["", "perf cannot record on this machine (not installed, or no access to perf events): "
                        "no CPU profile."]
    quiet = quiet_spell(args) + month_start(args)
    plans, count = explain(args)
    violations = int(psql(args, "SELECT count(*) FROM credits_verify()"))

    stamp = time.strftime("%Y%m%d-%H%M%S")
    plans_file = os.path.join(args.out, f"profile-{stamp}-plans.txt")
    lines = [f"Postgres: {version}", f"Duration: {args.seconds} s per run, 1 client, prepared statements.", "",
             "µs per action (pgbench): the client's latency, everything included. Executing its statements: "
             "pg_stat_statements' execution time (track = all) of the statements the client sends; it leaves out "
             "each statement's executor start-up and end, the protocol and the commit. Of that, in nested "
             "statements: the statements the functions run (SPI, PL/pgSQL); outside them: the rest of the calls, "
             "including the nested statements' start-up and end.", ""] + table + ["", *quiet] + [
             "", "What one action writes, from the WAL of its run (pg_walinspect), per action: every row written, "
             "locked or pruned and every index entry inserted. Full-page images follow the CHECKPOINT before each "
             "run (the first change of each page after it), so they depend on the run's length; WAL bytes leave "
             "them out.", ""] + wal + perf + [
        "", f"EXPLAIN (ANALYZE, BUFFERS) of the {count} statements of one reserve + commit of ours: {plans_file}",
        f"credits_verify() violations after the runs: {violations}."]
    report = "\n".join(lines)
    print()
    print(report)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"profile-{stamp}.md"), "w") as f:
        f.write(report + "\n")
    with open(plans_file, "w") as f:
        f.write(plans)
    if violations:
        sys.exit(f"bench: FAILED: {violations} invariant violations")


if __name__ == "__main__":
    main()
