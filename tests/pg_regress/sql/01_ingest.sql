-- Ingest of each accepted shape, idempotent re-delivery, and the rows it writes.
CREATE EXTENSION pg_killboard;
SET client_min_messages = warning;

CREATE TEMP TABLE src (n int PRIMARY KEY, km jsonb NOT NULL);
INSERT INTO src VALUES
-- A zKillboard API element: ESI fields plus zkb values.
(1, '{"killmail_id": 101, "killmail_time": "2020-01-01T10:00:00Z", "solar_system_id": 30000142,
  "victim": {"character_id": 1001, "corporation_id": 2001, "alliance_id": 3001,
             "ship_type_id": 587, "damage_taken": 900,
             "items": [{"item_type_id": 2488, "flag": 27, "quantity_destroyed": 1, "singleton": 0},
                       {"item_type_id": 3520, "flag": 5, "quantity_dropped": 40, "singleton": 0}]},
  "attackers": [
    {"character_id": 1002, "corporation_id": 2002, "alliance_id": 3002, "ship_type_id": 587,
     "damage_done": 600, "final_blow": true, "security_status": 0.5},
    {"character_id": 1003, "corporation_id": 2002, "alliance_id": 3002, "ship_type_id": 670,
     "damage_done": 300, "final_blow": false, "security_status": -1.0}],
  "zkb": {"totalValue": 1500000.50, "points": 3, "npc": false, "solo": false, "awox": false}}'),
-- An R2Z2 package: the killmail under "esi", values under "zkb".
(2, '{"killmail_id": 102, "hash": "abc", "sequence_id": 7,
  "esi": {"killmail_id": 102, "killmail_time": "2020-01-02T10:00:00Z", "solar_system_id": 30000142,
          "victim": {"character_id": 1002, "corporation_id": 2002, "ship_type_id": 670, "damage_taken": 50},
          "attackers": [{"character_id": 1001, "corporation_id": 2001, "alliance_id": 3001,
                         "ship_type_id": 587, "damage_done": 50, "final_blow": true}]},
  "zkb": {"totalValue": 250000, "points": 1, "solo": true, "npc": false}}'),
-- A RedisQ package, killed by an NPC faction.
(3, '{"package": {"killID": 103,
  "killmail": {"killmail_id": 103, "killmail_time": "2020-01-03T10:00:00Z", "solar_system_id": 30002187,
               "victim": {"character_id": 1003, "corporation_id": 2002, "alliance_id": 3002,
                          "ship_type_id": 587, "damage_taken": 10},
               "attackers": [{"faction_id": 500010, "ship_type_id": 670, "damage_done": 10, "final_blow": true}]},
  "zkb": {"totalValue": 1000, "points": 1, "npc": true, "solo": false}}}');

SELECT n, killboard.ingest(km) FROM src ORDER BY n;

SELECT killmail_id, killmail_time, solar_system_id, victim_character_id, victim_alliance_id,
       total_value, points, solo, npc
FROM killboard.killmails ORDER BY killmail_id;
SELECT killmail_id, character_id, corporation_id, faction_id, damage_done, final_blow
FROM killboard.attackers ORDER BY killmail_id, character_id NULLS LAST;
SELECT killmail_id, item_type_id, flag, quantity_destroyed, quantity_dropped
FROM killboard.items ORDER BY killmail_id, item_type_id;

-- Re-delivering everything changes nothing and counts nothing.
SELECT killboard.ingest_many(jsonb_agg(km ORDER BY n)) AS changed FROM src;
SELECT count(*) AS killmails FROM killboard.killmails;

-- A re-delivery with a higher value is one change.
SELECT killboard.ingest_many(jsonb_build_array(
         jsonb_set(km, '{zkb,totalValue}', '2000000'))) AS changed
FROM src WHERE n = 1;
SELECT killmail_id, total_value FROM killboard.killmails WHERE killmail_id = 101;
