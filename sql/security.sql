-- =============================================================================
-- pg_killboard: roles, privileges, pinned search_path, SECURITY DEFINER
-- =============================================================================
-- The one place where privileges are decided. It runs last in the install
-- script and, unchanged, as the body of the upgrade scripts: it first takes
-- back every privilege the killboard roles hold on the schema's objects, then
-- grants exactly what each role needs, so an upgraded database ends up with
-- the same rights as a fresh one whatever an older version granted.
--
--   killboard_reader  read killmails, stats, caches; own filter profiles (RLS)
--   killboard_writer  + ingest and plain DML on the killmail tables; the
--                     sidecar's feed, fetch queue and cache writes
--   killboard_admin   + maintenance (rebuild_stats, advance_windows,
--                     verify_stats, scheduling), SDE loading, cache settings,
--                     every profile
-- Nobody but the extension owner writes the stats store (stats, stats_delta,
-- stats_state): the functions that must write it run SECURITY DEFINER.

-- -----------------------------------------------------------------------------
-- Roles
-- -----------------------------------------------------------------------------
-- Roles are cluster-wide, so two databases running CREATE EXTENSION at the same
-- time can both find a role missing; the second CREATE ROLE then waits for the
-- first transaction and fails with unique_violation (or duplicate_object once
-- the first has committed). Either means the role is there: carry on.
DO $roles$
DECLARE
    r text;
    m record;
BEGIN
    FOREACH r IN ARRAY ARRAY['killboard_reader', 'killboard_writer', 'killboard_admin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) r) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
    FOR m IN SELECT * FROM (VALUES ('killboard_reader', 'killboard_writer'),
                                   ('killboard_writer', 'killboard_admin')) AS g(grp, member) LOOP
        IF NOT pg_catalog.pg_has_role(m.member, m.grp, 'MEMBER') THEN
            BEGIN
                EXECUTE pg_catalog.format('GRANT %I TO %I', m.grp, m.member);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$roles$;

-- -----------------------------------------------------------------------------
-- Start from nothing (matters on upgrade; a no-op on a fresh install)
-- -----------------------------------------------------------------------------
REVOKE ALL ON SCHEMA killboard FROM PUBLIC, killboard_reader, killboard_writer, killboard_admin;
REVOKE ALL ON ALL TABLES IN SCHEMA killboard FROM PUBLIC, killboard_reader, killboard_writer, killboard_admin;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA killboard FROM PUBLIC, killboard_reader, killboard_writer, killboard_admin;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA killboard FROM PUBLIC, killboard_reader, killboard_writer, killboard_admin;

-- -----------------------------------------------------------------------------
-- Reader
-- -----------------------------------------------------------------------------
GRANT USAGE ON SCHEMA killboard TO killboard_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA killboard TO killboard_reader;
-- ttl_cache_stats() reads the hit/miss counter sequences.
GRANT SELECT ON ALL SEQUENCES IN SCHEMA killboard TO killboard_reader;
-- Row security limits everyone but killboard_admin to the profiles they own.
GRANT INSERT, UPDATE, DELETE ON killboard.profiles TO killboard_reader;
-- Every function, minus the writer and admin ones taken back below. Trigger
-- functions are in this set too; they cannot be called directly.
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA killboard TO killboard_reader;

-- -----------------------------------------------------------------------------
-- Writer (ingest; the sidecar connects as a member of this role)
-- -----------------------------------------------------------------------------
GRANT INSERT, UPDATE, DELETE ON killboard.killmails, killboard.attackers, killboard.items
    TO killboard_writer;
GRANT INSERT, UPDATE, DELETE ON killboard.fetch_queue, killboard.feed_state,
    killboard.affiliation_cache, killboard.corporation_history_cache,
    killboard.corporation_history_entries, killboard.enrichment_cache, killboard.price_cache
    TO killboard_writer;
GRANT UPDATE ON killboard.cache_evictions TO killboard_writer;
REVOKE EXECUTE ON FUNCTION
    killboard.ingest(jsonb), killboard.ingest_many(jsonb),
    killboard._mark_stats_stale(),
    killboard._enqueue_fetch(text, text),
    killboard._store_affiliations(jsonb, timestamptz),
    killboard._store_corporation_history(bigint, jsonb, timestamptz),
    killboard._store_enrichment(bigint, jsonb),
    killboard._store_prices(text, integer, jsonb),
    killboard.recompute_values(integer[]),
    killboard.queue_missing_prices(integer),
    killboard.cleanup_caches()
    FROM killboard_reader;
GRANT EXECUTE ON FUNCTION
    killboard.ingest(jsonb), killboard.ingest_many(jsonb),
    killboard._mark_stats_stale(),
    killboard._enqueue_fetch(text, text),
    killboard._store_affiliations(jsonb, timestamptz),
    killboard._store_corporation_history(bigint, jsonb, timestamptz),
    killboard._store_enrichment(bigint, jsonb),
    killboard._store_prices(text, integer, jsonb),
    killboard.recompute_values(integer[]),
    killboard.queue_missing_prices(integer),
    killboard.cleanup_caches()
    TO killboard_writer;

-- -----------------------------------------------------------------------------
-- Admin
-- -----------------------------------------------------------------------------
-- Everything on every table (SDE, cache settings, profile matches, TRUNCATE of
-- the killmail tables, which rebuilds the stats), except writing the stats
-- store: that only goes through the SECURITY DEFINER functions.
GRANT ALL ON ALL TABLES IN SCHEMA killboard TO killboard_admin;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER
    ON killboard.stats, killboard.stats_delta, killboard.stats_state FROM killboard_admin;
REVOKE EXECUTE ON FUNCTION
    killboard.rebuild_stats(), killboard.advance_windows(), killboard.verify_stats(integer),
    killboard.schedule_maintenance(), killboard.unschedule_maintenance(),
    killboard.load_sde(text), killboard.requeue_parked(text),
    killboard._invalidate_relcache(oid), killboard._match_for_ingest(bigint),
    killboard._cache_event(regclass, text, text)
    FROM killboard_reader;
GRANT EXECUTE ON FUNCTION
    killboard.rebuild_stats(), killboard.advance_windows(), killboard.verify_stats(integer),
    killboard.schedule_maintenance(), killboard.unschedule_maintenance(),
    killboard.load_sde(text), killboard.requeue_parked(text)
    TO killboard_admin;
-- _invalidate_relcache, _match_for_ingest and _cache_event are only called by
-- SECURITY DEFINER functions, as the owner.

-- -----------------------------------------------------------------------------
-- search_path and SECURITY DEFINER
-- -----------------------------------------------------------------------------
-- Every function runs with a fixed search_path whatever the caller's: built-ins
-- first, so no schema on the caller's path can shadow a function or operator
-- that SPI queries or SQL bodies use unqualified; pg_temp last, so a temporary
-- table cannot stand in for one of ours.
--
-- SECURITY DEFINER (the extension owner) for the functions that write the
-- stats store on behalf of their caller: the deferred flush trigger, TRUNCATE's
-- rebuild, the maintenance functions, and the readers that first flush the
-- caller's own unflushed deltas (a writer reading its writes in the same
-- transaction). They take no SQL text from their arguments.
DO $pin$
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid) AS args
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace OPERATOR(pg_catalog.=) 'killboard'::regnamespace
           AND p.prokind IN ('f', 'p')
           -- Pure (no SQL, no name lookups) and called once per stats row by
           -- the flush's upsert, where a SET clause would dominate its cost.
           AND p.oid OPERATOR(pg_catalog.<>) 'killboard._stats_merge(bytea, bytea)'::regprocedure
           -- The hot reads: index probes without SQL, where the SET clause
           -- cost more than the probes. The rare SQL they run (recomputing a
           -- last kill time) sets this same path itself (stats::settle_read).
           AND p.oid OPERATOR(pg_catalog.<>) 'killboard.entity_stats(bigint, text, text)'::regprocedure
           AND p.oid OPERATOR(pg_catalog.<>) 'killboard.entity_stats_many(bigint[], text, text)'::regprocedure
    LOOP
        EXECUTE pg_catalog.format('ALTER ROUTINE killboard.%I(%s) SET search_path = pg_catalog, killboard, pg_temp',
                                  f.proname, f.args);
    END LOOP;
END
$pin$;
ALTER FUNCTION killboard.entity_stats(bigint, text, text) RESET search_path;
ALTER FUNCTION killboard.entity_stats_many(bigint[], text, text) RESET search_path;

ALTER FUNCTION killboard._stats_flush() SECURITY DEFINER;
ALTER FUNCTION killboard._stats_truncate() SECURITY DEFINER;
ALTER FUNCTION killboard.rebuild_stats() SECURITY DEFINER;
ALTER FUNCTION killboard.advance_windows() SECURITY DEFINER;
ALTER FUNCTION killboard.verify_stats(integer) SECURITY DEFINER;
ALTER FUNCTION killboard.stats_health() SECURITY DEFINER;
ALTER FUNCTION killboard.stats_summary() SECURITY DEFINER;
ALTER FUNCTION killboard.top_entities(text, text, text, integer) SECURITY DEFINER;
