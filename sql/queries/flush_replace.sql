-- Records the flush merged itself (rows it holds locked): write them back.
INSERT INTO killboard.stats AS s (entity_id, entity_kind, data)
SELECT u.id, u.kind, u.data
  FROM unnest($1::int8[], $2::int2[], $3::bytea[]) AS u(id, kind, data)
 ORDER BY u.id, u.kind
    ON CONFLICT (entity_id, entity_kind) DO UPDATE
   SET data = excluded.data
