#!/usr/bin/env bash
# The pg_regress tier: tests/pg_regress/sql/*.sql run in order in one fresh database of an
# already running cluster (KILLBOARD_PGPORT), and their output is compared with
# tests/pg_regress/expected/. Diffs land in target/pg_regress/regression.diffs.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
regress="$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress"
out="$here/target/pg_regress"
mkdir -p "$out"
tests=$(cd "$here/tests/pg_regress/sql" && ls *.sql | sed 's/\.sql$//')
export PGHOST=${KILLBOARD_PGSOCK:-/tmp} PGPORT=${KILLBOARD_PGPORT:-28816} PGUSER=postgres
bindir=$("$PG_CONFIG" --bindir)
"$bindir/dropdb" --if-exists --force killboard_regress
"$bindir/createdb" killboard_regress
"$regress" --use-existing --dbname=killboard_regress \
  --inputdir="$here/tests/pg_regress" --outputdir="$out" \
  --bindir="$bindir" $tests
