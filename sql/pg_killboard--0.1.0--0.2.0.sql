-- pg_killboard 0.1.0 -> 0.2.0
\echo Use "ALTER EXTENSION pg_killboard UPDATE TO '0.2.0'" to load this file. \quit
-- Only profile_matches changes shape (keys, no foreign keys); every row stays.
-- New definitions first, then
-- sql/security.sql, whose body follows unchanged: it revokes what 0.1.0
-- granted and grants afresh (roles created safely under concurrent CREATE
-- EXTENSION; writers lose direct DML on the stats store, whose writers now run
-- SECURITY DEFINER; every function pins search_path with pg_temp last).
-- tests/integration/test_upgrade.py compares the result with a fresh install.

-- -----------------------------------------------------------------------------
-- Definitions changed since 0.1.0
-- -----------------------------------------------------------------------------
-- The stats store is keyed by one int8 (kind code << 59 | entity_id): an
-- index entry of one int8 takes 16 bytes where (int8, int2) took 24. Both
-- tables are rewritten once, in key order (the privileges follow in the
-- security section). Ids above 2^59 - 1 cannot be keyed; none can come from
-- a killboard (EVE ids fit in 32 bits), but the update stops rather than
-- drop one.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM killboard.stats
                WHERE entity_id NOT BETWEEN 1 AND 576460752303423487 OR entity_kind NOT BETWEEN 1 AND 15)
       OR EXISTS (SELECT 1 FROM killboard.stats_delta
                WHERE entity_id NOT BETWEEN 1 AND 576460752303423487 OR entity_kind NOT BETWEEN 1 AND 15) THEN
        RAISE EXCEPTION 'pg_killboard: a stats row has an entity id or kind that cannot be keyed'
            USING ERRCODE = '22003',
                  HINT = 'Delete the killmails with ids above 576460752303423487, then run the update again.';
    END IF;
END
$$;
CREATE TABLE killboard.stats_keyed (
    entity_key  bigint PRIMARY KEY,
    data        bytea  NOT NULL
) WITH (fillfactor = 90);
INSERT INTO killboard.stats_keyed (entity_key, data)
SELECT (entity_kind::int8 << 59) | entity_id, data FROM killboard.stats ORDER BY 1;
DROP TABLE killboard.stats;
ALTER TABLE killboard.stats_keyed RENAME TO stats;
ALTER INDEX killboard.stats_keyed_pkey RENAME TO stats_pkey;
ALTER TABLE killboard.stats ALTER COLUMN data SET STORAGE MAIN;
COMMENT ON TABLE killboard.stats IS 'Per-entity stats for every period, compactly encoded; read with killboard.entity_stats().';
COMMENT ON COLUMN killboard.stats.entity_key IS
  'kind code << 59 | entity_id; codes: 1 character, 2 corporation, 3 alliance, 4 faction, 5 ship_type, 6 ship_group, 7 solar_system, 8 constellation, 9 region';
CREATE TABLE killboard.stats_delta_keyed (
    entity_key  bigint NOT NULL,
    data        bytea  NOT NULL
);
INSERT INTO killboard.stats_delta_keyed (entity_key, data)
SELECT (entity_kind::int8 << 59) | entity_id, data FROM killboard.stats_delta;
DROP TABLE killboard.stats_delta;
ALTER TABLE killboard.stats_delta_keyed RENAME TO stats_delta;
CREATE INDEX stats_delta_entity_idx ON killboard.stats_delta (entity_key);
-- Small transactions now append their deltas (write-behind).
COMMENT ON TABLE killboard.stats_delta IS 'Append-only stats deltas (small transactions, and removals on rows another writer holds); readers add them, advance_windows() folds them.';

-- ingest(NULL) / ingest_many(NULL) are errors (23502) instead of a silent NULL.
ALTER FUNCTION killboard.ingest(jsonb) CALLED ON NULL INPUT;
ALTER FUNCTION killboard.ingest_many(jsonb) CALLED ON NULL INPUT;

-- entity_stats returns one row of a named composite type instead of a set of
-- one (same columns, same identity): the set-returning call, and building its
-- row descriptor from OUT parameters, cost more than the lookup.
DROP FUNCTION killboard.entity_stats(bigint, text, text);
CREATE TYPE killboard.entity_stats_result AS (
    entity_id       bigint,
    entity_type     text,
    period          text,
    kills           bigint,
    losses          bigint,
    isk_destroyed   numeric,
    isk_lost        numeric,
    efficiency      double precision,
    isk_efficiency  double precision,
    kill_loss_ratio double precision,
    solo_kills      bigint,
    solo_losses     bigint,
    npc_kills       bigint,
    npc_losses      bigint,
    last_kill_time  timestamp with time zone,
    last_loss_time  timestamp with time zone,
    final_blows     bigint,
    points          bigint,
    damage_dealt    bigint,
    damage_taken    bigint,
    avg_attackers   double precision,
    as_of           timestamp with time zone
);
COMMENT ON TYPE killboard.entity_stats_result IS 'One row of killboard.entity_stats().';
CREATE FUNCTION killboard.entity_stats(
    entity_id bigint,
    entity_type text,
    period text DEFAULT 'all'
) RETURNS killboard.entity_stats_result
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'entity_stats_row';
COMMENT ON FUNCTION killboard.entity_stats(bigint, text, text) IS
  'Stats of one entity (character, corporation, alliance, faction, ship_type, ship_group, solar_system, constellation, region) for a period (all, 90d, 30d, 14d, 7d, 24h).';

-- Marking the store stale updates its row once, not on every stale write.
CREATE OR REPLACE FUNCTION killboard._mark_stats_stale() RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, killboard AS $$
    -- Only the first stale write updates the row: concurrent plain-insert
    -- writers would otherwise queue on this one row.
    UPDATE killboard.stats_state SET stale_since = pg_catalog.now() WHERE stale_since IS NULL;
$$;

-- The flush merges additive deltas inside one upsert (sql/queries/flush_upsert.sql).
CREATE FUNCTION killboard."_stats_merge"("stored" bytea, "delta" bytea) RETURNS bytea
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', '_stats_merge_wrapper';

-- profile_matches: no foreign keys (deletes cascade through statement triggers),
-- key led by the killmail; the rows stay as they are.
ALTER TABLE killboard.profile_matches
    DROP CONSTRAINT IF EXISTS profile_matches_profile_id_fkey,
    DROP CONSTRAINT IF EXISTS profile_matches_killmail_id_fkey,
    DROP CONSTRAINT profile_matches_pkey,
    ADD PRIMARY KEY (killmail_id, profile_id);
DROP INDEX killboard.profile_matches_killmail_idx;
CREATE INDEX profile_matches_profile_idx ON killboard.profile_matches (profile_id, killmail_id);
CREATE FUNCTION killboard._profile_matches_cascade() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, killboard AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- A TRUNCATE that names profile_matches too has it open already (and
        -- emptied): TRUNCATE would fail with 55006, a DELETE finds nothing.
        BEGIN
            TRUNCATE killboard.profile_matches;
        EXCEPTION WHEN object_in_use THEN
            DELETE FROM killboard.profile_matches;
        END;
    ELSIF TG_TABLE_NAME = 'profiles' THEN
        DELETE FROM killboard.profile_matches m USING gone g WHERE m.profile_id = g.profile_id;
    ELSE
        DELETE FROM killboard.profile_matches m USING gone g WHERE m.killmail_id = g.killmail_id;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER profiles_matches_cascade
    AFTER DELETE ON killboard.profiles REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION killboard._profile_matches_cascade();
CREATE TRIGGER profiles_matches_truncate
    AFTER TRUNCATE ON killboard.profiles
    FOR EACH STATEMENT EXECUTE FUNCTION killboard._profile_matches_cascade();
CREATE TRIGGER killmails_matches_cascade
    AFTER DELETE ON killboard.killmails REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION killboard._profile_matches_cascade();
CREATE TRIGGER killmails_matches_truncate
    AFTER TRUNCATE ON killboard.killmails
    FOR EACH STATEMENT EXECUTE FUNCTION killboard._profile_matches_cascade();

CREATE OR REPLACE FUNCTION killboard._match_on_write() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, killboard AS $$
DECLARE
    ids     bigint[];
    new_ids bigint[];
BEGIN
    ids := killboard._match_for_ingest(NEW.killmail_id);
    IF ids IS NULL OR cardinality(ids) = 0 THEN
        RETURN NULL;
    END IF;
    -- The key leads with the killmail, so ON CONFLICT's check per row stays on
    -- the page the row goes to. (A NOT EXISTS probe to skip it for new
    -- killmails was slower: its plan, cached while the table was small, kept
    -- scanning the whole table.)
    WITH ins AS (
        INSERT INTO killboard.profile_matches (profile_id, killmail_id)
        SELECT unnest(ids), NEW.killmail_id
        ON CONFLICT DO NOTHING
        RETURNING profile_id
    )
    SELECT array_agg(profile_id ORDER BY profile_id) INTO new_ids FROM ins;
    -- NOTIFY payloads are capped at 8000 bytes: send ids in chunks of 500.
    FOR i IN 0 .. coalesce((cardinality(new_ids) - 1) / 500, -1) LOOP
        PERFORM pg_notify('killboard_match', json_build_object(
            'killmail_id', NEW.killmail_id,
            'profile_ids', new_ids[i * 500 + 1 : i * 500 + 500])::text);
    END LOOP;
    RETURN NULL;
END
$$;

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
