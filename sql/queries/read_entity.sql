-- One entity's stored record and its appended deltas (one row each, or one
-- row with NULL data when there are none), with the window as_of.
SELECT (extract(epoch FROM st.as_of) * 1000000)::int8, x.data
  FROM killboard.stats_state st
  LEFT JOIN LATERAL (
        SELECT s.data FROM killboard.stats s WHERE s.entity_id = $1 AND s.entity_kind = $2
        UNION ALL
        SELECT d.data FROM killboard.stats_delta d WHERE d.entity_id = $1 AND d.entity_kind = $2
  ) AS x ON true
