-- Attacker rows as the stats rules see them; {attackers} is the table or a transition table.
SELECT a.killmail_id, a.attacker_index,
       a.character_id, a.corporation_id, a.alliance_id, a.faction_id,
       a.ship_type_id::int8,
       coalesce(a.ship_group_id, t.group_id)::int8,
       g.category_id::int8,
       a.damage_done, a.final_blow
  FROM {attackers} a
  LEFT JOIN killboard.sde_types t ON t.type_id = a.ship_type_id
  LEFT JOIN killboard.sde_groups g ON g.group_id = coalesce(a.ship_group_id, t.group_id)
 WHERE {filter}
 ORDER BY a.killmail_id, a.attacker_index
