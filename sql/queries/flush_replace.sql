-- Records the flush merged itself (rows it holds locked): write them back.
INSERT INTO killboard.stats AS s (entity_key, data)
SELECT u.key, u.data
  FROM unnest($1::int8[], $2::bytea[]) AS u(key, data)
 ORDER BY u.key
    ON CONFLICT (entity_key) DO UPDATE
   SET data = excluded.data
