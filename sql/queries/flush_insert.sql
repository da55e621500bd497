-- New entities, in key order. A key that exists (or that a writer we waited
-- for just inserted) is left out of RETURNING and is locked or appended after.
INSERT INTO killboard.stats (entity_id, entity_kind, data)
SELECT u.id, u.kind, u.data
  FROM unnest($1::int8[], $2::int2[], $3::bytea[]) AS u(id, kind, data)
 ORDER BY u.id, u.kind
    ON CONFLICT (entity_id, entity_kind) DO NOTHING
RETURNING entity_id, entity_kind
