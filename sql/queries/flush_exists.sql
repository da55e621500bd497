-- Which keys of a flush already have a stats row (no lock): only the others
-- are tried as INSERTs, so a flush rarely waits on a row another writer
-- updates; that row gets locked or an appended delta instead.
SELECT s.entity_id, s.entity_kind
  FROM killboard.stats s
  JOIN unnest($1::int8[], $2::int2[]) AS k(id, kind)
    ON s.entity_id = k.id AND s.entity_kind = k.kind
