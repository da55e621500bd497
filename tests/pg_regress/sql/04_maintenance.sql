-- Maintenance functions: verify finds corruption, rebuild repairs it, health and summary report.
SET client_min_messages = warning;

-- Corrupt one stored row by hand: swap character 1002's record for character 1003's.
-- (entity_key is the kind code << 59 | entity_id; 1 is character.)
UPDATE killboard.stats SET data = (SELECT data FROM killboard.stats WHERE entity_key = (1::int8 << 59) | 1003)
WHERE entity_key = (1::int8 << 59) | 1002;
SELECT DISTINCT entity_id, entity_type FROM killboard.verify_stats() ORDER BY 1;
SELECT check_name, ok FROM (SELECT "check" AS check_name, ok FROM killboard.stats_health()) h ORDER BY 1;

SELECT killboard.rebuild_stats() > 0 AS rebuilt;
SELECT count(*) AS differences FROM killboard.verify_stats();
SELECT count(*) AS differences FROM killboard.verify_stats(5);
SELECT bool_and(ok) AS healthy FROM killboard.stats_health();

SELECT entity_type, entities, bytes > 0 AS has_bytes FROM killboard.stats_summary() ORDER BY 1;

SELECT entity_id, kills, isk_destroyed
FROM killboard.top_entities('character', 'all', 'kills', 3);
SELECT entity_id, isk_destroyed FROM killboard.top_entities('corporation', 'all', 'isk_destroyed', 2);

-- Without pg_cron in this database, scheduling lists the jobs and schedules nothing.
SET client_min_messages = notice;
SELECT jobname, schedule, scheduled FROM killboard.schedule_maintenance() ORDER BY 1;
SELECT killboard.unschedule_maintenance();
