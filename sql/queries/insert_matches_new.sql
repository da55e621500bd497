-- insert_matches.sql without ON CONFLICT, for killmails that have no match
-- rows yet (checked by ingest_has_matches.sql first): a speculative insertion
-- per row cost about a third of the insert. Same notifications.
WITH ins AS (
    INSERT INTO killboard.profile_matches (profile_id, killmail_id)
    SELECT u.p, u.k FROM unnest($1::int8[], $2::int8[]) AS u(p, k)
    RETURNING killmail_id, profile_id
), per_killmail AS (
    SELECT killmail_id, pg_catalog.array_agg(profile_id ORDER BY profile_id) AS ids
    FROM ins GROUP BY killmail_id
)
SELECT pg_catalog.pg_notify('killboard_match', pg_catalog.json_build_object(
           'killmail_id', k.killmail_id, 'profile_ids', k.ids[i * 500 + 1 : i * 500 + 500])::text)
FROM per_killmail k, pg_catalog.generate_series(0, (pg_catalog.cardinality(k.ids) - 1) / 500) AS i
ORDER BY k.killmail_id, i
