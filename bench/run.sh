#!/usr/bin/env bash
# pg_killboard benchmarks, side by side in one run: the killboard tables with
# stats off (plain-insert baseline), pg_killboard with stats on, and the seed
# design (a PL/pgSQL row trigger, $KILLBOARD_SHARED/bench/seed_reference.sql).
#
# Builds the extension in release mode into a private relocated PostgreSQL tree
# (target/pg; the system install is shared with other clusters and is left
# alone), starts a private cluster with the settings below, and runs
# bench/bench.py, which writes bench/results/<date>-<commit>.{json,md} and
# refreshes the "Benchmarks" section of README.md.
#
# Scale knobs (environment):
#   BENCH_QUICK=1         small sizes, a run in < 5 min
#   BENCH_N               killmails for the bulk ingest (default 200000; quick 20000)
#   BENCH_CLIENTS         pgbench clients for the single-killmail test (default "1 4")
#   BENCH_HOT_CLIENTS     writers in the hot-entity test (default "4 8")
#   BENCH_DURATION        seconds per pgbench run (default 20; quick 5)
#   BENCH_BACKFILL_N      killmails for the rebuild_stats() test (default 2000000; quick 200000)
#   BENCH_PORT            cluster port (default 28830)
#   BENCH_KEEP=1          leave the cluster running afterwards
#   BENCH_ONLY="reads windows"  bulk ingest plus the named measures (single hot
#                         reads windows backfill big profiles); README untouched
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export KILLBOARD_SHARED=${KILLBOARD_SHARED:-$(cd "$here/.." && pwd)/shared}
P="$here/target/pg"
PGBIN="$P/usr/lib/postgresql/15/bin"
PORT=${BENCH_PORT:-28830}
PGDATA="$here/target/bench-cluster"

# 1. Private PostgreSQL tree: a copy of the system PostgreSQL 15 (relocatable),
#    made again when the system's is another version or has gained pg_cron
#    since (a copy from before an upgrade would not start with this config).
sys_pg=/usr/lib/postgresql/15
if [ -x "$PGBIN/pg_config" ] && { [ "$("$PGBIN/postgres" --version)" != "$("$sys_pg/bin/postgres" --version)" ] ||
     { [ -f "$sys_pg/lib/pg_cron.so" ] && [ ! -f "$P$sys_pg/lib/pg_cron.so" ]; }; }; then
  echo "bench: the system PostgreSQL changed since target/pg was made; making it again"
  rm -rf "$P"
fi
if [ ! -x "$PGBIN/pg_config" ]; then
  echo "bench: creating the private PostgreSQL tree in target/pg"
  mkdir -p "$P/usr/lib/postgresql" "$P/usr/share/postgresql"
  cp -a "$sys_pg" "$P/usr/lib/postgresql/"
  cp -a /usr/share/postgresql/15 "$P/usr/share/postgresql/"
fi

# 2. Release build, installed into the private tree only.
echo "bench: building pg_killboard (release) into target/pg"
cargo pgrx install --release --pg-config "$PGBIN/pg_config" >target/bench-build.log 2>&1 || {
  tail -30 target/bench-build.log; exit 1; }

# 3. A fresh cluster with the same settings for every contender. The cluster is
#    recreated each run so no state leaks between runs.
stop_cluster() { PGBIN=$PGBIN KILLBOARD_PGDATA=$PGDATA KILLBOARD_PGPORT=$PORT scripts/cluster.sh stop; }
stop_cluster
rm -rf "$PGDATA"
PGBIN=$PGBIN KILLBOARD_PGDATA=$PGDATA KILLBOARD_PGPORT=$PORT scripts/cluster.sh start
# Settings (identical for all contenders):
#  - synchronous_commit = off: measure the CPU cost of the write paths, not the
#    disk's fsync latency (this machine's disk is shared and noisy); fsync stays on.
#  - shared_buffers 1GB, work_mem 64MB, maintenance_work_mem 512MB: the working
#    sets (stats, indexes) fit in memory, as on a production killboard.
#  - max_wal_size 8GB, checkpoint_timeout 30min: no forced checkpoint mid-measure;
#    each measure starts after an explicit CHECKPOINT.
#  - autovacuum stays on (as in production).
cat >>"$PGDATA/postgresql.conf" <<'CONF'
shared_buffers = 1GB
work_mem = 64MB
maintenance_work_mem = 512MB
synchronous_commit = off
max_wal_size = 8GB
checkpoint_timeout = 30min
max_connections = 60
track_io_timing = off
CONF
sudo -u postgres "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w restart >/dev/null
[ "${BENCH_KEEP:-0}" = 1 ] || trap stop_cluster EXIT

# 4. The measures.
export PGBIN BENCH_PORT=$PORT
"$here/target/venv/bin/python" "$here/bench/bench.py"
