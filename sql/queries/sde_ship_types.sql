SELECT t.type_id::int8, t.group_id::int8, g.category_id::int8
  FROM killboard.sde_types t LEFT JOIN killboard.sde_groups g ON g.group_id = t.group_id
 WHERE t.type_id = ANY($1)
