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

MUT_TARGET=library mutates the SQL that the library's fast paths run
instead (src/fast_reserve.rs, src/fast_commit.rs: statements kept in the
shared library, which the install script does not hold). Each mutant is a
copy of the installed library with the same operators changed in those
statements' bytes, kept to the same length (a shorter replacement padded
with spaces, a longer one taking spaces next to it, or left out when there
are none), installed under a name of its own; an extension version of its
own, whose functions name that copy, runs the pgTAP files with the fast
paths on. Statements for databases at SQL versions before 0.3.5 (the
product switches read from their table) are left out: pgTAP runs on the
current version only. Each line printed is an outcome, the statement's
number in the library (a part of a statement that begins a line with
SELECT, UPDATE, INSERT or WITH counts as one), its first line, the
replacement and the mutated line.

Standard library only; psql and pg_prove must be on PATH.
MUT_PORT: the cluster's port; MUT_JOBS: mutants tested at once (2);
MUT_BASE: the script to mutate (the installed default version's);
MUT_LINES=A-B: only mutants of those lines (of those statements, with
MUT_TARGET=library); MUT_SURVIVORS=LOG: only the mutants that survived in
an earlier run's output (the same base script)."""

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


def version_name(slot):
    """The extension version (and database, and library copy) of a slot's
    mutant, named for this run's process, so that two runs (on two clusters
    of one installation) never install each other's mutants."""
    return f"mutant{os.getpid()}x{slot}"


def judge(version, script, runs):
    """Installs `script` as extension version `version` in a fresh database
    and runs the pgTAP files of each (files, PGOPTIONS) of `runs`: killed
    when one fails, SURVIVED, or invalid when it does not install."""
    db = f"credits_{version}"
    with open(f"{SHARE}/credits--{version}.sql", "w") as f:
        f.write(script)
    subprocess.run(PSQL + ["-c", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True, check=True)
    subprocess.run(PSQL + ["-c", f"CREATE DATABASE {db}"], capture_output=True, check=True)
    try:
        made = subprocess.run(PSQL + ["-d", db, "-c", f"CREATE EXTENSION credits VERSION '{version}'; "
                                      "CREATE EXTENSION pgtap;"], capture_output=True)
        if made.returncode != 0:
            return "invalid"
        prove = ["pg_prove", "-h", "127.0.0.1", "-p", PORT, "-U", "postgres", "-d", db]
        for files, options in runs:
            run = subprocess.run(prove + files, capture_output=True, timeout=600,
                                 env=dict(os.environ, PGOPTIONS=options))
            if run.returncode != 0:
                return "killed"
        return "SURVIVED"
    finally:
        subprocess.run(PSQL + ["-c", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)


def test(text, site, slot):
    """The outcome of one mutant of the install script, the fast paths on
    and then off."""
    start, end, replacement = site[:3]
    return judge(version_name(slot), text[:start] + replacement + text[end:],
                 ((TESTS, ""), (GENERAL, "-c credits.fast_paths=off")))


LIBDIR = subprocess.run([PG_CONFIG, "--pkglibdir"], capture_output=True, text=True,
                        check=True).stdout.strip()
# A statement of the fast paths starts at the beginning of a line (of the
# library's printable text) with one of these; a line that does not look
# like SQL (a Rust message stored next to them) is never mutated.
STATEMENT = re.compile(r"^(?:SELECT|UPDATE|INSERT|WITH)\b", re.M)
SQL_LINE = re.compile(r"\$\d|credits\.|^\s*(?:AND|OR|WHERE|SET|SELECT|FROM|JOIN|LEFT|RETURNING|UPDATE|INSERT"
                      r"|WITH|VALUES|ON|ORDER|LIMIT|CASE|ELSE|WHEN|END|\)|,)")
NOT_SQL = re.compile(r"assert|precondition|`|Layout|isize")


def library_statements(data):
    """(offset, text) of each statement that the library's fast paths run:
    the SQL-looking runs of printable bytes that are not pieces of sql/*.sql
    (the library also holds those, for the schema generator; never run)."""
    files = "\n".join(open(f).read() for f in sorted(
        os.path.join("sql", f) for f in os.listdir("sql") if f.endswith(".sql")))
    out = []
    for run in re.finditer(rb"[\t\n\x20-\x7e]{40,}", data):
        text = run.group().decode()
        if "credits." not in text or text in files:
            continue
        starts = [m.start() for m in STATEMENT.finditer(text)]
        for i, start in enumerate(starts):
            stmt = text[start:starts[i + 1] if i + 1 < len(starts) else len(text)]
            # For databases at SQL versions before 0.3.5 only.
            if "credits.account_products ap" in stmt:
                continue
            out.append((run.start() + start, stmt))
    return out


def library_sites(data):
    """Every (offset in the library, new bytes, replacement, statement number,
    the statement's first line, the mutated line, length of the bytes replaced)."""
    out = []
    for number, (offset, stmt) in enumerate(library_statements(data), 1):
        mask = code_mask(stmt)
        for pattern, replacement in OPS:
            for m in re.finditer(pattern, stmt):
                if not all(mask[m.start():m.end()]):
                    continue
                line_start = stmt.rfind("\n", 0, m.start()) + 1
                line_end = stmt.find("\n", m.end())
                line = stmt[line_start:line_end if line_end >= 0 else len(stmt)]
                if not SQL_LINE.search(line) or NOT_SQL.search(line):
                    continue
                start, end = m.start(), m.end()
                extra = len(replacement) - (end - start)
                if extra < 0:
                    new = replacement + " " * -extra
                elif extra == 0:
                    new = replacement
                elif stmt[end:end + extra] == " " * extra:
                    new, end = replacement, end + extra
                elif stmt[start - extra:start] == " " * extra:
                    new, start = replacement, start - extra
                else:
                    continue
                first = stmt.strip().split("\n")[0].strip()
                out.append((offset + start, new.encode(), replacement, number, first, line.strip(), end - start))
    return sorted(out)


def test_library(data, script, site, slot):
    """The outcome of one mutant of the library, the fast paths on."""
    offset, new, length = site[0], site[1], site[6]
    assert len(new) == length
    version = version_name(slot)
    library = f"credits_{version}"
    # A new file under the name, so that a backend still running the last
    # mutant keeps the copy it loaded.
    with open(f"{LIBDIR}/{library}.so.new", "wb") as f:
        f.write(data[:offset] + new + data[offset + length:])
    os.chmod(f"{LIBDIR}/{library}.so.new", 0o755)
    os.replace(f"{LIBDIR}/{library}.so.new", f"{LIBDIR}/{library}.so")
    return judge(version, script.replace("'MODULE_PATHNAME'", f"'$libdir/{library}'"), ((TESTS, ""),))


def main():
    version = re.search(r"^default_version = '(.*)'", open(f"{SHARE}/credits.control").read(), re.M).group(1)
    base = os.environ.get("MUT_BASE") or f"{SHARE}/credits--{version}.sql"
    text = open(base).read()
    library = os.environ.get("MUT_TARGET") == "library"
    if library:
        base = f"{LIBDIR}/credits.so"
        data = open(base, "rb").read()
        todo = library_sites(data)
        check = lambda site, slot: test_library(data, text, site, slot)
    else:
        todo = sites(text)
        check = lambda site, slot: test(text, site, slot)
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
                running[pool.submit(check, site, slot)] = (site, slot)
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
        for path in (f"{SHARE}/credits--{version_name(slot)}.sql", f"{LIBDIR}/credits_{version_name(slot)}.so"):
            if os.path.exists(path):
                os.remove(path)
    print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
