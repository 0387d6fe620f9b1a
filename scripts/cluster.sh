# Throwaway Postgres 15 clusters for the demo, the tests and the benchmarks.
# Source this file; Postgres refuses to run as root, so the cluster runs as
# the `postgres` user, on a private port, with its socket in its own folder.
# The ports (25430-25437; the durability test's standby takes the test
# port + 5) are below Linux's ephemeral range (32768-60999): a port in that
# range can be held by a client socket in TIME_WAIT (the tests open
# thousands of connections), and the server then cannot bind it.

PGBIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PGBIN/pg_config

# cluster_start DIR PORT: a fresh cluster in DIR listening on 127.0.0.1:PORT,
# with pg_cron preloaded (its jobs run in the database `credits`) and
# prepared transactions allowed (tests/notifications.rs prepares some);
# CREDITS_CLUSTER_CONF adds lines to its postgresql.conf.
cluster_start() {
    local dir=$1 port=$2
    cluster_stop "$dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    chown postgres:postgres "$dir"
    runuser -u postgres -- "$PGBIN/initdb" -D "$dir/data" -U postgres --auth=trust \
        --encoding=UTF8 --no-locale >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log"; return 1; }
    cat >>"$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 200
shared_preload_libraries = 'pg_cron'
cron.database_name = 'credits'
cron.use_background_workers = on
max_worker_processes = 32
max_prepared_transactions = 20
${CREDITS_CLUSTER_CONF:-}
CONF
    # RUST_BACKTRACE=1 whatever the caller's environment: the tests check
    # that no Rust backtrace reaches an error's DETAIL even then (src/lib.rs).
    if ! runuser -u postgres -- env RUST_BACKTRACE=1 "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null; then
        echo "cluster: the server in $dir did not start:" >&2
        tail -20 "$dir/server.log" >&2
        return 1
    fi
}

# cluster_stop DIR: stops the cluster in DIR if it runs.
cluster_stop() {
    local dir=$1
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

# cluster_finish DIR STATUS: stops the cluster in DIR and, when STATUS (the
# script's exit status) is 0, removes DIR; after a failure, or with
# CREDITS_KEEP_CLUSTER=1, keeps it and says where its server log is.
cluster_finish() {
    local dir=$1 status=$2
    cluster_stop "$dir"
    if [[ $status -eq 0 && -z "${CREDITS_KEEP_CLUSTER:-}" ]]; then
        rm -rf "$dir"
    elif [[ -d $dir ]]; then
        echo "cluster: kept $dir (server log: $dir/server.log)" >&2
    fi
}

# install_extension [cargo pgrx install flags]: builds and installs the
# extension, and copies the released install scripts and the upgrade
# scripts next to it, so that CREATE EXTENSION credits VERSION '0.1.0' and
# ALTER EXTENSION credits UPDATE work.
install_extension() {
    cargo pgrx install "$@" --pg-config "$PG_CONFIG" >/dev/null
    cp sql/releases/*.sql sql/upgrades/*.sql "$("$PG_CONFIG" --sharedir)/extension/"
}

# install_bench_heap [cargo pgrx install flags]: builds and installs
# bench/heap_calls, the benchmark's calibration below the executor (not part
# of the extension; make bench-decompose and its smoke run use it), sharing
# the project's target folder so that pgrx is built once.
install_bench_heap() {
    (cd bench/heap_calls && CARGO_TARGET_DIR="$PWD/../../target" \
        cargo pgrx install "$@" --pg-config "$PG_CONFIG" >/dev/null)
}
