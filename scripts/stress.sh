#!/usr/bin/env bash
# The long robustness run (make stress): the tests of scripts/test.sh's
# robustness tier scaled up with STRESS=1. 10k fuzz cases at the core and
# through the extension, eight writers with thousands of killmails beside
# advance/rebuild/verify, repeated kill -9 of a private cluster, and a hot
# standby. Clusters: the shared one here (port KILLBOARD_PGPORT, default
# 28817), the crash and replica tests' own from KILLBOARD_ROBUST_PORT (28860).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
export PGBIN=${PGBIN:-$(dirname "$PG_CONFIG")}
export KILLBOARD_SHARED=${KILLBOARD_SHARED:-$here/../shared}
export STRESS=1 KILLBOARD_FUZZ_CASES=${KILLBOARD_FUZZ_CASES:-10000}
[ -d "$KILLBOARD_SHARED/data" ] || echo "stress: $KILLBOARD_SHARED/data is absent; fuzz seeds come from fixtures only"

echo "== core fuzz ($KILLBOARD_FUZZ_CASES cases per property)"
cargo test -q -p killboard-core --test fuzz

echo "== install the extension and start the stress cluster"
cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null
export KILLBOARD_PGDATA="$here/target/stress-cluster" KILLBOARD_PGPORT=${KILLBOARD_PGPORT:-28817}
scripts/cluster.sh stop
rm -rf "$KILLBOARD_PGDATA"
scripts/cluster.sh start
trap 'scripts/cluster.sh stop' EXIT

echo "== concurrency, crash, fuzz and replica tests, scaled up"
export KILLBOARD_TEST_DSN="host=/tmp port=$KILLBOARD_PGPORT user=postgres dbname=postgres"
log="$here/target/stress.log"
set +e
(cd tests/integration && "$here/target/venv/bin/pytest" -q -s -p no:cacheprovider \
    test_concurrency.py test_crash.py test_fuzz.py test_replica.py) 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo "== summary"
grep -E "^(concurrency|crash|fuzz):" "$log" || true
if grep -qE "terminated by signal|PANIC" "$KILLBOARD_PGDATA/server.log"; then
  echo "stress: backend crash in the cluster log:"; grep -E "terminated by signal|PANIC" "$KILLBOARD_PGDATA/server.log"; exit 1
fi
exit "$rc"
