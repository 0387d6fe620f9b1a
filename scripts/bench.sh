#!/usr/bin/env bash
# The benchmark (make bench, make bench-decompose, make bench-profile):
# builds and installs the extension in release mode, starts a throwaway
# cluster (fsync and synchronous_commit on), loads the data and runs
# bench/run.py (bench/profile.py for --profile). Settings and results are
# printed and written to bench/results/. BENCH_SECONDS, BENCH_CLIENTS and
# BENCH_ROWS shorten it; BENCH_REPEAT=N runs the whole sequence N times
# (medians and ranges); BENCH_BUILD=debug uses the debug build, and
# CREDITS_SKIP_INSTALL=1 the extension as installed (the smoke run of
# scripts/test.sh: replacing the library under a running server can crash it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

BENCH_DIR=${CREDITS_BENCH_DIR:-/tmp/credits-bench}
BENCH_PORT=${CREDITS_BENCH_PORT:-25432}
SECONDS_PER_RUN=${BENCH_SECONDS:-20}
CLIENTS=${BENCH_CLIENTS:-1,8,32}
case ${BENCH_BUILD:-release} in
    release) BUILD_FLAGS=(--release) ;;
    debug) BUILD_FLAGS=() ;;
    *) echo "bench: BENCH_BUILD is release or debug, not ${BENCH_BUILD}" >&2; exit 2 ;;
esac
ROWS=${BENCH_ROWS:-10000}
REPEAT=${BENCH_REPEAT:-1}

# The first argument may name another mode: --decompose (make
# bench-decompose) or --profile (make bench-profile); the rest go to the
# Python script.
MODE=main
case "${1:-}" in
    --decompose) MODE=decompose ;;
    --profile) MODE=profile; shift ;;
esac

cleanup() { cluster_finish "$BENCH_DIR" $?; }
trap cleanup EXIT

bash scripts/setup.sh
if [[ -z "${CREDITS_SKIP_INSTALL:-}" ]]; then
    echo "== building and installing the extension (${BENCH_BUILD:-release} build)"
    install_extension "${BUILD_FLAGS[@]}"
    if [[ $MODE == decompose ]]; then
        echo "== building and installing the calibration below the executor (bench/heap_calls)"
        install_bench_heap "${BUILD_FLAGS[@]}"
    fi
fi
cluster_start "$BENCH_DIR" "$BENCH_PORT"
cat >>"$BENCH_DIR/data/postgresql.conf" <<CONF
shared_buffers = 1GB
max_wal_size = 8GB
checkpoint_timeout = 30min
fsync = on
synchronous_commit = on
CONF
if [[ $MODE == profile ]]; then
    cat >>"$BENCH_DIR/data/postgresql.conf" <<CONF
shared_preload_libraries = 'pg_cron, pg_stat_statements'
pg_stat_statements.track = all
pg_stat_statements.track_planning = on
CONF
fi
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$BENCH_DIR/data" -l "$BENCH_DIR/server.log" -w restart >/dev/null
PSQL=(psql -X -q -h 127.0.0.1 -p "$BENCH_PORT" -U postgres -v ON_ERROR_STOP=1)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE bench"
echo "== loading data"
"${PSQL[@]}" -d bench -v rows="$ROWS" -f bench/setup.sql >/dev/null
case $MODE in
    profile)
        "${PSQL[@]}" -d bench -c "CREATE EXTENSION pg_stat_statements" -c "CREATE EXTENSION pg_walinspect"
        echo "== profiling one action (${SECONDS_PER_RUN} s per run, 1 client)"
        python3 bench/profile.py --port "$BENCH_PORT" --seconds "$SECONDS_PER_RUN" --rows "$ROWS" "$@"
        exit 0 ;;
    decompose)
        "${PSQL[@]}" -d bench -c "CREATE EXTENSION credits_bench_heap"
        echo "== running the decomposition (${SECONDS_PER_RUN} s per run, A at 8 clients, B at 32, ${REPEAT} time(s))" ;;
    main)
        echo "== running (${SECONDS_PER_RUN} s per run, clients ${CLIENTS}, ${REPEAT} time(s))" ;;
esac
python3 bench/run.py --port "$BENCH_PORT" --seconds "$SECONDS_PER_RUN" --clients "$CLIENTS" --rows "$ROWS" \
    --repeat "$REPEAT" "$@"
