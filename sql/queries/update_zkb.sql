-- A re-delivery with new zKillboard values; the row trigger moves the stats by the difference.
UPDATE killboard.killmails
   SET total_value = $2::numeric / 100, fitted_value = $3::numeric / 100, destroyed_value = $4::numeric / 100,
       dropped_value = $5::numeric / 100, points = $6, npc = $7, solo = $8, awox = $9,
       location_id = $10, labels = CASE WHEN $11::jsonb IS NULL THEN labels ELSE ARRAY(SELECT jsonb_array_elements_text($11::jsonb)) END,
       value_source = 'zkb'
 WHERE killmail_id = $1
