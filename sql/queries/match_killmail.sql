-- A stored killmail as the matcher sees it: one row, attackers and items as
-- arrays. security is real in the table; rounding keeps 0.45 at 0.45.
SELECT k.solar_system_id, k.constellation_id, k.region_id,
       round(k.security::numeric, 6)::float8 AS security,
       k.victim_character_id, k.victim_corporation_id, k.victim_alliance_id, k.victim_faction_id,
       k.victim_ship_type_id, k.victim_ship_group_id,
       coalesce(k.total_value, 0)::float8 AS total_value,
       coalesce(k.npc, false) AS npc, coalesce(k.solo, false) AS solo, coalesce(k.awox, false) AS awox,
       k.attacker_count,
       a.characters, a.corporations, a.alliances, a.factions, a.ship_types, a.ship_groups,
       i.item_types, i.flags, i.top_level
FROM killboard.killmails k
CROSS JOIN LATERAL (
    SELECT array_agg(x.character_id ORDER BY x.attacker_index) AS characters,
           array_agg(x.corporation_id ORDER BY x.attacker_index) AS corporations,
           array_agg(x.alliance_id ORDER BY x.attacker_index) AS alliances,
           array_agg(x.faction_id ORDER BY x.attacker_index) AS factions,
           array_agg(x.ship_type_id ORDER BY x.attacker_index) AS ship_types,
           array_agg(x.ship_group_id ORDER BY x.attacker_index) AS ship_groups
    FROM killboard.attackers x WHERE x.killmail_id = k.killmail_id) a
CROSS JOIN LATERAL (
    SELECT array_agg(y.item_type_id) AS item_types, array_agg(y.flag) AS flags,
           array_agg(y.parent_index IS NULL) AS top_level
    FROM killboard.items y WHERE y.killmail_id = k.killmail_id) i
WHERE k.killmail_id = $1
