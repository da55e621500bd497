-- Every killmail that credits entity ($1, kind $2); one branch runs per kind.
SELECT killmail_id FROM killboard.killmails WHERE $2 = 1 AND victim_character_id = $1
UNION SELECT killmail_id FROM killboard.attackers WHERE $2 = 1 AND character_id = $1
UNION SELECT killmail_id FROM killboard.killmails WHERE $2 = 2 AND victim_corporation_id = $1
UNION SELECT killmail_id FROM killboard.attackers WHERE $2 = 2 AND corporation_id = $1
UNION SELECT killmail_id FROM killboard.killmails WHERE $2 = 3 AND victim_alliance_id = $1
UNION SELECT killmail_id FROM killboard.attackers WHERE $2 = 3 AND alliance_id = $1
UNION SELECT killmail_id FROM killboard.killmails WHERE $2 = 4 AND victim_faction_id = $1
UNION SELECT killmail_id FROM killboard.attackers WHERE $2 = 4 AND faction_id = $1
UNION SELECT killmail_id FROM killboard.killmails WHERE $2 = 5 AND victim_ship_type_id = $1
UNION SELECT killmail_id FROM killboard.attackers WHERE $2 = 5 AND ship_type_id = $1
UNION SELECT k.killmail_id FROM killboard.killmails k
        LEFT JOIN killboard.sde_types t ON t.type_id = k.victim_ship_type_id
       WHERE $2 = 6 AND coalesce(k.victim_ship_group_id, t.group_id) = $1
UNION SELECT a.killmail_id FROM killboard.attackers a
        LEFT JOIN killboard.sde_types t ON t.type_id = a.ship_type_id
       WHERE $2 = 6 AND coalesce(a.ship_group_id, t.group_id) = $1
UNION SELECT killmail_id FROM killboard.killmails WHERE $2 = 7 AND solar_system_id = $1
UNION SELECT k.killmail_id FROM killboard.killmails k
        LEFT JOIN killboard.sde_systems s ON s.solar_system_id = k.solar_system_id
       WHERE $2 = 8 AND coalesce(k.constellation_id, s.constellation_id) = $1
UNION SELECT k.killmail_id FROM killboard.killmails k
        LEFT JOIN killboard.sde_systems s ON s.solar_system_id = k.solar_system_id
       WHERE $2 = 9 AND coalesce(k.region_id, s.region_id) = $1
