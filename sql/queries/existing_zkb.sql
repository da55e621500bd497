-- What a re-delivery may change: zKillboard's values.
SELECT killmail_id, (total_value * 100)::int8, (fitted_value * 100)::int8, (destroyed_value * 100)::int8,
       (dropped_value * 100)::int8, points::int8, npc, solo, awox, location_id, to_jsonb(labels)::text, value_source
  FROM killboard.killmails
 WHERE killmail_id = ANY($1)
