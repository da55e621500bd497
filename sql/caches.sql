-- =============================================================================
-- pg_killboard: TTL caches filled by killboard-sidecar, the fetch queue, the
-- feed position, and the price-based ISK value of killmails without zkb.
-- =============================================================================
-- The backend never talks HTTP. SQL readers return what the cache holds and
-- queue a fetch on a miss or a stale hit; the sidecar drains the queue
-- (FOR UPDATE SKIP LOCKED), calls ESI / Janice / Mutamarket and writes rows
-- back through the killboard._store_* functions below, which own the TTL rule.
--
-- Freshness of a cached row:
--   fresh    now() <  expires_at                   readers return it
--   stale    expires_at <= now() < expires_at+grace readers return it and queue a refresh
--   expired  now() >= expires_at + grace           cleanup_caches() deletes it
-- grace keeps "stale while refreshing" useful even with cleanup every minute.

-- -----------------------------------------------------------------------------
-- Settings and counters
-- -----------------------------------------------------------------------------
CREATE TABLE killboard.cache_settings (
    cache text PRIMARY KEY
          CHECK (cache IN ('affiliation', 'corporation_history', 'enrichment', 'janice', 'mutamarket')),
    ttl   interval NOT NULL CHECK (ttl > interval '0'),
    grace interval NOT NULL CHECK (grace >= interval '0')
);
INSERT INTO killboard.cache_settings (cache, ttl, grace) VALUES
    ('affiliation',         interval '10 minutes', interval '1 hour'),
    ('corporation_history', interval '1 hour',     interval '1 day'),
    ('enrichment',          interval '24 hours',   interval '7 days'),
    ('janice',              interval '1 hour',     interval '1 day'),
    ('mutamarket',          interval '6 hours',    interval '1 day');
COMMENT ON TABLE killboard.cache_settings IS
  'TTL per sidecar cache (price caches are named by source). A row is stale after ttl and evicted by cleanup_caches() after ttl + grace. UPDATE to change; takes effect for rows written afterwards.';

-- Hit and miss counters are sequences: nextval() never blocks and never rolls
-- back, so concurrent readers do not serialise on a counter row.
CREATE SEQUENCE killboard.cache_affiliation_hits;
CREATE SEQUENCE killboard.cache_affiliation_stale;
CREATE SEQUENCE killboard.cache_affiliation_misses;
CREATE SEQUENCE killboard.cache_corporation_history_hits;
CREATE SEQUENCE killboard.cache_corporation_history_stale;
CREATE SEQUENCE killboard.cache_corporation_history_misses;
CREATE SEQUENCE killboard.cache_enrichment_hits;
CREATE SEQUENCE killboard.cache_enrichment_stale;
CREATE SEQUENCE killboard.cache_enrichment_misses;
CREATE SEQUENCE killboard.cache_price_hits;
CREATE SEQUENCE killboard.cache_price_stale;
CREATE SEQUENCE killboard.cache_price_misses;

-- Evictions happen once a minute at most, so a plain row per cache is fine.
CREATE TABLE killboard.cache_evictions (
    cache          text PRIMARY KEY,
    evictions      bigint NOT NULL DEFAULT 0,
    last_cleanup_at timestamptz
);
INSERT INTO killboard.cache_evictions (cache) VALUES
    ('affiliation'), ('corporation_history'), ('enrichment'), ('price');
COMMENT ON TABLE killboard.cache_evictions IS 'Rows evicted by cleanup_caches() per cache, since the extension was created.';

-- -----------------------------------------------------------------------------
-- Cache tables
-- -----------------------------------------------------------------------------
CREATE TABLE killboard.affiliation_cache (
    character_id   bigint PRIMARY KEY CHECK (character_id > 0),
    corporation_id bigint NOT NULL,
    alliance_id    bigint,
    faction_id     bigint,
    fetched_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL
);
CREATE INDEX affiliation_cache_expires_idx ON killboard.affiliation_cache (expires_at);
COMMENT ON TABLE killboard.affiliation_cache IS
  'ESI /characters/affiliation/ per character; read with killboard.character_affiliation().';

CREATE TABLE killboard.corporation_history_cache (
    character_id bigint PRIMARY KEY CHECK (character_id > 0),
    fetched_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX corporation_history_cache_expires_idx ON killboard.corporation_history_cache (expires_at);
COMMENT ON TABLE killboard.corporation_history_cache IS
  'When the corporation history of a character was fetched; its rows are in killboard.corporation_history_entries.';

CREATE TABLE killboard.corporation_history_entries (
    character_id   bigint  NOT NULL REFERENCES killboard.corporation_history_cache ON DELETE CASCADE,
    record_id      bigint  NOT NULL,
    corporation_id bigint  NOT NULL,
    start_date     timestamptz NOT NULL,
    end_date       timestamptz,          -- start of the next record; NULL for the current corporation
    is_deleted     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (character_id, record_id)
);
COMMENT ON TABLE killboard.corporation_history_entries IS
  'ESI /characters/{id}/corporationhistory/ records; read with killboard.corporation_history().';

CREATE TABLE killboard.enrichment_cache (
    killmail_id bigint PRIMARY KEY CHECK (killmail_id > 0),
    data        jsonb NOT NULL,
    fetched_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX enrichment_cache_expires_idx ON killboard.enrichment_cache (expires_at);
COMMENT ON TABLE killboard.enrichment_cache IS
  'Per-killmail enrichment (names of every id in it, from ESI /universe/names/); read with killboard.killmail_enrichment().';

CREATE TABLE killboard.price_cache (
    source     text NOT NULL,
    region_id  integer NOT NULL,
    type_id    integer NOT NULL,
    price      numeric NOT NULL,
    fetched_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (source, region_id, type_id)
);
CREATE INDEX price_cache_type_idx ON killboard.price_cache (type_id);
CREATE INDEX price_cache_expires_idx ON killboard.price_cache (expires_at);
COMMENT ON TABLE killboard.price_cache IS
  'Unit prices by (source, region, type): janice (Jita, region 10000002) and mutamarket. Read with killboard.price().';

-- -----------------------------------------------------------------------------
-- Fetch queue
-- -----------------------------------------------------------------------------
-- key formats: affiliation / corporation_history: character id; enrichment:
-- killmail id; price: '<source>:<region_id>:<type_id>'.
CREATE TABLE killboard.fetch_queue (
    job_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text NOT NULL
                    CHECK (kind IN ('affiliation', 'corporation_history', 'enrichment', 'price')),
    key             text NOT NULL,
    enqueued_at     timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    parked          boolean NOT NULL DEFAULT false,
    UNIQUE (kind, key)
);
CREATE INDEX fetch_queue_ready_idx ON killboard.fetch_queue (kind, next_attempt_at) WHERE NOT parked;
COMMENT ON TABLE killboard.fetch_queue IS
  'Work for killboard-sidecar, one row per (kind, key). Jobs that keep failing are parked with last_error; killboard.requeue_parked() retries them.';

CREATE TABLE killboard.feed_state (
    feed       text PRIMARY KEY,
    sequence   bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE killboard.feed_state IS
  'Last sequence a feed (r2z2) ingested; written in the same transaction as killboard.ingest, so a restart resumes without gaps or duplicates.';

-- Killmails valued from the price cache are few next to zkb-valued ones; this
-- keeps recompute_values() from scanning every killmail when prices arrive.
CREATE INDEX killmails_price_valued_idx ON killboard.killmails (killmail_id)
    WHERE value_source IN ('prices', 'unknown');

-- -----------------------------------------------------------------------------
-- Internal helpers
-- -----------------------------------------------------------------------------
CREATE FUNCTION killboard._enqueue_fetch(p_kind text, p_key text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, killboard
AS $$
DECLARE
    v_inserted boolean := false;
BEGIN
    -- A reader in a read-only transaction (or on a standby) still gets its
    -- answer; the refresh is requested by the next writable reader.
    IF pg_catalog.current_setting('transaction_read_only') = 'on' THEN
        RETURN false;
    END IF;
    INSERT INTO killboard.fetch_queue (kind, key) VALUES (p_kind, p_key)
    ON CONFLICT (kind, key) DO NOTHING
    RETURNING true INTO v_inserted;
    IF v_inserted THEN
        -- NOTIFY folds identical payloads within a transaction, so a batch of
        -- misses wakes the sidecar once per kind.
        PERFORM pg_catalog.pg_notify('killboard_fetch', p_kind);
    END IF;
    RETURN coalesce(v_inserted, false);
END
$$;
COMMENT ON FUNCTION killboard._enqueue_fetch(text, text) IS
  'Queue a fetch for the sidecar (deduplicated by kind and key) and NOTIFY killboard_fetch; true when newly queued.';

CREATE FUNCTION killboard._cache_event(p_counter regclass, p_kind text, p_key text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, killboard
AS $$
BEGIN
    -- A reader in a read-only transaction (or on a standby) still gets its
    -- answer; counting and the refresh request are left to the next writable reader.
    IF pg_catalog.current_setting('transaction_read_only') = 'on' THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.nextval(p_counter);
    IF p_kind IS NOT NULL THEN
        PERFORM killboard._enqueue_fetch(p_kind, p_key);
    END IF;
END
$$;
COMMENT ON FUNCTION killboard._cache_event(regclass, text, text) IS
  'Count a cache hit, stale hit or miss and, when p_kind is given, queue a fetch; a no-op in read-only transactions.';

CREATE FUNCTION killboard._cache_ttl(p_cache text, OUT ttl interval, OUT grace interval)
LANGUAGE sql STABLE
SET search_path = pg_catalog, killboard
AS $$
    SELECT coalesce(s.ttl, interval '1 hour'), coalesce(s.grace, interval '0')
      FROM (SELECT 1) AS one
      LEFT JOIN killboard.cache_settings s ON s.cache OPERATOR(pg_catalog.=) p_cache
$$;
COMMENT ON FUNCTION killboard._cache_ttl(text) IS 'TTL and grace of a cache from killboard.cache_settings.';

CREATE FUNCTION killboard._check_id(p_name text, p_value bigint)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, killboard
AS $$
BEGIN
    IF p_value IS NULL OR p_value <= 0 THEN
        RAISE EXCEPTION 'invalid %: %', p_name, coalesce(p_value::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = pg_catalog.format('%s must be a positive integer.', p_name);
    END IF;
END
$$;
COMMENT ON FUNCTION killboard._check_id(text, bigint) IS 'Raise 22023 unless the id is positive.';

-- -----------------------------------------------------------------------------
-- Readers
-- -----------------------------------------------------------------------------
CREATE FUNCTION killboard.character_affiliation(
    INOUT character_id bigint, OUT corporation_id bigint, OUT alliance_id bigint,
    OUT faction_id bigint, OUT fetched_at timestamptz, OUT expires_at timestamptz)
RETURNS record
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, killboard, pg_temp
AS $$
DECLARE
    v_id bigint := $1;
    r killboard.affiliation_cache;
BEGIN
    PERFORM killboard._check_id('character_id', v_id);
    SELECT * INTO r FROM killboard.affiliation_cache c WHERE c.character_id OPERATOR(pg_catalog.=) v_id;
    IF NOT FOUND THEN
        PERFORM killboard._cache_event('killboard.cache_affiliation_misses', 'affiliation', v_id::text);
        character_id := v_id;
        RETURN;
    END IF;
    IF r.expires_at <= pg_catalog.now() THEN
        PERFORM killboard._cache_event('killboard.cache_affiliation_stale', 'affiliation', v_id::text);
    ELSE
        PERFORM killboard._cache_event('killboard.cache_affiliation_hits', NULL, NULL);
    END IF;
    character_id := r.character_id;
    corporation_id := r.corporation_id;
    alliance_id := r.alliance_id;
    faction_id := r.faction_id;
    fetched_at := r.fetched_at;
    expires_at := r.expires_at;
END
$$;
COMMENT ON FUNCTION killboard.character_affiliation(bigint) IS
  'Corporation, alliance and faction of a character from the affiliation cache. Fresh: the cached row. Stale: the cached row, and a refresh is queued. Cold miss: only character_id set (other columns NULL), and a fetch is queued. 22023 for a non-positive id.';

CREATE FUNCTION killboard.corporation_history(character_id bigint)
RETURNS TABLE (corporation_id bigint, start_date timestamptz, end_date timestamptz)
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, killboard, pg_temp
AS $$
DECLARE
    v_id bigint := $1;
    v_expires timestamptz;
BEGIN
    PERFORM killboard._check_id('character_id', v_id);
    SELECT c.expires_at INTO v_expires
      FROM killboard.corporation_history_cache c WHERE c.character_id OPERATOR(pg_catalog.=) v_id;
    IF NOT FOUND THEN
        PERFORM killboard._cache_event('killboard.cache_corporation_history_misses', 'corporation_history', v_id::text);
        RETURN;
    END IF;
    IF v_expires <= pg_catalog.now() THEN
        PERFORM killboard._cache_event('killboard.cache_corporation_history_stale', 'corporation_history', v_id::text);
    ELSE
        PERFORM killboard._cache_event('killboard.cache_corporation_history_hits', NULL, NULL);
    END IF;
    RETURN QUERY
        SELECT e.corporation_id, e.start_date, e.end_date
          FROM killboard.corporation_history_entries e
         WHERE e.character_id OPERATOR(pg_catalog.=) v_id
         ORDER BY e.start_date, e.record_id;
END
$$;
COMMENT ON FUNCTION killboard.corporation_history(bigint) IS
  'Corporation history of a character, oldest first (end_date NULL for the current corporation). Fresh: cached rows. Stale: cached rows, and a refresh is queued. Cold miss: no rows, and a fetch is queued. 22023 for a non-positive id.';

CREATE FUNCTION killboard.price(
    type_id integer, source text DEFAULT 'janice', region_id integer DEFAULT 10000002)
RETURNS numeric
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, killboard, pg_temp
AS $$
DECLARE
    v_type integer := $1;
    v_source text := $2;
    v_region integer := $3;
    r killboard.price_cache;
BEGIN
    PERFORM killboard._check_id('type_id', v_type);
    PERFORM killboard._check_id('region_id', v_region);
    IF v_source IS NULL OR v_source NOT IN ('janice', 'mutamarket') THEN
        RAISE EXCEPTION 'invalid price source: %', coalesce(pg_catalog.quote_literal(v_source), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'source must be ''janice'' or ''mutamarket''.';
    END IF;
    SELECT * INTO r FROM killboard.price_cache p
     WHERE p.source OPERATOR(pg_catalog.=) v_source
       AND p.region_id OPERATOR(pg_catalog.=) v_region
       AND p.type_id OPERATOR(pg_catalog.=) v_type;
    IF NOT FOUND THEN
        PERFORM killboard._cache_event('killboard.cache_price_misses', 'price', pg_catalog.concat_ws(':', v_source, v_region, v_type));
        RETURN NULL;
    END IF;
    IF r.expires_at <= pg_catalog.now() THEN
        PERFORM killboard._cache_event('killboard.cache_price_stale', 'price', pg_catalog.concat_ws(':', v_source, v_region, v_type));
    ELSE
        PERFORM killboard._cache_event('killboard.cache_price_hits', NULL, NULL);
    END IF;
    RETURN r.price;
END
$$;
COMMENT ON FUNCTION killboard.price(integer, text, integer) IS
  'Unit price of a type from the price cache (source janice or mutamarket, region 10000002 = The Forge/Jita by default). Fresh: the price. Stale: the price, and a refresh is queued. Cold miss: NULL, and a fetch is queued. 22023 for a bad type, region or source.';

CREATE FUNCTION killboard.killmail_enrichment(killmail_id bigint)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, killboard, pg_temp
AS $$
DECLARE
    v_id bigint := $1;
    r killboard.enrichment_cache;
BEGIN
    PERFORM killboard._check_id('killmail_id', v_id);
    SELECT * INTO r FROM killboard.enrichment_cache e WHERE e.killmail_id OPERATOR(pg_catalog.=) v_id;
    IF NOT FOUND THEN
        PERFORM killboard._cache_event('killboard.cache_enrichment_misses', 'enrichment', v_id::text);
        RETURN NULL;
    END IF;
    IF r.expires_at <= pg_catalog.now() THEN
        PERFORM killboard._cache_event('killboard.cache_enrichment_stale', 'enrichment', v_id::text);
    ELSE
        PERFORM killboard._cache_event('killboard.cache_enrichment_hits', NULL, NULL);
    END IF;
    RETURN r.data;
END
$$;
COMMENT ON FUNCTION killboard.killmail_enrichment(bigint) IS
  'Enrichment of a killmail ({"names": {"<id>": {"name", "category"}}}) from the enrichment cache; stale returns it and queues a refresh, a cold miss returns NULL and queues a fetch.';

-- -----------------------------------------------------------------------------
-- Writers used by the sidecar (the TTL rule lives here, not in the client)
-- -----------------------------------------------------------------------------
-- p_not_before: the upstream's Expires header. Refreshing earlier would only
-- return the same document, so the row stays fresh at least until then.
CREATE FUNCTION killboard._store_affiliations(p_rows jsonb, p_not_before timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, killboard
AS $$
DECLARE
    v_ttl interval := (killboard._cache_ttl('affiliation')).ttl;
    v_expires timestamptz := GREATEST(pg_catalog.now() + v_ttl, p_not_before);
    v_count bigint;
BEGIN
    IF pg_catalog.jsonb_typeof(p_rows) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'affiliations must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO killboard.affiliation_cache AS c
           (character_id, corporation_id, alliance_id, faction_id, fetched_at, expires_at)
    SELECT r.character_id, r.corporation_id, r.alliance_id, r.faction_id, pg_catalog.now(), v_expires
      FROM pg_catalog.jsonb_to_recordset(p_rows)
           AS r(character_id bigint, corporation_id bigint, alliance_id bigint, faction_id bigint)
     WHERE r.character_id > 0 AND r.corporation_id IS NOT NULL
    ON CONFLICT (character_id) DO UPDATE
       SET corporation_id = excluded.corporation_id, alliance_id = excluded.alliance_id,
           faction_id = excluded.faction_id, fetched_at = excluded.fetched_at,
           expires_at = excluded.expires_at;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION killboard._store_affiliations(jsonb, timestamptz) IS
  'Sidecar: upsert ESI affiliation rows (array of {character_id, corporation_id, alliance_id, faction_id}).';

CREATE FUNCTION killboard._store_corporation_history(
    p_character_id bigint, p_rows jsonb, p_not_before timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, killboard
AS $$
DECLARE
    v_ttl interval := (killboard._cache_ttl('corporation_history')).ttl;
    v_count bigint;
BEGIN
    PERFORM killboard._check_id('character_id', p_character_id);
    IF pg_catalog.jsonb_typeof(p_rows) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'corporation history must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO killboard.corporation_history_cache AS c (character_id, fetched_at, expires_at)
    VALUES (p_character_id, pg_catalog.now(), GREATEST(pg_catalog.now() + v_ttl, p_not_before))
    ON CONFLICT (character_id) DO UPDATE
       SET fetched_at = excluded.fetched_at, expires_at = excluded.expires_at;
    DELETE FROM killboard.corporation_history_entries e
     WHERE e.character_id OPERATOR(pg_catalog.=) p_character_id;
    -- ESI gives start dates only; a record ends where the next one starts.
    INSERT INTO killboard.corporation_history_entries
           (character_id, record_id, corporation_id, start_date, end_date, is_deleted)
    SELECT p_character_id, r.record_id, r.corporation_id, r.start_date,
           pg_catalog.lead(r.start_date) OVER (ORDER BY r.start_date, r.record_id),
           coalesce(r.is_deleted, false)
      FROM pg_catalog.jsonb_to_recordset(p_rows)
           AS r(record_id bigint, corporation_id bigint, start_date timestamptz, is_deleted boolean)
     WHERE r.record_id IS NOT NULL AND r.corporation_id IS NOT NULL AND r.start_date IS NOT NULL;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION killboard._store_corporation_history(bigint, jsonb, timestamptz) IS
  'Sidecar: replace the cached corporation history of a character (ESI array of {record_id, corporation_id, start_date, is_deleted}).';

CREATE FUNCTION killboard._store_enrichment(p_killmail_id bigint, p_data jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, killboard
AS $$
DECLARE
    v_ttl interval := (killboard._cache_ttl('enrichment')).ttl;
BEGIN
    PERFORM killboard._check_id('killmail_id', p_killmail_id);
    INSERT INTO killboard.enrichment_cache AS c (killmail_id, data, fetched_at, expires_at)
    VALUES (p_killmail_id, coalesce(p_data, '{}'), pg_catalog.now(), pg_catalog.now() + v_ttl)
    ON CONFLICT (killmail_id) DO UPDATE
       SET data = excluded.data, fetched_at = excluded.fetched_at, expires_at = excluded.expires_at;
END
$$;
COMMENT ON FUNCTION killboard._store_enrichment(bigint, jsonb) IS 'Sidecar: upsert the enrichment of a killmail.';

CREATE FUNCTION killboard._store_prices(p_source text, p_region_id integer, p_rows jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, killboard
AS $$
DECLARE
    v_ttl interval := (killboard._cache_ttl(p_source)).ttl;
    v_count bigint;
BEGIN
    IF p_source IS NULL OR p_source NOT IN ('janice', 'mutamarket') THEN
        RAISE EXCEPTION 'invalid price source: %', coalesce(p_source, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM killboard._check_id('region_id', p_region_id);
    IF pg_catalog.jsonb_typeof(p_rows) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'prices must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO killboard.price_cache AS c (source, region_id, type_id, price, fetched_at, expires_at)
    SELECT p_source, p_region_id, r.type_id, r.price, pg_catalog.now(), pg_catalog.now() + v_ttl
      FROM pg_catalog.jsonb_to_recordset(p_rows) AS r(type_id integer, price numeric)
     WHERE r.type_id > 0 AND r.price >= 0
    ON CONFLICT (source, region_id, type_id) DO UPDATE
       SET price = excluded.price, fetched_at = excluded.fetched_at, expires_at = excluded.expires_at;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION killboard._store_prices(text, integer, jsonb) IS
  'Sidecar: upsert prices (array of {type_id, price}) for a source and region. Call killboard.recompute_values() afterwards.';

-- -----------------------------------------------------------------------------
-- ISK value from the price cache
-- -----------------------------------------------------------------------------
-- The one place the price-based value rule lives; ingest calls it for killmails
-- without zkb, recompute_values() when prices arrive. It never queues fetches:
-- it runs inside ingest and must stay cheap and side-effect free.
CREATE FUNCTION killboard._best_price(p_type_id integer)
RETURNS numeric
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, killboard
AS $$
    SELECT p.price FROM killboard.price_cache p
     WHERE p.type_id OPERATOR(pg_catalog.=) p_type_id
     ORDER BY (p.source OPERATOR(pg_catalog.=) 'janice' AND p.region_id OPERATOR(pg_catalog.=) 10000002) DESC,
              p.fetched_at DESC
     LIMIT 1
$$;
COMMENT ON FUNCTION killboard._best_price(integer) IS
  'Price of a type for valuation: janice/10000002 when cached (fresh or stale), else the most recently fetched of any source; NULL when unknown.';

CREATE FUNCTION killboard._price_value(p_killmail_id bigint, OUT value numeric, OUT known boolean)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, killboard
AS $$
    WITH hull AS (
        SELECT killboard._best_price(k.victim_ship_type_id) AS price
          FROM killboard.killmails k
         WHERE k.killmail_id OPERATOR(pg_catalog.=) p_killmail_id
    ), items AS (
        SELECT pg_catalog.sum((i.quantity_destroyed + i.quantity_dropped)::numeric * p.price) AS total,
               pg_catalog.count(p.price) AS priced
          FROM (SELECT i.item_type_id,
                       pg_catalog.sum(i.quantity_destroyed) AS quantity_destroyed,
                       pg_catalog.sum(i.quantity_dropped) AS quantity_dropped
                  FROM killboard.items i
                 WHERE i.killmail_id OPERATOR(pg_catalog.=) p_killmail_id
                 GROUP BY i.item_type_id) AS i
          CROSS JOIN LATERAL (SELECT killboard._best_price(i.item_type_id) AS price) AS p
    )
    SELECT coalesce((SELECT h.price FROM hull h), 0) + coalesce(it.total, 0),
           (SELECT h.price FROM hull h) IS NOT NULL OR it.priced > 0
      FROM items it
$$;
COMMENT ON FUNCTION killboard._price_value(bigint) IS
  'ISK value of a killmail from the price cache: hull + (destroyed + dropped) x unit price over all its items; unknown prices count 0. known is false when neither the hull nor any item has a price.';

CREATE FUNCTION killboard.recompute_values(type_ids integer[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, killboard
AS $$
DECLARE
    v_types integer[] := $1;
    v_count bigint;
BEGIN
    WITH target AS (
        SELECT k.killmail_id
          FROM killboard.killmails k
         WHERE k.value_source IN ('prices', 'unknown')
           AND (v_types IS NULL
                OR k.victim_ship_type_id OPERATOR(pg_catalog.=) ANY (v_types)
                OR EXISTS (SELECT 1 FROM killboard.items i
                            WHERE i.killmail_id OPERATOR(pg_catalog.=) k.killmail_id
                              AND i.item_type_id OPERATOR(pg_catalog.=) ANY (v_types)))
    ), v AS (
        SELECT t.killmail_id, pg_catalog.round(pv.value, 2) AS value,
               CASE WHEN pv.known THEN 'prices' ELSE 'unknown' END AS source
          FROM target t CROSS JOIN LATERAL killboard._price_value(t.killmail_id) AS pv
    )
    UPDATE killboard.killmails k
       SET total_value = v.value, value_source = v.source
      FROM v
     WHERE k.killmail_id OPERATOR(pg_catalog.=) v.killmail_id
       AND (k.total_value IS DISTINCT FROM v.value OR k.value_source IS DISTINCT FROM v.source);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION killboard.recompute_values(integer[]) IS
  'Re-value killmails whose value comes from the price cache (value_source prices or unknown), all of them or those containing one of type_ids; the killmail triggers move the stats by the difference. Returns the number of killmails changed.';

CREATE FUNCTION killboard.queue_missing_prices(max_types integer DEFAULT 1000)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, killboard
AS $$
DECLARE
    v_max integer := $1;
    v_type integer;
    v_count bigint := 0;
BEGIN
    IF v_max IS NULL OR v_max < 1 THEN
        RAISE EXCEPTION 'invalid max_types: %', coalesce(v_max::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'max_types must be at least 1.';
    END IF;
    -- Only types with no price at all: filling gaps, not re-pricing old
    -- killmails every hour (which would churn their stats). Jobs that were
    -- parked stay parked, so unpriceable types are not retried in a loop.
    FOR v_type IN
        SELECT t.type_id
          FROM (SELECT k.victim_ship_type_id AS type_id
                  FROM killboard.killmails k
                 WHERE k.value_source IN ('prices', 'unknown')
                UNION
                SELECT i.item_type_id
                  FROM killboard.killmails k
                  JOIN killboard.items i ON i.killmail_id OPERATOR(pg_catalog.=) k.killmail_id
                 WHERE k.value_source IN ('prices', 'unknown')) AS t
         WHERE NOT EXISTS (SELECT 1 FROM killboard.price_cache p
                            WHERE p.type_id OPERATOR(pg_catalog.=) t.type_id)
         ORDER BY t.type_id
         LIMIT v_max
    LOOP
        IF killboard._enqueue_fetch('price', 'janice:10000002:' || v_type) THEN
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION killboard.queue_missing_prices(integer) IS
  'Queue Janice (Jita) price fetches for hull and item types of killmails valued from the price cache (value_source prices or unknown) that have no cached price; returns how many were newly queued. The sidecar''s run command calls it every cleanup interval.';

-- -----------------------------------------------------------------------------
-- Maintenance and observability
-- -----------------------------------------------------------------------------
CREATE FUNCTION killboard.cleanup_caches()
RETURNS TABLE (cache text, evicted bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, killboard
AS $$
DECLARE
    n_aff bigint; n_hist bigint; n_enr bigint; n_price bigint;
BEGIN
    DELETE FROM killboard.affiliation_cache c
     WHERE c.expires_at + (killboard._cache_ttl('affiliation')).grace <= pg_catalog.now();
    GET DIAGNOSTICS n_aff = ROW_COUNT;
    DELETE FROM killboard.corporation_history_cache c
     WHERE c.expires_at + (killboard._cache_ttl('corporation_history')).grace <= pg_catalog.now();
    GET DIAGNOSTICS n_hist = ROW_COUNT;
    DELETE FROM killboard.enrichment_cache c
     WHERE c.expires_at + (killboard._cache_ttl('enrichment')).grace <= pg_catalog.now();
    GET DIAGNOSTICS n_enr = ROW_COUNT;
    DELETE FROM killboard.price_cache c
     WHERE c.expires_at + (killboard._cache_ttl(c.source)).grace <= pg_catalog.now();
    GET DIAGNOSTICS n_price = ROW_COUNT;

    RETURN QUERY
    WITH n(cache, evicted) AS (
        VALUES ('affiliation', n_aff), ('corporation_history', n_hist),
               ('enrichment', n_enr), ('price', n_price)
    ), upd AS (
        UPDATE killboard.cache_evictions e
           SET evictions = e.evictions + n.evicted, last_cleanup_at = pg_catalog.now()
          FROM n WHERE e.cache OPERATOR(pg_catalog.=) n.cache
    )
    SELECT n.cache, n.evicted FROM n ORDER BY n.cache;
END
$$;
COMMENT ON FUNCTION killboard.cleanup_caches() IS
  'Evict cache rows past expires_at + grace (see killboard.cache_settings); returns the rows evicted per cache and adds them to killboard.cache_evictions. Scheduled every minute by schedule_maintenance(); the sidecar''s run command calls it too.';

CREATE FUNCTION killboard._counter(p_seq regclass)
RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, killboard
AS $$
DECLARE
    v_last bigint;
    v_called boolean;
BEGIN
    -- A sequence that was never advanced reports last_value = start (1).
    EXECUTE pg_catalog.format('SELECT last_value, is_called FROM %s', p_seq) INTO v_last, v_called;
    RETURN CASE WHEN v_called THEN v_last ELSE 0 END;
END
$$;
COMMENT ON FUNCTION killboard._counter(regclass) IS 'Current value of a counter sequence (0 before its first nextval).';

CREATE FUNCTION killboard.ttl_cache_stats()
RETURNS TABLE (cache text, entries bigint, stale bigint, hits bigint, stale_hits bigint,
               misses bigint, evictions bigint, last_cleanup_at timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, killboard
AS $$
    WITH t(cache, entries, stale) AS (
        SELECT 'affiliation', pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE expires_at <= pg_catalog.now())
          FROM killboard.affiliation_cache
        UNION ALL
        SELECT 'corporation_history', pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE expires_at <= pg_catalog.now())
          FROM killboard.corporation_history_cache
        UNION ALL
        SELECT 'enrichment', pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE expires_at <= pg_catalog.now())
          FROM killboard.enrichment_cache
        UNION ALL
        SELECT 'price', pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE expires_at <= pg_catalog.now())
          FROM killboard.price_cache
    )
    SELECT t.cache, t.entries, t.stale,
           killboard._counter(pg_catalog.format('killboard.cache_%s_hits', t.cache)::regclass),
           killboard._counter(pg_catalog.format('killboard.cache_%s_stale', t.cache)::regclass),
           killboard._counter(pg_catalog.format('killboard.cache_%s_misses', t.cache)::regclass),
           e.evictions, e.last_cleanup_at
      FROM t JOIN killboard.cache_evictions e ON e.cache OPERATOR(pg_catalog.=) t.cache
     ORDER BY t.cache
$$;
COMMENT ON FUNCTION killboard.ttl_cache_stats() IS
  'Per sidecar cache: rows, stale rows, fresh hits, stale hits, cold misses (cluster-wide, since creation), evictions and last cleanup.';

CREATE FUNCTION killboard.requeue_parked(kind text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, killboard
AS $$
DECLARE
    v_kind text := $1;
    v_count bigint;
BEGIN
    UPDATE killboard.fetch_queue q
       SET parked = false, attempts = 0, next_attempt_at = pg_catalog.now()
     WHERE q.parked AND (v_kind IS NULL OR q.kind OPERATOR(pg_catalog.=) v_kind);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        PERFORM pg_catalog.pg_notify('killboard_fetch', coalesce(v_kind, 'all'));
    END IF;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION killboard.requeue_parked(text) IS
  'Give parked fetch jobs (all, or of one kind) a fresh set of attempts; returns how many.';

REVOKE ALL ON FUNCTION killboard._enqueue_fetch(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION killboard._store_affiliations(jsonb, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION killboard._store_corporation_history(bigint, jsonb, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION killboard._store_enrichment(bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION killboard._store_prices(text, integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION killboard.recompute_values(integer[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION killboard.queue_missing_prices(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION killboard.cleanup_caches() FROM PUBLIC;
REVOKE ALL ON FUNCTION killboard.requeue_parked(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION killboard._cache_event(regclass, text, text) FROM PUBLIC;
