UPDATE killboard.stats s
   SET data = u.data
  FROM unnest($1::int8[], $2::int2[], $3::bytea[]) AS u(id, kind, data)
 WHERE s.entity_id = u.id AND s.entity_kind = u.kind
