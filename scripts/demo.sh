#!/usr/bin/env bash
# Build, install, start a private cluster under target/, load the sample SDE
# and killmails, and show stats and profile matches.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
shared=${KILLBOARD_SHARED:-$here/../shared}
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config scripts/install.sh >/dev/null
scripts/cluster.sh start
P="scripts/cluster.sh psql -X -q -v ON_ERROR_STOP=1"
$P -c "DROP EXTENSION IF EXISTS pg_killboard CASCADE" -c "CREATE EXTENSION pg_killboard"
# The server reads the SDE extract itself; make it readable to the postgres user.
chmod -R o+rX fixtures
$P -c "SELECT killboard.load_sde('$here/fixtures/sde')" >/dev/null
samples=$(mktemp); prices=$(mktemp); chmod 644 "$samples" "$prices"; echo '{}' > "$prices"
if [ -d "$shared/data/esi_killmails" ]; then
  # The ESI killmails carry no zkb values: value them from the prices that come with them
  # (the latest per type, overridden by the hand-set ones), as the sidecar would from Janice.
  python3 - "$shared/data" "$prices" > "$samples" <<'PY'
import glob, json, sys
d, prices_out = sys.argv[1], sys.argv[2]
kms = [json.load(open(f)) for f in sorted(glob.glob(d + "/esi_killmails/[0-9]*.json"))]
kms.append(json.load(open(d + "/zkb_examples/r2z2_example.json")))
print(json.dumps(kms))
sde = json.load(open(d + "/esi_killmails/sde.json"))
latest = {}
for day in sorted(sde.get("prices", {})):
    latest.update(sde["prices"][day])
latest.update(sde.get("custom_prices", {}))
json.dump(latest, open(prices_out, "w"))
PY
else
  echo "demo: $shared/data not found; using the fixture killmails"
  cp fixtures/killmails.json "$samples"
fi
[ -f sql/demo_profiles.sql ] && $P -f sql/demo_profiles.sql >/dev/null
$P -c "INSERT INTO killboard.price_cache (source, region_id, type_id, price, fetched_at, expires_at)
        SELECT 'janice', 10000002, key::int, value::numeric, now(), now() + interval '1 day'
          FROM jsonb_each_text(pg_read_file('$prices')::jsonb)
        ON CONFLICT DO NOTHING" >/dev/null
rm -f "$prices"
echo "== ingest"
$P -c "SELECT killboard.ingest_many(pg_read_file('$samples')::jsonb) AS killmails_ingested"
rm -f "$samples"
$P <<'SQL'
\echo == top alliances, all time
SELECT entity_id AS alliance, kills, losses, isk_destroyed, efficiency FROM killboard.top_entities('alliance', 'all', 'kills', 5);
\echo == one corporation over every period
SELECT p.period, s.kills, s.losses, s.isk_destroyed, s.last_kill_time
  FROM unnest(ARRAY['all','90d','30d','14d','7d','24h']) AS p(period),
       LATERAL killboard.entity_stats((SELECT entity_id FROM killboard.top_entities('corporation','all','kills',1)), 'corporation', p.period) s;
\echo == regions by ISK destroyed
SELECT r.name, s.kills, s.isk_destroyed FROM killboard.top_entities('region', 'all', 'kills', 5) s
  LEFT JOIN killboard.sde_regions r ON r.region_id = s.entity_id;
\echo == stats store
SELECT * FROM killboard.stats_summary();
SELECT count(*) AS verify_differences FROM killboard.verify_stats();
\echo == profile matches
SELECT p.name, count(m.killmail_id) AS matches, min(m.killmail_id) AS example
  FROM killboard.profiles p LEFT JOIN killboard.profile_matches m USING (profile_id)
 GROUP BY p.profile_id, p.name ORDER BY p.profile_id;
SQL
echo "demo cluster is running: make psql (stop it with scripts/cluster.sh stop)"
