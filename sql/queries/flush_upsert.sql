-- Deltas that only add (nothing removed), in the order given (EntityKind::
-- lock_rank, then id): new entities are inserted, existing rows merged in
-- place. A row another writer holds is waited for; every writer takes its
-- rows in this same order, so there is no cycle. There is no join with the
-- stats table, so the plan cannot go wrong however empty the table looked
-- when it was made.
INSERT INTO killboard.stats AS s (entity_key, data)
SELECT u.key, u.data
  FROM unnest($1::int8[], $2::bytea[]) WITH ORDINALITY AS u(key, data, n)
 ORDER BY u.n
    ON CONFLICT (entity_key) DO UPDATE
   SET data = killboard._stats_merge(s.data, excluded.data)
