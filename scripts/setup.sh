#!/usr/bin/env bash
# Installs what building and testing `credits` needs on a Debian machine, as
# root: Postgres 15 with headers, pg_cron, pgTAP, clang, cargo-pgrx 0.18.1.
# Idempotent, and a few seconds when nothing is missing.
set -euo pipefail

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PACKAGES=(postgresql-15 postgresql-server-dev-15 clang libclang-dev sudo
          postgresql-15-cron postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ "$(cargo pgrx --version 2>/dev/null || true)" != *"0.18.1"* ]]; then
    echo "setup: installing cargo-pgrx 0.18.1 (about 6 minutes)"
    cargo install cargo-pgrx --version =0.18.1 --locked
fi

# The Python examples (payment worker, usage chart) and their tests.
if ! python3 -c "import psycopg, matplotlib" 2>/dev/null; then
    echo "setup: installing psycopg and matplotlib"
    python3 -m pip install -q --root-user-action=ignore "psycopg[binary]" matplotlib
fi

if ! grep -qs "$PG_CONFIG" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    cargo pgrx init --pg15 "$PG_CONFIG"
fi
