-- Lock the stats rows of keys whose delta removed something, without waiting:
-- rows another writer holds are skipped and get an append-only delta instead.
-- One primary-key probe per key, in the keys' (sorted) order: the locking
-- subquery is never flattened into a join the planner could turn around.
SELECT s.entity_id, s.entity_kind, s.data, s.ctid
  FROM unnest($1::int8[], $2::int2[]) AS k(id, kind),
       LATERAL (SELECT st.entity_id, st.entity_kind, st.data, st.ctid
                  FROM killboard.stats st
                 WHERE st.entity_id = k.id AND st.entity_kind = k.kind
                   FOR UPDATE SKIP LOCKED) s
