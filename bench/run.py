#!/usr/bin/env python3
"""Runs the credits benchmark against a running cluster (scripts/bench.sh
starts one) and prints, and writes, TPS, average and p99 latency per run and
the ratio of each of our runs to the plain single-row UPDATE baseline of the
same shape, measured in the same run, interleaved at each client count so
that drift affects both sides alike.

Standard library only; pgbench and psql must be on PATH."""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# (name, script, compared with)
BASE_A = "baseline A: UPDATE one random row of 10,000"
BASE_B = "baseline B: UPDATE one hot row"
RUNS = [
    (BASE_A, "baseline_one_row.sql", None),
    ("ceiling A (not ours): two bare UPDATEs, two transactions", "ceiling_action.sql", BASE_A),
    ("ours A: reserve + commit, 10,000 accounts", "action.sql", BASE_A),
    ("ours A, quiet accounts: 2-second holds, most reserves a false alarm", "action_quiet.sql", BASE_A),
    ("ours A with an idempotency key: a new key per reserve", "action_keyed.sql", BASE_A),
    ("ours A, failed action: reserve + refund of the whole hold", "action_failed.sql", BASE_A),
    ("floor A (not ours): our action's rows by plain SQL", "floor_action.sql", BASE_A),
    ("lean floor A (not ours): the lean reference's rows by plain SQL", "lean_floor_action.sql", BASE_A),
    ("lean reference A (not ours): PL/pgSQL, no buckets", "lean_action.sql", BASE_A),
    ("minimum A with a reservation row (not ours)", "min_reservation_action.sql", BASE_A),
    (BASE_B, "baseline_hot_row.sql", None),
    ("ceiling B (not ours): two bare UPDATEs of the hot row", "ceiling_action_hot.sql", BASE_B),
    ("ours B: reserve + commit, one hot account", "action_hot.sql", BASE_B),
    ("floor B (not ours): our action's rows by plain SQL, hot", "floor:hot", BASE_B),
    ("lean reference B (not ours): PL/pgSQL, one hot account", "lean_action_hot.sql", BASE_B),
    ("minimum B with a reservation row (not ours)", "hot:min_reservation_action.sql", BASE_B),
    ("reserve alone", "reserve_only.sql", BASE_A),
    ("commit alone", "commit_only.sql", BASE_A),
    ("reserve + app INSERT + commit, one transaction", "action_in_app_txn.sql", BASE_A),
]

# make bench-decompose: what each part of our action's rows costs, at the
# floor (plain SQL, no logic), next to ours, the ceiling, the lean reference
# and the least any design can write (min_*.sql). A at 8 clients, B at 32:
# the clients of the targets. The runs taken from RUNS keep their names there.
def from_runs(*scripts):
    return [next(r for r in RUNS if r[1] == script) for script in scripts]


DECOMPOSE_A = from_runs("baseline_one_row.sql", "ceiling_action.sql", "action.sql", "floor_action.sql") + [
    ("floor A without the reserve's bucket hold", "floor:no_bucket_hold", BASE_A),
    ("floor A without any bucket write", "floor:no_buckets", BASE_A),
    ("floor A without the usage roll-up", "floor:no_rollup", BASE_A),
    ("floor A without the ledger row", "floor:no_ledger", BASE_A),
    ("floor A with a narrow account row", "floor:narrow_account", BASE_A),
    ("floor A: only the account and the reservation", "floor:account_reservation", BASE_A),
    ("... without the reservation's partial pending index", "floor:account_reservation+no_pending_index", BASE_A),
    ("... without the reservation's secondary indexes", "floor:account_reservation+pk_only", BASE_A),
    ("... with pending holds in a table of their own", "floor:account_reservation+split_holds", BASE_A),
] + from_runs("lean_floor_action.sql", "lean_action.sql", "min_reservation_action.sql") + [
    ("minimum A with a reservation row, below the executor (not ours)", "min_heap_action.sql", BASE_A),
    ("minimum A without a reservation row (not ours)", "min_action.sql", BASE_A),
]
DECOMPOSE_B = from_runs("baseline_hot_row.sql", "ceiling_action_hot.sql", "action_hot.sql", "floor:hot") + [
    ("floor B without the reserve's bucket hold", "floor:no_bucket_hold+hot", BASE_B),
    ("floor B without any bucket write", "floor:no_buckets+hot", BASE_B),
    ("floor B: only the account and the reservation", "floor:account_reservation+hot", BASE_B),
    ("lean floor B (not ours): the lean reference's rows by plain SQL, hot", "hot:lean_floor_action.sql", BASE_B),
] + from_runs("lean_action_hot.sql", "hot:min_reservation_action.sql") + [
    ("minimum B with a reservation row, below the executor (not ours)", "hot:min_heap_action.sql", BASE_B),
    ("minimum B without a reservation row (not ours)", "hot:min_action.sql", BASE_B),
]
DECOMPOSE = [(8, DECOMPOSE_A), (32, DECOMPOSE_B)]


# The variants of floor_action.sql (its hot-account run and the parts that
# make bench-decompose removes), derived from its text so that there is one
# statement to maintain. Each piece must be found as written.
FLOOR_HOLD = """), b AS (
    UPDATE bench_floor.buckets SET held = held + 10 WHERE account_id = 'acct' || :id
    RETURNING bucket_id
)"""
FLOOR_CHARGE_BUCKET = """), b AS (
    UPDATE bench_floor.buckets SET held = held - 10, balance = balance - 7
     WHERE account_id = (SELECT account_id FROM r) AND bucket_id = (SELECT bucket_id FROM r)
"""
FLOOR_RESOLVE = """WITH r AS (
    UPDATE bench_floor.reservations
       SET status = 'committed', charged = 7, draw_amounts = ARRAY[7], resolved_at = now()
     WHERE reservation_id = :r AND status = 'pending'
    RETURNING account_id, draw_buckets[1] AS bucket_id
)"""
FLOOR_RESOLVE_SPLIT = """WITH h AS (
    DELETE FROM bench_floor.holds WHERE reservation_id = :r RETURNING *
), r AS (
    INSERT INTO bench_floor.resolved (reservation_id, account_id, status, product, amount, draw_buckets,
                                      draw_amounts, charged, period_start, expires_at, created_at, resolved_at)
    SELECT reservation_id, account_id, 'committed', product, amount, draw_buckets, ARRAY[7], 7,
           period_start, expires_at, created_at, now()
      FROM h
    RETURNING account_id, draw_buckets[1] AS bucket_id
)"""
FLOOR_LEDGER = r"\), l AS \(\n    INSERT INTO bench_floor\.ledger.*?FROM r\n"
FLOOR_ROLLUP = r"\), u AS \(\n    INSERT INTO bench_floor\.usage_rollup.*?actions = u\.actions \+ 1\n"


RANDOM_ID = "\\set id random(1, :rows)\n"

# The calibration runs keep their own books too, and a broken one (say, the
# heap calls of bench/heap_calls losing an update under concurrency) must
# not give a figure: every commit of the lean tables, whatever the script,
# takes its charge off the balance in the transaction that appends its
# ledger row, so each balance is the loaded one (10,000,000,000, in
# bench/setup.sql) plus its charges; and the held amount covers at least
# the pending reservations (min_action.sql holds without a reservation row,
# and a run may end between a reserve and its commit). Counts the accounts
# that break either; added to the violations.
LEAN_CHECK = """
WITH charges AS (SELECT account_id, sum(amount) AS total FROM lean_ledger WHERE kind = 'charge' GROUP BY account_id),
     pending AS (SELECT account_id, sum(amount) AS total FROM lean_reservations WHERE status = 'pending'
                  GROUP BY account_id)
SELECT count(*) FROM lean_accounts a
  LEFT JOIN charges c ON c.account_id = a.id LEFT JOIN pending p ON p.account_id = a.id
 WHERE a.balance <> 10000000000 + coalesce(c.total, 0) OR a.held < coalesce(p.total, 0)
    OR a.held < 0 OR a.held > a.balance
"""


def floor_variant(names):
    """floor_action.sql with the variants of `names` ("+"-separated) applied
    in order."""
    text = open(os.path.join(HERE, "floor_action.sql")).read()

    def replace(old, new):
        nonlocal text
        if old not in text:
            sys.exit(f"bench: floor_action.sql no longer contains:\n{old}")
        text = text.replace(old, new)

    def drop(pattern):
        nonlocal text
        text, n = re.subn(pattern, "", text, flags=re.S)
        if n != 1:
            sys.exit(f"bench: floor_action.sql: {pattern} matched {n} times")

    for name in names.split("+"):
        if name == "hot":
            replace(RANDOM_ID, "")
            replace("'acct' || :id", "'hot'")
        elif name == "no_bucket_hold":
            replace(FLOOR_HOLD,
                    "), b AS (\n    SELECT bucket_id FROM bench_floor.buckets WHERE account_id = 'acct' || :id LIMIT 1\n)")
            replace("SET held = held - 10, balance = balance - 7\n     WHERE account_id = (SELECT",
                    "SET balance = balance - 7\n     WHERE account_id = (SELECT")
        elif name in ("no_buckets", "account_reservation"):
            replace(FLOOR_HOLD, "), b AS (\n    SELECT gen_random_uuid() AS bucket_id\n)")
            replace(FLOOR_CHARGE_BUCKET, "")
            if name == "account_reservation":
                drop(FLOOR_LEDGER)
                drop(FLOOR_ROLLUP)
        elif name == "no_rollup":
            drop(FLOOR_ROLLUP)
        elif name == "no_ledger":
            drop(FLOOR_LEDGER)
        elif name == "narrow_account":
            replace("bench_floor.accounts ", "bench_floor.narrow_accounts ")
        elif name == "no_pending_index":
            replace("bench_floor.reservations", "bench_floor.reservations_no_pending")
        elif name == "pk_only":
            replace("bench_floor.reservations", "bench_floor.reservations_pk_only")
        elif name == "split_holds":
            replace(FLOOR_RESOLVE, FLOOR_RESOLVE_SPLIT)
            replace("INSERT INTO bench_floor.reservations (", "INSERT INTO bench_floor.holds (")
        else:
            sys.exit(f"bench: no floor variant {name}")
    return text


def hot_variant(script):
    """A script of bench/ on a random row of the lean tables, run on their
    hot row (id 0) instead."""
    text = open(os.path.join(HERE, script)).read()
    if RANDOM_ID not in text:
        sys.exit(f"bench: {script} does not pick a random id")
    return text.replace(RANDOM_ID, "\\set id 0\n")


def script_path(script, logdir):
    """The file pgbench runs: a script of bench/, or a variant (floor:NAMES,
    hot:SCRIPT) written to the run's temporary folder."""
    kind, _, name = script.partition(":")
    if kind == "floor":
        text = floor_variant(name)
    elif kind == "hot":
        text = hot_variant(name)
    else:
        return os.path.join(HERE, script)
    path = os.path.join(logdir, f"{kind}_{name.removesuffix('.sql').replace('+', '_')}.sql")
    with open(path, "w") as f:
        f.write(text)
    return path


def psql_script(args, script, **variables):
    """Runs a psql script (its text) against the benchmark database, with
    psql variables; unaligned tuples only, stopping at the first error.
    Returns the finished process, for its status, stdout and stderr."""
    settings = [x for name, value in variables.items() for x in ("-v", f"{name}={value}")]
    return subprocess.run(
        ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", *settings, "-h", args.host, "-p", str(args.port),
         "-U", "postgres", "-d", args.db], input=script, capture_output=True, text=True)


def psql(args, sql):
    """The output of one SQL statement; raises if it fails."""
    out = psql_script(args, sql)
    out.check_returncode()
    return out.stdout.strip()


def p99(log_prefix):
    latencies = []
    for path in glob.glob(log_prefix + "*"):
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3:
                    latencies.append(int(fields[2]))
    if not latencies:
        return None
    latencies.sort()
    return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] / 1000.0


def pgbench(args, script, clients, logdir, tag):
    prefix = os.path.join(logdir, tag)
    cmd = ["pgbench", "-n", "-M", "prepared", "-h", args.host, "-p", str(args.port), "-U", "postgres",
           "-c", str(clients), "-j", str(min(clients, 4)), "-T", str(args.seconds),
           "-D", f"rows={args.rows}", "-f", script_path(script, logdir),
           "-l", "--log-prefix", prefix, args.db]
    out = subprocess.run(cmd, capture_output=True, text=True)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        sys.exit(f"bench: pgbench failed for {script} at {clients} clients:\n{text}")
    tps = float(re.search(r"tps = ([0-9.]+)", text).group(1))
    avg = float(re.search(r"latency average = ([0-9.]+) ms", text).group(1))
    processed = int(re.search(r"number of transactions actually processed: (\d+)", text).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", text)
    failed = int(failed.group(1)) if failed else 0
    return {"tps": tps, "avg_ms": avg, "p99_ms": p99(prefix), "processed": processed, "failed": failed}


# Autovacuum and autoanalyze work on the benchmark's tables, which competes
# with the run it overlaps: per table, how many have finished (counters)
# and which are in progress.
AUTOVACUUM_FINISHED = """
SELECT coalesce(string_agg(schemaname || '.' || relname || '=' || (autovacuum_count + autoanalyze_count), ','), '')
  FROM pg_stat_all_tables
 WHERE schemaname IN ('credits', 'public', 'bench_floor') AND autovacuum_count + autoanalyze_count > 0"""
AUTOVACUUM_RUNNING = """
SELECT coalesce(string_agg(relid::regclass::text, ','), '')
  FROM (SELECT relid FROM pg_stat_progress_vacuum UNION SELECT relid FROM pg_stat_progress_analyze) p"""


# MultiXacts: a row locked by several transactions at once (a shared row
# that each holds FOR KEY SHARE or FOR SHARE, as a foreign key's check does)
# needs one for each new set of lockers, with its members. The counters
# are those of the last checkpoint, so a run is framed by two.
MULTIXACTS = "SELECT next_multixact_id::text || ',' || next_multi_offset::text FROM pg_control_checkpoint()"


def multixacts(args):
    psql(args, "CHECKPOINT")
    made, members = psql(args, MULTIXACTS).split(",")
    return int(made), int(members)


def autovacuum_finished(args):
    text = psql(args, AUTOVACUUM_FINISHED)
    return {table: int(n) for table, n in (item.rsplit("=", 1) for item in text.split(",") if item)}


def autovacuum_overlapping(args, before):
    """The tables whose autovacuum or autoanalyze finished since `before`
    (autovacuum_finished() at the start of the run) or is still running."""
    after = autovacuum_finished(args)
    tables = {t for t, n in after.items() if n > before.get(t, 0)}
    tables |= {t for t in psql(args, AUTOVACUUM_RUNNING).split(",") if t}
    return sorted(tables)


def prepare_holds(args, needed):
    """commit alone commits holds made beforehand: the pending holds of the
    reserve-alone run, topped up to `needed`."""
    psql(args, "TRUNCATE bench_holds; SELECT setval('bench_hold_seq', 1, false);"
               "INSERT INTO bench_holds SELECT row_number() OVER (ORDER BY created_at), reservation_id "
               "FROM credits.reservations WHERE status = 'pending' AND account_id LIKE 'acct%';")
    have = int(psql(args, "SELECT count(*) FROM bench_holds"))
    if have < needed:
        psql(args, f"INSERT INTO bench_holds SELECT {have} + i, "
                   f"credits_reserve(account_id => 'acct' || (1 + i % {args.rows}), amount => 10, product => 'editor', "
                   f"ttl => '1 day') FROM generate_series(1, {needed - have}) i;")
    return max(have, needed)


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def summarize(results):
    """One row per (run, clients): the run's figures, or with repeats their
    medians, and the range of its ratio to the baseline."""
    groups = {}
    for r in results:
        groups.setdefault((r["run"], r["clients"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        ratios = [r["ratio"] for r in rs if r["ratio"] is not None]
        out[key] = {
            "tps": median([r["tps"] for r in rs]), "avg_ms": median([r["avg_ms"] for r in rs]),
            "p99_ms": median([r["p99_ms"] or 0 for r in rs]),
            "ratio": median(ratios) if ratios else None,
            "ratio_min": min(ratios) if ratios else None, "ratio_max": max(ratios) if ratios else None,
        }
    return out


def ratio_text(s):
    """A summarized ratio: the median, and its range when runs were repeated."""
    if s["ratio_min"] == s["ratio_max"]:
        return f"{s['ratio']:.2f}"
    return f"{s['ratio']:.2f} ({s['ratio_min']:.2f}-{s['ratio_max']:.2f})"


def targets(summary, repeat):
    """The targets of the benchmark issue, each next to the calibration runs
    of the same run: the ceiling (two bare UPDATEs per action), the floor of
    the lean reference's data model and of ours (their rows by plain SQL),
    and the least an implementation of the spec writes (by SQL and, in make
    bench-decompose, below the executor). With repeats, the
    verdict is on the median and every figure shows its range."""
    out = []
    for side, clients, target in (("A", 8, 0.45), ("B", 32, 0.5)):
        def find(prefix):
            return next((s for (n, c), s in summary.items() if c == clients and n.startswith(prefix)), None)

        def ratio(prefix):
            s = find(prefix)
            return ratio_text(s) if s else None
        ours = find(f"ours {side}:")
        if ours is None:
            continue
        verdict = "met" if ours["ratio"] >= target else "NOT met"
        floor = find(f"floor {side} (not ours)")
        calibration = ", ".join(f"{label} {value}" for label, value in (
            ("ceiling", ratio(f"ceiling {side} ")), ("lean floor", ratio(f"lean floor {side} ")),
            ("floor of our data model", ratio_text(floor) if floor else None),
            ("least an implementation of the spec writes", ratio(f"minimum {side} with a reservation row (")),
            ("the same below the executor", ratio(f"minimum {side} with a reservation row, below the executor"))
        ) if value is not None)
        figure = f"{ours['ratio']:.2f}"
        if repeat > 1:
            figure += f" (median of {repeat} repeats, range {ours['ratio_min']:.2f}-{ours['ratio_max']:.2f})"
        # Ours against the floor of our data model (median over median): what
        # our logic keeps of what writing our rows allows, the other bar that
        # a change of the hot path must keep (README, What bounds it).
        share = f"; {ours['ratio'] / floor['ratio']:.2f} of the floor of our data model" if floor and floor["ratio"] else ""
        out.append(f"Target ours {side} >= {target} x baseline {side} at {clients} clients: {figure}, "
                   f"{verdict}{share}" + (f" ({calibration})." if calibration else "."))
    return [""] + out if out else []


def common_arguments(seconds):
    """The arguments of run.py and profile.py: the cluster, the length of a
    run, the data size and where the results go."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--db", default="bench")
    ap.add_argument("--seconds", type=int, default=seconds)
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    return ap


def main():
    ap = common_arguments(seconds=20)
    ap.add_argument("--clients", default="1,8,32",
                    help="client counts of the main runs (--decompose runs A at 8 and B at 32)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the whole interleaved sequence this many times; report medians and ranges")
    ap.add_argument("--decompose", action="store_true",
                    help="measure the parts of our action's rows (floor variants) instead of the main runs")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    plan = DECOMPOSE if args.decompose else [(int(c), RUNS) for c in args.clients.split(",")]
    runs = [r for _, plan_runs in plan for r in plan_runs]

    settings = psql(args, "SELECT string_agg(name || ' = ' || setting || coalesce(' ' || unit, ''), ', ' ORDER BY name) "
                          "FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers', "
                          "'wal_level', 'max_wal_size', 'full_page_writes', 'checkpoint_timeout')")
    version = psql(args, "SELECT version()")
    results = []
    # pgbench's per-transaction logs (for p99) go to a folder removed after the runs.
    with tempfile.TemporaryDirectory(prefix="credits-bench-") as logdir:
        for repeat in range(args.repeat):
            if args.repeat > 1:
                print(f"  repeat {repeat + 1} of {args.repeat}", flush=True)
            for clients, plan_runs in plan:
                reserve_tps = None
                for name, script, _ in plan_runs:
                    if script == "commit_only.sql":
                        needed = int((reserve_tps or 1000) * args.seconds * 1.5) + 100
                        prepared = prepare_holds(args, needed)
                    multi_before = multixacts(args)
                    before = autovacuum_finished(args)
                    r = pgbench(args, script, clients, logdir, f"{re.sub('[:+]', '_', script)}.{clients}.{repeat}")
                    r["autovacuum"] = autovacuum_overlapping(args, before)
                    multi_after = multixacts(args)
                    r["multixacts"] = multi_after[0] - multi_before[0]
                    r["multixact_members"] = multi_after[1] - multi_before[1]
                    if script == "reserve_only.sql":
                        reserve_tps = r["tps"]
                    if script == "commit_only.sql":
                        used = int(psql(args, "SELECT last_value FROM bench_hold_seq"))
                        if used > prepared:
                            sys.exit(f"bench: commit alone ran out of holds ({used} > {prepared}); "
                                     "its figure would be wrong")
                    r.update({"run": name, "clients": clients, "repeat": repeat})
                    results.append(r)
                    vacuum = f"  (autovacuum: {', '.join(r['autovacuum'])})" if r["autovacuum"] else ""
                    multi = f"  ({r['multixacts']} MultiXacts)" if r["multixacts"] else ""
                    print(f"  {clients:>2} clients  {name:<56} {r['tps']:>9.1f} tps  avg {r['avg_ms']:.2f} ms"
                          f"  p99 {r['p99_ms'] or 0:.2f} ms{vacuum}{multi}", flush=True)

    # Each ratio is to the baseline of the same client count in the same repeat.
    by_key = {(r["run"], r["clients"], r["repeat"]): r for r in results}
    for r in results:
        base = next((b for n, _, b in runs if n == r["run"]), None)
        r["ratio"] = round(r["tps"] / by_key[(base, r["clients"], r["repeat"])]["tps"], 3) if base else None
    summary = summarize(results)

    violations = int(psql(args, "SELECT count(*) FROM credits_verify()"))
    violations += int(psql(args, LEAN_CHECK))
    failed = sum(r["failed"] for r in results)

    repeats = (f"; each run {args.repeat} times, interleaved (figures: medians; ratio ranges in parentheses)"
               if args.repeat > 1 else "")
    lines = [f"Postgres: {version}", f"Settings: {settings}",
             f"Duration: {args.seconds} s per run; clients: {', '.join(str(c) for c, _ in plan)}; "
             f"accounts/rows: {args.rows}{repeats}", "",
             "| run | clients | TPS | avg ms | p99 ms | ratio to baseline |",
             "|---|---:|---:|---:|---:|---:|"]
    order = [n for n, _, _ in runs]
    for (name, clients), s in sorted(summary.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        ratio = ratio_text(s) if s["ratio"] is not None else ""
        lines.append(f"| {name} | {clients} | {s['tps']:.0f} | {s['avg_ms']:.2f} | {s['p99_ms']:.2f} | {ratio} |")
    def which(r):
        return f"{r['clients']} clients, repeat {r['repeat'] + 1}" if args.repeat > 1 else f"{r['clients']} clients"
    overlapped = [f"{r['run']} ({which(r)}): {', '.join(r['autovacuum'])}" for r in results if r["autovacuum"]]
    lines += ["", "Autovacuum or autoanalyze of the benchmark's tables overlapped "
              + (f"{len(overlapped)} runs:" if overlapped else "no run.")]
    lines += [f"- {o}" for o in overlapped]
    shared = [f"{r['run']} ({which(r)}): {r['multixacts']}, {r['multixacts'] / max(r['processed'], 1):.2f} per "
              f"script run, {r['multixact_members'] / r['multixacts']:.1f} members on average"
              for r in results if r["multixacts"]]
    lines += ["", "MultiXacts made (rows locked by several transactions at once): "
              + (f"in {len(shared)} runs:" if shared else "none.")]
    lines += [f"- {m}" for m in shared]
    lines += ["", f"Failed transactions: {failed}. credits_verify() violations after the runs, and accounts of "
              f"the calibration's lean tables whose balance, held amount and ledger disagree: {violations}."]
    lines += targets(summary, args.repeat)
    report = "\n".join(lines)
    print()
    print(report)
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(args.out, f"bench-{stamp}.md"), "w") as f:
        f.write(report + "\n")
    with open(os.path.join(args.out, f"bench-{stamp}.json"), "w") as f:
        json.dump({"settings": settings, "version": version, "seconds": args.seconds, "repeat": args.repeat,
                   "results": results,
                   "failed": failed, "violations": violations}, f, indent=2)
    if violations or failed:
        sys.exit(f"bench: FAILED: {violations} invariant violations, {failed} failed transactions")


if __name__ == "__main__":
    main()
