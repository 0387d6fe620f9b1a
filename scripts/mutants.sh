#!/usr/bin/env bash
# The mutation check of the SQL (make mutants): builds and installs the
# extension, starts a throwaway cluster and runs scripts/mutants.py, which
# prints each mutant's outcome; the output is also written to
# /tmp/credits-mutants.log. About 30-40 minutes on 2 vCPUs for the whole
# script; MUT_LINES=A-B narrows it (see scripts/mutants.py). With
# MUT_TARGET=library it mutates the fast paths' statements in the shared
# library instead (about 10 minutes). Not part of make test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

MUT_DIR=${CREDITS_MUTANTS_DIR:-/tmp/credits-mutants}
export MUT_PORT=${CREDITS_MUTANTS_PORT:-25437}

cleanup() { cluster_finish "$MUT_DIR" $?; }
trap cleanup EXIT

bash scripts/setup.sh
if [[ -z "${CREDITS_SKIP_INSTALL:-}" ]]; then
    echo "== building and installing the extension"
    install_extension --release
fi
cluster_start "$MUT_DIR" "$MUT_PORT"
python3 scripts/mutants.py | tee /tmp/credits-mutants.log
