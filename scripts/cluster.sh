#!/usr/bin/env bash
# A private PostgreSQL 15 cluster under target/, run by the postgres OS user
# (initdb refuses root). Usage: cluster.sh start|stop|status|psql [args]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGDATA=${KILLBOARD_PGDATA:-$here/target/demo-cluster}
PORT=${KILLBOARD_PGPORT:-28815}
SOCK=${KILLBOARD_PGSOCK:-/tmp}
as_pg() { if [ "$(id -un)" = postgres ]; then "$@"; else sudo -u postgres "$@"; fi; }
case "${1:-}" in
  start)
    mkdir -p "$(dirname "$PGDATA")"
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
      mkdir -p "$PGDATA"; chown postgres:postgres "$PGDATA"; chmod 700 "$PGDATA"
      # The folders above must be traversable by postgres.
      d="$PGDATA"; while [ "$d" != / ]; do d=$(dirname "$d"); chmod o+x "$d" 2>/dev/null || true; done
      as_pg "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres >/dev/null
      cat >> "$PGDATA/postgresql.conf" <<CONF
port = $PORT
unix_socket_directories = '$SOCK'
listen_addresses = '127.0.0.1'
shared_preload_libraries = 'pg_cron'
cron.database_name = 'killboard'
max_connections = 60
fsync = on
CONF
    fi
    if ! as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
      as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w start >/dev/null
    fi
    as_pg "$PGBIN/psql" -h "$SOCK" -p "$PORT" -U postgres -d postgres -Atqc \
      "SELECT 1 FROM pg_database WHERE datname = 'killboard'" | grep -q 1 || \
      as_pg "$PGBIN/createdb" -h "$SOCK" -p "$PORT" -U postgres killboard
    ;;
  stop)
    if [ -s "$PGDATA/PG_VERSION" ]; then as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true; fi
    ;;
  status) as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status ;;
  psql) shift; exec "$PGBIN/psql" -h "$SOCK" -p "$PORT" -U postgres -d killboard "$@" ;;
  *) echo "usage: $0 start|stop|status|psql" >&2; exit 2 ;;
esac
