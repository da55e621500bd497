INSERT INTO killboard.stats_delta (entity_id, entity_kind, data)
SELECT u.id, u.kind, u.data
  FROM unnest($1::int8[], $2::int2[], $3::bytea[]) AS u(id, kind, data)
