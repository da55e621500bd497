-- =============================================================================
-- pg_killboard: maintenance scheduling and API comments (privileges: security.sql)
-- =============================================================================

CREATE FUNCTION killboard.schedule_maintenance()
RETURNS TABLE (jobname text, schedule text, command text, scheduled boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, killboard AS $$
DECLARE
    job record;
    have_cron boolean := EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron');
BEGIN
    IF NOT have_cron THEN
        RAISE NOTICE 'pg_cron is not installed: nothing was scheduled'
            USING HINT = 'Install pg_cron (CREATE EXTENSION pg_cron) and call killboard.schedule_maintenance() again, '
                         'or run the listed commands yourself on the listed schedules.';
    END IF;
    FOR job IN
        SELECT * FROM (VALUES
            ('killboard_advance_windows', '* * * * *', 'SELECT killboard.advance_windows()'),
            ('killboard_cleanup_caches',  '* * * * *', 'SELECT killboard.cleanup_caches()'),
            ('killboard_verify_sample',   '17 * * * *', 'SELECT count(*) FROM killboard.verify_stats(100)')
        ) AS j(jobname, schedule, command)
        WHERE j.jobname <> 'killboard_cleanup_caches'
           OR pg_catalog.to_regprocedure('killboard.cleanup_caches()') IS NOT NULL
    LOOP
        IF have_cron THEN
            EXECUTE 'SELECT cron.schedule($1, $2, $3)' USING job.jobname, job.schedule, job.command;
        END IF;
        jobname := job.jobname; schedule := job.schedule; command := job.command; scheduled := have_cron;
        RETURN NEXT;
    END LOOP;
END $$;
COMMENT ON FUNCTION killboard.schedule_maintenance() IS
  'Registers the maintenance jobs with pg_cron when it is installed (a notice otherwise); lists the jobs.';

CREATE FUNCTION killboard.unschedule_maintenance() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, killboard AS $$
DECLARE
    n integer := 0;
    j text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RAISE NOTICE 'pg_cron is not installed: nothing to unschedule';
        RETURN 0;
    END IF;
    FOR j IN EXECUTE 'SELECT jobname FROM cron.job WHERE jobname LIKE ''killboard\_%''' LOOP
        EXECUTE 'SELECT cron.unschedule($1)' USING j;
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
COMMENT ON FUNCTION killboard.unschedule_maintenance() IS 'Removes the pg_cron jobs schedule_maintenance() registered; returns how many.';

COMMENT ON FUNCTION killboard.ingest(jsonb) IS
  'Ingest one killmail (ESI, zKillboard API element, R2Z2 or RedisQ package); returns its killmail_id. Idempotent.';
COMMENT ON FUNCTION killboard.ingest_many(jsonb) IS
  'Ingest a JSON array of killmails in one statement; returns how many were new or changed.';
COMMENT ON FUNCTION killboard.entity_stats(bigint, text, text) IS
  'Stats of one entity (character, corporation, alliance, faction, ship_type, ship_group, solar_system, constellation, region) for a period (all, 90d, 30d, 14d, 7d, 24h).';
COMMENT ON FUNCTION killboard.entity_stats_live(bigint, text, text) IS 'entity_stats recomputed from the killmails (slow; an oracle).';
COMMENT ON FUNCTION killboard.rebuild_stats() IS 'Recompute all stats from the killmails; returns the number of entities.';
COMMENT ON FUNCTION killboard.advance_windows() IS 'Move the rolling windows to now(); run every minute (schedule_maintenance).';
COMMENT ON FUNCTION killboard.verify_stats(integer) IS 'Stats that differ from a recomputation; empty when exact.';
