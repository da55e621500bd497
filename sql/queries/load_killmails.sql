-- Killmail rows as the stats rules see them; {killmails} is the table or a
-- transition table. Derived columns fall back to the SDE when not stored.
SELECT k.killmail_id,
       (extract(epoch FROM k.killmail_time) * 1000000)::int8,
       k.solar_system_id::int8,
       coalesce(k.constellation_id, s.constellation_id)::int8,
       coalesce(k.region_id, s.region_id)::int8,
       (coalesce(k.total_value, 0) * 100)::int8,
       coalesce(k.points, 0)::int8,
       k.npc, k.solo, k.awox,
       k.victim_character_id, k.victim_corporation_id, k.victim_alliance_id, k.victim_faction_id,
       k.victim_ship_type_id::int8,
       coalesce(k.victim_ship_group_id, t.group_id)::int8,
       g.category_id::int8,
       k.victim_damage_taken
  FROM {killmails} k
  LEFT JOIN killboard.sde_systems s ON s.solar_system_id = k.solar_system_id
  LEFT JOIN killboard.sde_types t ON t.type_id = k.victim_ship_type_id
  LEFT JOIN killboard.sde_groups g ON g.group_id = coalesce(k.victim_ship_group_id, t.group_id)
 WHERE {filter}
 ORDER BY k.killmail_id
