-- New entities, in key order, for a database still at 0.1.0 (no merge
-- function, so no upsert). Rows that exist are filtered out before the
-- unique check (which would wait on a writer holding them); a key another
-- writer is inserting right now is waited for, in key order, so no cycle.
-- Keys left out of RETURNING are appended to stats_delta.
-- OFFSET 0 keeps the existence test a primary-key probe per key (an anti
-- join would hash the whole stats table for a large flush).
INSERT INTO killboard.stats (entity_id, entity_kind, data)
SELECT u.id, u.kind, u.data
  FROM unnest($1::int8[], $2::int2[], $3::bytea[]) AS u(id, kind, data)
 WHERE NOT EXISTS (SELECT 1 FROM killboard.stats s WHERE s.entity_id = u.id AND s.entity_kind = u.kind OFFSET 0)
 ORDER BY u.id, u.kind
    ON CONFLICT (entity_id, entity_kind) DO NOTHING
RETURNING entity_id, entity_kind
