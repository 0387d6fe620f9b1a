#!/usr/bin/env bash
# Scale benchmark of the usage views (make bench-views): a throwaway cluster
# with 10,000 accounts and 20 million ledger rows over 13 months
# (bench/usage_data.sql, about 10 minutes to load), then the time of each
# view query (the Execution Time of EXPLAIN ANALYZE, best of 5 in one
# session), with its plan written next to the results.
# BENCH_ACCOUNTS and BENCH_LEDGER_ROWS make it smaller; BENCH_REUSE=1 times
# the queries again on the data of the previous run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

DIR=${CREDITS_BENCH_DIR:-/tmp/credits-bench-views}
PORT=${CREDITS_BENCH_PORT:-25433}
ACCOUNTS=${BENCH_ACCOUNTS:-10000}
LEDGER_ROWS=${BENCH_LEDGER_ROWS:-20000000}
OUT=${BENCH_OUT:-bench/results}

cleanup() { cluster_stop "$DIR"; }
trap cleanup EXIT

bash scripts/setup.sh
install_extension --release
PSQL=(psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1)
if [[ -n "${BENCH_REUSE:-}" && -f "$DIR/data/PG_VERSION" ]]; then
    # BENCH_REUSE=1: time the queries again on the data loaded last time.
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w start >/dev/null
else
    cluster_start "$DIR" "$PORT"
    cat >>"$DIR/data/postgresql.conf" <<CONF
shared_buffers = 4GB
max_wal_size = 16GB
CONF
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w restart >/dev/null
    "${PSQL[@]}" -d postgres -c "CREATE DATABASE views"
    echo "== loading $ACCOUNTS accounts and $LEDGER_ROWS ledger rows"
    time "${PSQL[@]}" -d views -v accounts="$ACCOUNTS" -v ledger_rows="$LEDGER_ROWS" -f bench/usage_data.sql
fi

mkdir -p "$OUT"
report="$OUT/views-$(date +%Y%m%d-%H%M%S).md"
one="acct$((ACCOUNTS / 2))"
queries=(
  "summary (1 account)|SELECT * FROM credits.account_summary WHERE account_id = '$one'"
  "daily, 30 days (1 account)|SELECT * FROM credits_usage_daily('$one', current_date - 29, current_date)"
  "monthly, 12 months (1 account)|SELECT * FROM credits.usage_monthly WHERE account_id = '$one' AND month >= (date_trunc('month', now()) - interval '11 months')::date"
  "last 50 actions (1 account)|SELECT * FROM credits.actions WHERE account_id = '$one' ORDER BY created_at DESC LIMIT 50"
  "last 50 transactions (1 account)|SELECT * FROM credits.transactions WHERE account_id = '$one' ORDER BY created_at DESC LIMIT 50"
  "usage by tag, 30 days (1 account)|SELECT * FROM credits_usage_by_tag('$one', 'subject', current_date - 29, current_date)"
  "monthly report, all accounts, 1 month|SELECT * FROM credits.usage_monthly WHERE month = (date_trunc('month', now()) - interval '1 month')::date"
)
{
  echo "| query | execution time, best of 5 (ms) |"
  echo "|---|---:|"
  for q in "${queries[@]}"; do
    name=${q%%|*}; sql=${q#*|}
    best=$("${PSQL[@]}" -d views -At -c "
      DO \$\$ DECLARE j json; best float8 := 1e9; BEGIN
        FOR i IN 1..5 LOOP
          EXECUTE 'EXPLAIN (ANALYZE, FORMAT JSON) ' || \$q\$$sql\$q\$ INTO j;
          best := least(best, (j->0->>'Execution Time')::float8);
        END LOOP;
        RAISE NOTICE '%', round(best::numeric, 2);
      END \$\$;" 2>&1 | sed -n 's/.*NOTICE:  //p')
    echo "| $name | $best |"
    "${PSQL[@]}" -d views -c "EXPLAIN (ANALYZE, BUFFERS) $sql" > "$OUT/plan-$(echo "$name" | tr -c 'a-z0-9' '_').txt"
  done
} | tee "$report"
echo "plans written next to $report"
echo "the loaded data ($(du -sh "$DIR" | cut -f1)) stays in $DIR for BENCH_REUSE=1; rm -rf $DIR frees it"
