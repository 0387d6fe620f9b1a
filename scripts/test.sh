#!/usr/bin/env bash
# Command 2: every test of the project. Lints, #[pg_test] tests, SQL-level
# pgTAP tests and integration tests against a throwaway cluster. Exits
# non-zero if anything fails; stops the clusters it started, also on failure,
# and removes them when every test passed (CREDITS_KEEP_CLUSTER=1 keeps them).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

TEST_DIR=${CREDITS_TEST_DIR:-/tmp/credits-test}
TEST_PORT=${CREDITS_TEST_PORT:-25431}
PGRX_DATA=${CREDITS_PGRX_DATA:-/tmp/credits-pgrx}

cleanup() {
    local status=$?
    cluster_finish "$TEST_DIR" $status
    cluster_finish /tmp/credits-demo-check $status
}
trap cleanup EXIT

bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --features "pg_test integration" -- -D warnings
echo "== cargo fmt --check and cargo clippy of bench/heap_calls (the benchmark's calibration below the executor)"
(cd bench/heap_calls && cargo fmt --check && CARGO_TARGET_DIR="$PWD/../../target" cargo clippy -- -D warnings)

echo "== #[pg_test] and unit tests (cargo pgrx test)"
mkdir -p "$PGRX_DATA"
chown postgres:postgres "$PGRX_DATA"
cargo pgrx test pg15 --runas postgres --pgdata "$PGRX_DATA"

echo "== installing the extension, and the benchmark's calibration below the executor"
install_extension
install_bench_heap

echo "== the demo (command 1) runs to its end"
CREDITS_SKIP_INSTALL=1 CREDITS_DEMO_DIR=/tmp/credits-demo-check CREDITS_DEMO_PORT=$((TEST_PORT + 4)) \
    bash scripts/demo.sh > /tmp/credits-demo-check.log 2>&1 || { tail -30 /tmp/credits-demo-check.log; exit 1; }
cluster_stop /tmp/credits-demo-check
grep -q "violations" /tmp/credits-demo-check.log || { echo "the demo did not reach its end"; exit 1; }
echo "demo: ok"

# wal_level = logical: durability.rs replicates a database logically.
CREDITS_CLUSTER_CONF="wal_level = logical" cluster_start "$TEST_DIR" "$TEST_PORT"
PSQL=(psql -X -q -h 127.0.0.1 -p "$TEST_PORT" -U postgres -v ON_ERROR_STOP=1)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE credits_sql" -c "CREATE DATABASE credits"
"${PSQL[@]}" -d credits_sql -c "CREATE EXTENSION credits; CREATE EXTENSION pgtap;"

echo "== SQL-level tests (pgTAP)"
pg_prove -h 127.0.0.1 -p "$TEST_PORT" -U postgres -d credits_sql tests/sql/*.sql

# Again in a database whose sessions see the world differently: an ICU
# collation, a time zone 14 hours ahead of UTC, German dates, SQL-standard
# intervals and short floats. Periods, days and every stored figure are
# UTC and exact whatever the session's settings; nothing may depend on them.
echo "== SQL-level tests (pgTAP) again, with foreign session settings"
"${PSQL[@]}" -d postgres \
    -c "CREATE DATABASE credits_sql_foreign TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' LC_COLLATE 'C.utf8' LC_CTYPE 'C.utf8'" \
    -c "ALTER DATABASE credits_sql_foreign SET TimeZone = 'Pacific/Kiritimati'" \
    -c "ALTER DATABASE credits_sql_foreign SET DateStyle = 'German, DMY'" \
    -c "ALTER DATABASE credits_sql_foreign SET IntervalStyle = 'sql_standard'" \
    -c "ALTER DATABASE credits_sql_foreign SET extra_float_digits = -15"
"${PSQL[@]}" -d credits_sql_foreign -c "CREATE EXTENSION credits; CREATE EXTENSION pgtap;"
pg_prove -h 127.0.0.1 -p "$TEST_PORT" -U postgres -d credits_sql_foreign tests/sql/*.sql

# Again with the fast paths off (credits.fast_paths), so that every
# behaviour the files check is checked on the general path too, also in the
# common cases that the fast paths otherwise take. Left out: the files
# that check which path runs (their first line says "fast paths only").
echo "== SQL-level tests (pgTAP) again, with the fast paths off"
"${PSQL[@]}" -d postgres -c "CREATE DATABASE credits_sql_general" \
    -c "ALTER DATABASE credits_sql_general SET credits.fast_paths = off"
"${PSQL[@]}" -d credits_sql_general -c "CREATE EXTENSION credits; CREATE EXTENSION pgtap;"
pg_prove -h 127.0.0.1 -p "$TEST_PORT" -U postgres -d credits_sql_general \
    $(grep -L -m1 '^-- fast paths only' tests/sql/*.sql)

echo "== benchmark smoke runs (1 s per run, so that the benchmark, its decomposition and the profile do not rot)"
bench_smoke() {
    BENCH_SECONDS=1 BENCH_CLIENTS=2 BENCH_ROWS=200 CREDITS_SKIP_INSTALL=1 CREDITS_BENCH_PORT=$((TEST_PORT + 3)) \
        CREDITS_BENCH_DIR=/tmp/credits-bench-smoke bash scripts/bench.sh "$@" --out /tmp/credits-bench-smoke-results \
        | tail -3
}
bench_smoke
decompose_out=$(BENCH_REPEAT=2 bench_smoke --decompose) || { echo "$decompose_out"; exit 1; }
echo "$decompose_out"
# The decomposition runs A at 8 clients and B at 32, so its target lines,
# with ours' share of the floor of our data model, must be there.
for side in "A >= 0.45 x baseline A at 8" "B >= 0.5 x baseline B at 32"; do
    grep -q "^Target ours $side clients: .*; [0-9.]* of the floor of our data model" <<<"$decompose_out" \
        || { echo "bench smoke: no target line for ours $side clients with its share of the floor" >&2; exit 1; }
done
# The profile, with its perf part when perf can record here (as on the
# project's machine kind).
bench_smoke --profile

echo "== integration tests (many client connections)"
CREDITS_TEST_URL="host=127.0.0.1 port=$TEST_PORT user=postgres" CREDITS_TEST_PGDATA="$TEST_DIR/data" \
    CREDITS_TORTURE_SECONDS=${CREDITS_TORTURE_SECONDS:-20} CREDITS_MODEL_CASES=${CREDITS_MODEL_CASES:-64} \
    cargo test --features integration --test concurrency --test lock_order --test durability --test notifications --test model --test periods --test reference --test torture \
    -- --test-threads=1 --nocapture
