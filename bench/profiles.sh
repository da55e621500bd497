#!/usr/bin/env bash
# Filter-profile benchmark: 10k mixed profiles against real killmails.
#
# Usage (standalone, against an already-running cluster with pg_killboard installed):
#   PGBIN=/usr/lib/postgresql/15/bin KILLBOARD_PGPORT=28815 [KILLBOARD_PGSOCK=/tmp] \
#   [BENCH_DB=killboard] [KILLBOARD_SHARED=../shared] bench/profiles.sh
# (PGBIN is accepted but not needed: the script connects with psycopg.) The SDE is
# loaded with killboard.load_sde(), a server-side read: the server must run on
# this host and the postgres user must be able to read the SDE directory.
#
# Everything happens in a scratch database "<BENCH_DB>_profbench" (created with
# CREATE EXTENSION pg_killboard, dropped afterwards unless BENCH_KEEP=1), so the
# killboard database itself is not touched. It loads the SDE (the full CSV SDE
# from $KILLBOARD_SHARED/data/sde when present, else fixtures/sde), the
# killmails of fixtures/killmails.json and $KILLBOARD_SHARED/data/esi_killmails,
# creates 10 000 profiles with mixed leaves and measures, server-side:
#   - match_profiles(killmail_id) and match_profiles(jsonb): p50/p99 per call,
#     timed with clock_timestamp() around each call in a PL/pgSQL loop (the
#     loop's own cost is measured with an empty call and reported apart), the
#     best p50 of 5 consecutive blocks, and the backend's mean on-CPU time per
#     call (/proc/<pid>/schedstat; not counted when other processes hold the
#     CPUs -- only when the server runs on this host);
#   - naive evaluation of all 10k filters in SQL for the same killmails (ratio);
#   - index rebuild for 10k profiles (cache_stats().last_rebuild_ms);
#   - bulk ingest (ingest_many, 100 killmails per transaction, commit included,
#     where matching runs) with killboard.match_on_ingest off and on: the same
#     killmails under other ids, off and on alternating per batch; killmails/s,
#     the median on/off ratio of paired batches (the goal's measure), and the
#     backend's on-CPU time per killmail.
# Writes bench/results/profiles-<date>-<commit>.json and prints a Markdown table.
# Knobs: BENCH_MATCH_CALLS (default 3000), BENCH_INGEST_ROUNDS (default 8),
# BENCH_PROFILES (default 10000), BENCH_HIT (share of profile ids drawn from the
# killmails' own ids, default 0.2: about 40 matches per killmail),
# BENCH_LABEL (free text stored in the JSON), PYTHON (default target/venv/bin/python).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$here/target/venv/bin/python}
if [ ! -x "$py" ]; then py=python3; fi
if ! "$py" -c 'import psycopg' 2>/dev/null; then
  echo "bench/profiles.sh: needs python with psycopg 3 (make setup creates target/venv)" >&2
  exit 2
fi
exec "$py" "$here/bench/profiles_bench.py" "$@"
