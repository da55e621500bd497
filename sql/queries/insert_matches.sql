-- Matches found by ingest for the killmails of one call: $1 profile ids, $2
-- killmail ids, pairwise. Each killmail's new matches are announced exactly as
-- the deferred trigger (_match_on_write) announces them: same payload, ids
-- ascending, 500 per notification (as notify_payloads builds them for
-- insert_matches_new.sql); killmails in id order. Volatile target
-- list entries are computed after the sort. (unnest of two arrays is FROM-clause
-- syntax and cannot be schema-qualified; search_path is pinned anyway.)
WITH ins AS (
    INSERT INTO killboard.profile_matches (profile_id, killmail_id)
    SELECT u.p, u.k FROM unnest($1::int8[], $2::int8[]) AS u(p, k)
    ON CONFLICT DO NOTHING
    RETURNING killmail_id, profile_id
), per_killmail AS (
    SELECT killmail_id, pg_catalog.array_agg(profile_id ORDER BY profile_id) AS ids
    FROM ins GROUP BY killmail_id
)
SELECT pg_catalog.pg_notify('killboard_match', pg_catalog.json_build_object(
           'killmail_id', k.killmail_id, 'profile_ids', k.ids[i * 500 + 1 : i * 500 + 500])::text)
FROM per_killmail k, pg_catalog.generate_series(0, (pg_catalog.cardinality(k.ids) - 1) / 500) AS i
ORDER BY k.killmail_id, i
