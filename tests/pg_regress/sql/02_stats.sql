-- Kill credit in both modes, derived values, windows and writes through plain SQL.
SET client_min_messages = warning;

-- Uses the killmails left by 01_ingest. Character 1002 killed 101 (final blow) and lost 102.
SELECT entity_id, kills, losses, isk_destroyed, isk_lost, efficiency, isk_efficiency,
       kill_loss_ratio, solo_kills, solo_losses, npc_kills, npc_losses,
       last_kill_time, last_loss_time, final_blows, points, damage_dealt, damage_taken, avg_attackers
FROM killboard.entity_stats(1002, 'character', 'all');

-- Two attackers of corporation 2002 on one killmail: one kill, damage summed.
SELECT entity_id, kills, losses, isk_destroyed, final_blows, damage_dealt, damage_taken
FROM killboard.entity_stats(2002, 'corporation', 'all');

-- Every kind, one row per id, zeros for an entity with no activity.
SELECT entity_id, entity_type, kills, losses, isk_destroyed, isk_lost
FROM killboard.entity_stats_many(ARRAY[3001, 3002, 42], 'alliance', 'all') ORDER BY entity_id;
SELECT entity_id, kills, losses FROM killboard.entity_stats(500010, 'faction', 'all');
SELECT entity_id, kills, losses FROM killboard.entity_stats(587, 'ship_type', 'all');
SELECT entity_id, kills, losses, isk_destroyed FROM killboard.entity_stats(30000142, 'solar_system', 'all');

-- The stored stats equal a recomputation for every entity.
SELECT count(*) AS differences FROM killboard.verify_stats();

-- final_blow credit: only 1002's side gets the kill of 101.
SET killboard.kill_credit = 'final_blow';
SELECT killboard.rebuild_stats() > 0 AS rebuilt;
SELECT entity_id, kills FROM killboard.entity_stats_many(ARRAY[1002, 1003], 'character', 'all') ORDER BY 1;
RESET killboard.kill_credit;
SELECT killboard.rebuild_stats() > 0 AS rebuilt;
SELECT entity_id, kills FROM killboard.entity_stats_many(ARRAY[1002, 1003], 'character', 'all') ORDER BY 1;

-- Windows count from the last advance_windows(), by killmail time: a killmail one hour old is in
-- every window, one 20 days old only in 30d, 90d and all, an old one only in all.
SELECT killboard.advance_windows() IS NOT NULL AS advanced;
SELECT killboard.ingest(jsonb_build_object(
  'killmail_id', 201, 'killmail_time', to_char(now() AT TIME ZONE 'UTC' - interval '1 hour', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
  'solar_system_id', 30000142,
  'victim', jsonb_build_object('character_id', 5001, 'corporation_id', 6001, 'ship_type_id', 587),
  'attackers', jsonb_build_array(jsonb_build_object('character_id', 5002, 'corporation_id', 6002,
                                                    'final_blow', true, 'damage_done', 1)),
  'zkb', jsonb_build_object('totalValue', 10))) AS ingested;
SELECT killboard.ingest(jsonb_build_object(
  'killmail_id', 202, 'killmail_time', to_char(now() AT TIME ZONE 'UTC' - interval '20 days', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
  'solar_system_id', 30000142,
  'victim', jsonb_build_object('character_id', 5001, 'corporation_id', 6001, 'ship_type_id', 587),
  'attackers', jsonb_build_array(jsonb_build_object('character_id', 5002, 'corporation_id', 6002,
                                                    'final_blow', true, 'damage_done', 1)),
  'zkb', jsonb_build_object('totalValue', 10))) AS ingested;
SELECT p AS period, s.kills, s.losses
FROM unnest(ARRAY['all', '90d', '30d', '14d', '7d', '24h']) p,
     killboard.entity_stats(5002, 'character', p) s;

-- Plain SQL keeps stats exact: UPDATE of a value, DELETE of a killmail, a rolled-back insert.
UPDATE killboard.killmails SET total_value = 30 WHERE killmail_id = 201;
SELECT isk_destroyed FROM killboard.entity_stats(5002, 'character', '24h');
DELETE FROM killboard.killmails WHERE killmail_id = 202;
SELECT kills FROM killboard.entity_stats(5002, 'character', 'all');
BEGIN;
SELECT killboard.ingest(jsonb_build_object(
  'killmail_id', 203, 'killmail_time', '2021-01-01T00:00:00Z', 'solar_system_id', 30000142,
  'victim', jsonb_build_object('character_id', 5001, 'corporation_id', 6001, 'ship_type_id', 587),
  'attackers', jsonb_build_array(jsonb_build_object('character_id', 5002, 'final_blow', true)))) AS ingested;
SELECT kills FROM killboard.entity_stats(5002, 'character', 'all');
ROLLBACK;
SELECT kills FROM killboard.entity_stats(5002, 'character', 'all');

-- Savepoints: what a rolled-back savepoint ingested leaves no trace.
BEGIN;
SAVEPOINT a;
SELECT killboard.ingest(jsonb_build_object(
  'killmail_id', 204, 'killmail_time', '2021-01-01T00:00:00Z', 'solar_system_id', 30000142,
  'victim', jsonb_build_object('character_id', 5001, 'corporation_id', 6001, 'ship_type_id', 587),
  'attackers', jsonb_build_array(jsonb_build_object('character_id', 5002, 'final_blow', true)))) AS ingested;
ROLLBACK TO SAVEPOINT a;
COMMIT;
SELECT kills FROM killboard.entity_stats(5002, 'character', 'all');

SELECT count(*) AS differences FROM killboard.verify_stats();
