#!/usr/bin/env python3
"""The mutation check of the extension's SQL (make mutants; scripts/mutants.sh
starts the cluster): does the pgTAP suite notice when the SQL is wrong?

Each mutant is the installed install script with one operator changed in
code, never in a comment or a string literal (<= and <, >= and >, <> to =,
+ and -, IS NULL and IS NOT NULL, greatest and least, AND and OR, a NOT
taken out, true and false). It is installed as an extension version of its
own in a fresh database, and the pgTAP files run against it as make test
runs them: all of them, then, with credits.fast_paths off, all but those
that check which path runs (their first line says "fast paths only").
A mutant that no file fails "survives": either a behaviour that no test checks, or a change that alters nothing (a
pre-check that only decides whether a validator runs, a bound that no
value reaches). Each line printed is an outcome, the mutated line's number
in the script, the object it belongs to, the replacement and the line.

Standard library only; psql and pg_prove must be on PATH.
MUT_PORT: the cluster's port; MUT_JOBS: mutants tested at once (2);
MUT_BASE: the script to mutate (the installed default version's);
MUT_LINES=A-B: only mutants of those lines; MUT_SURVIVORS=LOG: only the
mutants that survived in an earlier run's output (the same base script)."""

import concurrent.futures as cf
import os
import re
import subprocess
import sys

PG_CONFIG = "/usr/lib/postgresql/15/bin/pg_config"
SHARE = subprocess.run([PG_CONFIG, "--sharedir"], capture_output=True, text=True,
                       check=True).stdout.strip() + "/extension"
PORT = os.environ.get("MUT_PORT", "25437")
TESTS = sorted(os.path.join("tests/sql", f) for f in os.listdir("tests/sql") if f.endswith(".sql"))
# As scripts/test.sh: the files whose first line says "fast paths only"
# are not run with the fast paths off.
GENERAL = [t for t in TESTS if not open(t).readline().startswith("-- fast paths only")]
PSQL = ["psql", "-h", "127.0.0.1", "-p", PORT, "-U", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1"]

OPS = [
    (r" <= ", " < "), (r" < ", " <= "), (r" >= ", " > "), (r" > ", " >= "),
    (r" <> ", " = "),
    (r" \+ ", " - "), (r" - ", " + "),
    (r"IS NULL", "IS NOT NULL"), (r"IS NOT NULL", "IS NULL"),
    (r"\bgreatest\(", "least("), (r"\bleast\(", "greatest("),
    (r" AND ", " OR "), (r" OR ", " AND "),
    (r"\bNOT (?!NULL)", ""),
    (r"\btrue\b", "false"), (r"\bfalse\b", "true"),
]
OWNER = re.compile(r"^\s*(?:CREATE (?:OR REPLACE )?(?:FUNCTION|PROCEDURE|VIEW|TABLE|TRIGGER|POLICY"
                   r"|(?:UNIQUE )?INDEX)\s+(?:IF NOT EXISTS\s+)?([\w.\"]+))")


def code_mask(text):
    """For each character, whether it is code: not in a comment or a '...' literal."""
    mask = [True] * len(text)
    i, n = 0, len(text)
    while i < n:
        if text.startswith("/*", i):
            j = text.find("*/", i)
            j = n if j < 0 else j + 2
        elif text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
        elif text[i] == "'":
            j = i + 1
            while j < n and (text[j] != "'" or text.startswith("''", j)):
                j += 2 if text.startswith("''", j) else 1
            j = min(j + 1, n)
        else:
            i += 1
            continue
        mask[i:j] = [False] * (j - i)
        i = j
    return mask


def sites(text):
    """Every (start, end, replacement, line number, object, line) to mutate."""
    mask = code_mask(text)
    lines = text.split("\n")
    owners, owner = [], "?"
    for line in lines:
        m = OWNER.match(line)
        owner = m.group(1) if m else owner
        owners.append(owner)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    out = []
    for pattern, replacement in OPS:
        for m in re.finditer(pattern, text):
            if all(mask[m.start():m.end()]):
                lineno = text.count("\n", 0, m.start())
                out.append((m.start(), m.end(), replacement, lineno + 1, owners[lineno],
                            lines[lineno].strip()))
    return sorted(out)


def test(text, site, slot):
    """The outcome of one mutant: killed, SURVIVED, or invalid (not installable)."""
    start, end, replacement = site[:3]
    # Named for this run's process, so that two runs (on two clusters of
    # one installation) never install each other's mutants.
    version = f"mutant{os.getpid()}x{slot}"
    db = f"credits_{version}"
    with open(f"{SHARE}/credits--{version}.sql", "w") as f:
        f.write(text[:start] + replacement + text[end:])
    subprocess.run(PSQL + ["-c", f"DROP DATABASE IF EXISTS {db}"], capture_output=True, check=True)
    subprocess.run(PSQL + ["-c", f"CREATE DATABASE {db}"], capture_output=True, check=True)
    try:
        made = subprocess.run(PSQL + ["-d", db, "-c", f"CREATE EXTENSION credits VERSION '{version}'; "
                                      "CREATE EXTENSION pgtap;"], capture_output=True)
        if made.returncode != 0:
            return "invalid"
        prove = ["pg_prove", "-h", "127.0.0.1", "-p", PORT, "-U", "postgres", "-d", db]
        for files, options in ((TESTS, ""), (GENERAL, "-c credits.fast_paths=off")):
            run = subprocess.run(prove + files, capture_output=True, timeout=600,
                                 env=dict(os.environ, PGOPTIONS=options))
            if run.returncode != 0:
                return "killed"
        return "SURVIVED"
    finally:
        subprocess.run(PSQL + ["-c", f"DROP DATABASE IF EXISTS {db}"], capture_output=True)


def main():
    version = re.search(r"^default_version = '(.*)'", open(f"{SHARE}/credits.control").read(), re.M).group(1)
    base = os.environ.get("MUT_BASE") or f"{SHARE}/credits--{version}.sql"
    text = open(base).read()
    todo = sites(text)
    if os.environ.get("MUT_SURVIVORS"):
        kept = set()
        for line in open(os.environ["MUT_SURVIVORS"]):
            fields = line.rstrip("\n").split("\t")
            if fields[0] == "SURVIVED":
                kept.add((int(fields[1]), fields[3], fields[4]))
        todo = [s for s in todo if (s[3], s[2].strip() or "(removed)", s[5]) in kept]
    if os.environ.get("MUT_LINES"):
        low, high = map(int, os.environ["MUT_LINES"].split("-"))
        todo = [s for s in todo if low <= s[3] <= high]
    jobs = int(os.environ.get("MUT_JOBS", "2"))
    print(f"{len(todo)} mutants of {base}", flush=True)
    counts = {}
    free = list(range(jobs))
    with cf.ThreadPoolExecutor(jobs) as pool:
        running = {}
        queue = iter(todo)
        while True:
            for site in queue if free else ():
                slot = free.pop()
                running[pool.submit(test, text, site, slot)] = (site, slot)
                if not free:
                    break
            if not running:
                break
            done, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for future in done:
                site, slot = running.pop(future)
                free.append(slot)
                outcome = future.result()
                counts[outcome] = counts.get(outcome, 0) + 1
                print(f"{outcome}\t{site[3]}\t{site[4]}\t{site[2].strip() or '(removed)'}\t{site[5]}", flush=True)
    for slot in range(jobs):
        if os.path.exists(f"{SHARE}/credits--mutant{os.getpid()}x{slot}.sql"):
            os.remove(f"{SHARE}/credits--mutant{os.getpid()}x{slot}.sql")
    print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
