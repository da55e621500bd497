#!/usr/bin/env bash
# Cross-backend cache invalidation of the profile matcher, with two live
# connections against a running cluster that has pg_killboard installed.
#
#   B caches the profiles, A changes a profile and commits, B's next match uses
#   the new filter (also inside a transaction B opened before the commit);
#   likewise for an SDE change and a full killboard.load_sde() reload; B also
#   receives NOTIFY killboard_match for a killmail A writes.
#
# Connection: PSQL (default "psql") with the usual PG* environment variables,
# e.g. PSQL="scripts/cluster.sh psql" tests/profiles_two_connections.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
PSQL=${PSQL:-psql}
FIXTURE_SDE=${FIXTURE_SDE:-$here/fixtures/sde}
KM=9100001
fail=0

a() { $PSQL -X -q -At -v ON_ERROR_STOP=1 -c "$1"; }

coproc B { $PSQL -X -q -At -v ON_ERROR_STOP=0 2>&1; }
# Run SQL in B; its output (up to a marker line) lands in OUT. Coprocess
# descriptors are not inherited by $(...) subshells, hence the global.
OUT=""
b() {
  printf '%s\n' "$1" "SELECT '__end__';" >&"${B[1]}"
  local line
  OUT=""
  while IFS= read -r -t 60 line <&"${B[0]}"; do
    [ "$line" = "__end__" ] && break
    OUT+="$line"$'\n'
  done
}
check() { # name expected actual
  if [ "$2" = "$3" ]; then echo "ok   - $1"; else echo "FAIL - $1: expected [$2], got [$3]"; fail=1; fi
}
matches_b() { b "SELECT coalesce(string_agg(p::text, ',' ORDER BY p), '-') FROM killboard.match_profiles($KM) p;"; OUT=$(printf '%s' "$OUT" | tail -1); }

cleanup() {
  a "SET killboard.match_on_ingest = off; DELETE FROM killboard.profiles WHERE name LIKE 'twoconn:%';
     DELETE FROM killboard.killmails WHERE killmail_id IN ($KM, $((KM + 1)));" >/dev/null 2>&1 || true
}
trap 'cleanup; kill "${B_PID:-0}" 2>/dev/null || true' EXIT
cleanup

a "SET client_min_messages = warning; SELECT count(*) FROM killboard.load_sde('$FIXTURE_SDE')" >/dev/null
a "SET killboard.match_on_ingest = off;
   INSERT INTO killboard.killmails (killmail_id, killmail_time, solar_system_id, victim_ship_type_id, total_value, value_source)
   VALUES ($KM, now(), 30000142, 587, 5, 'sql');
   INSERT INTO killboard.attackers (killmail_id, attacker_index, character_id, corporation_id, ship_type_id, final_blow)
   VALUES ($KM, 0, 90000002, 98000002, 587, true);"
P=$(a "INSERT INTO killboard.profiles (name, filter) VALUES ('twoconn: moving', '{\"solar_system_ids\": [30002187]}') RETURNING profile_id")

# 1. B caches (the profile does not match yet).
matches_b; check "B before the change" "-" "$OUT"
# 2. A updates and commits; B's next statement sees it.
a "UPDATE killboard.profiles SET filter = '{\"solar_system_ids\": [30000142]}' WHERE profile_id = $P"
matches_b; check "B after A's committed update" "$P" "$OUT"
# 3. B inside an open transaction that began before A's commit.
b "BEGIN;"
matches_b; check "B in a transaction, before" "$P" "$OUT"
a "UPDATE killboard.profiles SET filter = '{\"solar_system_ids\": [30002187]}' WHERE profile_id = $P"
matches_b; check "B in the same transaction after A's commit" "-" "$OUT"
b "COMMIT;"
# 4. An uncommitted change in A is not seen by B.
a "UPDATE killboard.profiles SET filter = '{\"security_band\": [\"highsec\"]}' WHERE profile_id = $P"
matches_b; check "B with a highsec profile" "$P" "$OUT"
# 5. SDE change: Jita becomes nullsec in A; B's cached system must go.
a "UPDATE killboard.sde_systems SET security = -0.5 WHERE solar_system_id = 30000142"
matches_b; check "B after A's SDE update" "-" "$OUT"
# 6. Full reload restores it.
a "SET client_min_messages = warning; SELECT count(*) FROM killboard.load_sde('$FIXTURE_SDE')" >/dev/null
matches_b; check "B after A's load_sde()" "$P" "$OUT"
# 7. Deleting the profile.
a "UPDATE killboard.profiles SET enabled = false WHERE profile_id = $P"
matches_b; check "B after A disabled it" "-" "$OUT"
a "UPDATE killboard.profiles SET enabled = true WHERE profile_id = $P"
# 8. Match on ingest: B listens, A writes a matching killmail.
b "LISTEN killboard_match;"
a "INSERT INTO killboard.killmails (killmail_id, killmail_time, solar_system_id, victim_ship_type_id, value_source)
   VALUES ($((KM + 1)), now(), 30000142, 587, 'sql');
   INSERT INTO killboard.attackers (killmail_id, attacker_index, character_id, final_blow)
   VALUES ($((KM + 1)), 0, 90000002, true);"
check "profile_matches row written at commit" "1" \
  "$(a "SELECT count(*) FROM killboard.profile_matches WHERE profile_id = $P AND killmail_id = $((KM + 1))")"
b "SELECT 1;"
notified=$(printf '%s' "$OUT" | grep -c "killboard_match.*\"killmail_id\" *: *$((KM + 1))" || true)
check "B got NOTIFY killboard_match" "1" "$notified"
b "SELECT rebuilds FROM killboard.cache_stats() WHERE cache = 'profile_index';"
rebuilds=$(printf '%s' "$OUT" | tail -1)
echo "     B rebuilt its profile index $rebuilds times"

exit $fail
