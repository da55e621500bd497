-- A stored killmail as the matcher sees it: one row. security is real in the
-- table; rounding keeps 0.45 at 0.45. NULL flags are derived by the matcher, as
-- stats derive them. Attackers and items come as one two-dimensional array
-- each (one row per attacker or item), built by ARRAY(subquery): this runs per
-- match, and an aggregate per column cost more to start than to run. Order
-- does not matter to matching.
SELECT k.solar_system_id, k.constellation_id, k.region_id,
       round(k.security::numeric, 6)::float8 AS security,
       k.victim_character_id, k.victim_corporation_id, k.victim_alliance_id, k.victim_faction_id,
       k.victim_ship_type_id, k.victim_ship_group_id,
       coalesce(k.total_value, 0)::float8 AS total_value,
       k.npc, k.solo, k.awox,
       k.attacker_count,
       ARRAY(SELECT ARRAY[x.character_id, x.corporation_id, x.alliance_id, x.faction_id,
                               x.ship_type_id, x.ship_group_id, x.final_blow::int]
        FROM killboard.attackers x WHERE x.killmail_id = k.killmail_id) AS attackers,
       ARRAY(SELECT ARRAY[y.item_type_id, y.flag, (y.parent_index IS NULL)::int]
        FROM killboard.items y WHERE y.killmail_id = k.killmail_id) AS items
FROM killboard.killmails k
WHERE k.killmail_id = $1
