-- Matches found by ingest for killmails that have no match rows yet (checked
-- by ingest_has_matches.sql first): $1 profile ids, $2 killmail ids,
-- pairwise. Every row is new, so no ON CONFLICT (a speculative insertion per
-- row cost about a third of the insert) and no RETURNING: ingest builds the
-- notifications itself (notify_matches.sql).
INSERT INTO killboard.profile_matches (profile_id, killmail_id)
SELECT u.p, u.k FROM unnest($1::int8[], $2::int8[]) AS u(p, k)
