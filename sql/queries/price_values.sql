-- Value from the price cache (the rule lives in killboard._price_value) for killmails without zkb.
UPDATE killboard.killmails k
   SET total_value = v.value,
       value_source = CASE WHEN v.known THEN 'prices' ELSE 'unknown' END
  FROM (SELECT id, (killboard._price_value(id)).* FROM unnest($1::int8[]) AS id) AS v
 WHERE k.killmail_id = v.id
RETURNING k.killmail_id, (k.total_value * 100)::int8
