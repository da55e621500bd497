#!/usr/bin/env bash
# Integration tests of killboard-sidecar against a private PostgreSQL cluster.
#
# Assumes the extension is already installed into the server (`cargo pgrx
# install`, as `make test` does first). Starts a throwaway cluster under
# target/ on a free port (as the postgres user when run as root, since initdb
# refuses root), runs `cargo test -p killboard-sidecar`, and stops the cluster
# whatever happens. Extra arguments go to cargo test.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGBIN=$("$PG_CONFIG" --bindir)
DIR="$ROOT/target/sidecar-test-pg"
DATA="$DIR/data"

if [[ "${KILLBOARD_TEST_SQL_ONLY:-0}" != 1 && ! -f "$("$PG_CONFIG" --sharedir)/extension/pg_killboard.control" ]]; then
    echo "test-sidecar: pg_killboard is not installed; run cargo pgrx install --pg-config $PG_CONFIG first" >&2
    exit 1
fi

as_pg() {
    if [[ $(id -u) == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
        || echo $((20000 + RANDOM % 30000))
}

stop_cluster() {
    local rc=$?
    if [[ $rc != 0 && -f "$DIR/postgres.log" ]]; then
        # A backend crash resets every connection of the cluster; say so.
        grep -E "terminated by signal|PANIC|was terminated|FATAL" "$DIR/postgres.log" | tail -20 >&2 || true
    fi
    if [[ -f "$DATA/postmaster.pid" ]]; then
        as_pg "$PGBIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1 || true
    fi
}
trap stop_cluster EXIT INT TERM

stop_cluster
rm -rf "$DIR"
mkdir -p "$DIR"
[[ $(id -u) == 0 ]] && chown postgres:postgres "$DIR"
as_pg "$PGBIN/initdb" -D "$DATA" -A trust -U postgres --no-sync >"$DIR/initdb.log" 2>&1 \
    || { cat "$DIR/initdb.log" >&2; exit 1; }

PORT=${KILLBOARD_TEST_PGPORT:-$(free_port)}
as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$DIR/postgres.log" -w -t 60 \
    -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null \
    || { cat "$DIR/postgres.log" >&2; exit 1; }

export KILLBOARD_TEST_PGPORT=$PORT
export KILLBOARD_SHARED=${KILLBOARD_SHARED:-$ROOT/../shared}
cd "$ROOT"
cargo test -p killboard-sidecar "$@"
