DELETE FROM killboard.stats s
 USING unnest($1::int8[], $2::int2[]) AS u(id, kind)
 WHERE s.entity_id = u.id AND s.entity_kind = u.kind
