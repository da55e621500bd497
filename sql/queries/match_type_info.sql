-- What matching needs about a type: group, category, meta group, market group.
SELECT t.group_id, g.category_id, t.meta_group_id, t.market_group_id
FROM killboard.sde_types t
LEFT JOIN killboard.sde_groups g ON g.group_id = t.group_id
WHERE t.type_id = $1
