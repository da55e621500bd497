#!/usr/bin/env bash
# Every test tier, against real PostgreSQL: core unit tests, #[pg_test]s,
# multi-connection integration tests (pytest), pg_regress, profile invalidation with two
# psql sessions, and the sidecar against fake servers on 127.0.0.1.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
export KILLBOARD_SHARED=${KILLBOARD_SHARED:-$here/../shared}
[ -d "$KILLBOARD_SHARED/data" ] || echo "test: $KILLBOARD_SHARED/data is absent; tests that read it will skip"

echo "== core unit tests"
cargo test -q -p killboard-core 2>&1 | grep -E "^test result|FAILED|panicked" || true
cargo test -q -p killboard-core >/dev/null

echo "== #[pg_test] (extension inside a pgrx test cluster)"
pgdata="$here/target/pgrx-test-data"
mkdir -p "$pgdata"; chown postgres:postgres "$pgdata"
d="$here/target"; while [ "$d" != / ]; do chmod o+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done
cargo pgrx test pg15 --runas postgres --pgdata "$pgdata"

echo "== install the extension and start the test cluster"
PG_CONFIG="$PG_CONFIG" scripts/install.sh >/dev/null
export KILLBOARD_PGDATA="$here/target/test-cluster" KILLBOARD_PGPORT=28816
scripts/cluster.sh stop
rm -rf "$KILLBOARD_PGDATA"
scripts/cluster.sh start
trap 'scripts/cluster.sh stop' EXIT

echo "== integration tests (pytest, several connections)"
export KILLBOARD_TEST_DSN="host=/tmp port=$KILLBOARD_PGPORT user=postgres dbname=postgres"
(cd tests/integration && "$here/target/venv/bin/pytest" -q -p no:cacheprovider)

echo "== pg_regress (tests/pg_regress)"
scripts/pg_regress.sh

echo "== profile cache invalidation across two connections"
scripts/cluster.sh psql -X -q -c "DROP EXTENSION IF EXISTS pg_killboard CASCADE" -c "CREATE EXTENSION pg_killboard"
PSQL="$here/scripts/cluster.sh psql" bash tests/profiles_two_connections.sh

echo "== sidecar against fake servers"
bash scripts/test-sidecar.sh
echo "== all tests passed"
