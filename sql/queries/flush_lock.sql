-- Lock the stats rows of keys whose delta removed something, without waiting:
-- rows another writer holds are skipped and get an append-only delta instead.
-- One primary-key probe per key, in the keys' (sorted) order: the locking
-- subquery is never flattened into a join the planner could turn around.
SELECT s.entity_key, s.data, s.ctid
  FROM unnest($1::int8[]) AS k(key),
       LATERAL (SELECT st.entity_key, st.data, st.ctid
                  FROM killboard.stats st
                 WHERE st.entity_key = k.key
                   FOR UPDATE SKIP LOCKED) s
