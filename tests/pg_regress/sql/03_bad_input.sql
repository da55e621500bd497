-- Bad input is an error with a SQLSTATE naming the field; nothing is stored.
SET client_min_messages = warning;
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

SELECT count(*) AS before FROM killboard.killmails \gset

SELECT pg_temp.err($q$SELECT killboard.ingest('{"killmail_time": "2020-01-01T00:00:00Z", "solar_system_id": 1, "victim": {}, "attackers": []}')$q$);
SELECT pg_temp.err($q$SELECT killboard.ingest('{"killmail_id": 1, "solar_system_id": 1, "victim": {}, "attackers": []}')$q$);
SELECT pg_temp.err($q$SELECT killboard.ingest('{"killmail_id": 1, "killmail_time": "2020-01-01T00:00:00Z", "solar_system_id": 1, "attackers": []}')$q$);
SELECT pg_temp.err($q$SELECT killboard.ingest('{"killmail_id": "x", "killmail_time": "2020-01-01T00:00:00Z", "solar_system_id": 1, "victim": {}, "attackers": []}')$q$);
SELECT pg_temp.err($q$SELECT killboard.ingest('{"killmail_id": -5, "killmail_time": "2020-01-01T00:00:00Z", "solar_system_id": 1, "victim": {}, "attackers": []}')$q$);
SELECT pg_temp.err($q$SELECT killboard.ingest('{"killmail_id": 1, "killmail_time": "yesterday", "solar_system_id": 1, "victim": {}, "attackers": []}')$q$);
SELECT pg_temp.err($q$SELECT killboard.ingest('{"killmail_id": 1, "killmail_time": "2020-01-01T00:00:00Z", "solar_system_id": 1, "victim": {"ship_type_id": 587}, "attackers": [{"character_id": "me"}]}')$q$);
SELECT pg_temp.err($q$SELECT killboard.ingest('{"killmail_id": 1, "killmail_time": "2020-01-01T00:00:00Z", "solar_system_id": 1, "victim": {"ship_type_id": 587}, "attackers": [], "zkb": {"totalValue": 5}}')$q$);
SELECT pg_temp.err($q$SELECT killboard.ingest('{"killmail_id": 1, "killmail_time": "2020-01-01T00:00:00Z", "solar_system_id": 1, "victim": {"ship_type_id": 587}, "attackers": [{"character_id": 9}], "zkb": {"totalValue": 1e30}}')$q$);
SELECT pg_temp.err($q$SELECT killboard.ingest('{"killmail_id": 1, "killmail_time": "2020-01-01T00:00:00Z", "solar_system_id": 1, "victim": {"ship_type_id": 587}, "attackers": [{"character_id": 9}], "zkb": {"totalValue": -1}}')$q$);
SELECT pg_temp.err($q$SELECT killboard.ingest('{"killmail_id": 1, "killmail_time": "2020-01-01T00:00:00Z", "solar_system_id": 1, "victim": {"ship_type_id": 587}, "attackers": [{"character_id": 9, "damage_done": 1.5}]}')$q$);
SELECT pg_temp.err($q$SELECT killboard.ingest(NULL)$q$);
SELECT pg_temp.err($q$SELECT killboard.ingest_many(NULL)$q$);
SELECT pg_temp.err($q$SELECT killboard.ingest('[1, 2]')$q$);
SELECT pg_temp.err($q$SELECT killboard.ingest('{"killmail_id": 1, "killmail_time": "2020-01-01T00:00:00Z"')$q$);
-- One bad element in a batch stores none of it.
SELECT pg_temp.err($q$SELECT killboard.ingest_many('[{"killmail_id": 301, "killmail_time": "2020-01-01T00:00:00Z", "solar_system_id": 30000142, "victim": {"character_id": 7001, "ship_type_id": 587}, "attackers": [{"character_id": 7002, "final_blow": true}]}, {"killmail_id": 302}]')$q$);
SELECT pg_temp.err($q$SELECT killboard.ingest_many('{"killmail_id": 301}')$q$);

SELECT count(*) - :before AS stored FROM killboard.killmails;
SELECT kills FROM killboard.entity_stats(7002, 'character', 'all');

-- Unknown entity type or period, and a negative id.
SELECT pg_temp.err($q$SELECT * FROM killboard.entity_stats(1, 'pilot', 'all')$q$);
SELECT pg_temp.err($q$SELECT * FROM killboard.entity_stats(1, 'character', '1y')$q$);
SELECT pg_temp.err($q$SELECT * FROM killboard.entity_stats(-1, 'character', 'all')$q$);
SELECT pg_temp.err($q$SELECT * FROM killboard.entity_stats_many(ARRAY[1, NULL], 'character', 'all')$q$);
SELECT pg_temp.err($q$SELECT * FROM killboard.entity_stats_many(ARRAY[1, 0], 'character', 'all')$q$);
SELECT pg_temp.err($q$SELECT * FROM killboard.entity_stats_live(0, 'alliance', '30d')$q$);
SELECT pg_temp.err($q$SELECT * FROM killboard.top_entities('character', 'all', 'fame', 10)$q$);
SELECT pg_temp.err($q$SELECT * FROM killboard.top_entities('character', 'all', 'kills', -1)$q$);
SELECT pg_temp.err($q$SET killboard.kill_credit = 'everyone'$q$);
