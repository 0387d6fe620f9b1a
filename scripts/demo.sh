#!/usr/bin/env bash
# Command 1: build and install the extension, start a throwaway cluster,
# create the database `credits`, run examples/demo.sql and print the results.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

DEMO_DIR=${CREDITS_DEMO_DIR:-/tmp/credits-demo}
DEMO_PORT=${CREDITS_DEMO_PORT:-25430}

bash scripts/setup.sh
if [[ -z "${CREDITS_SKIP_INSTALL:-}" ]]; then
    echo "== building and installing the extension"
    install_extension
fi
echo "== starting a throwaway cluster in $DEMO_DIR on port $DEMO_PORT"
cluster_start "$DEMO_DIR" "$DEMO_PORT"
PSQL=(psql -X -q -h 127.0.0.1 -p "$DEMO_PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE credits"
"${PSQL[@]}" -d credits -c "CREATE EXTENSION credits"
echo "== running examples/demo.sql"
"${PSQL[@]}" -d credits -v ON_ERROR_STOP=1 -f examples/demo.sql

cat <<TXT

The cluster is still running. Connect with:
    psql -h 127.0.0.1 -p $DEMO_PORT -U postgres credits
Stop it with:
    runuser -u postgres -- $PGBIN/pg_ctl -D $DEMO_DIR/data stop
TXT
