-- The appended deltas of stats rows this writer has just locked for a
-- removal: they are folded into the row with it, so a last kill/loss time an
-- appended addition raised can be recomputed once the killmail is gone (a
-- reader takes the maximum of row and deltas). Other removers wait for the
-- row lock first, and the window advance cannot run meanwhile, so nobody else
-- deletes these rows; deltas appended since are not visible and stay.
DELETE FROM killboard.stats_delta d
 WHERE d.entity_key = ANY($1::int8[])
RETURNING d.entity_key, d.data
