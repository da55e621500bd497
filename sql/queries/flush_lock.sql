-- Lock the existing stats rows of a flush without waiting: rows another
-- writer holds are skipped and get an append-only delta instead.
SELECT s.entity_id, s.entity_kind, s.data
  FROM killboard.stats s
  JOIN unnest($1::int8[], $2::int2[]) AS k(id, kind)
    ON s.entity_id = k.id AND s.entity_kind = k.kind
 ORDER BY s.entity_id, s.entity_kind
   FOR UPDATE OF s SKIP LOCKED
