INSERT INTO killboard.stats_delta (entity_key, data)
SELECT u.key, u.data
  FROM unnest($1::int8[], $2::bytea[]) AS u(key, data)
