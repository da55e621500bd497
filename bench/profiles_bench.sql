-- =============================================================================
-- Profile matching benchmark: 10k profiles, one killmail.
-- =============================================================================
-- psql -X -f bench/profiles_bench.sql  (needs the SDE loaded: fixtures or full)
-- Reports p50/p99 of killboard.match_profiles(killmail_id) and (jsonb), the
-- same match done naively in SQL (every profile's filter evaluated by a
-- PL/pgSQL interpreter over precomputed killmail facts), and the index rebuild
-- time for 10k profiles. Everything runs in one transaction and is rolled back.
\set ON_ERROR_STOP 1
\timing off
BEGIN;
SET LOCAL killboard.match_on_ingest = off;
SET LOCAL client_min_messages = warning;

-- One killmail in Jita, fitted with a T2 projectile weapon.
INSERT INTO killboard.killmails (killmail_id, killmail_time, solar_system_id, victim_character_id,
    victim_corporation_id, victim_alliance_id, victim_ship_type_id, total_value, value_source)
VALUES (9200001, now(), 30000142, 90000001, 98000001, 99000001, 587, 150000000, 'sql');
INSERT INTO killboard.attackers (killmail_id, attacker_index, character_id, corporation_id, alliance_id, ship_type_id, final_blow)
SELECT 9200001, g, 90000100 + g, 98000100 + g % 5, 99000100 + g % 3, 587, g = 0 FROM generate_series(0, 9) g;
INSERT INTO killboard.items (killmail_id, item_index, item_type_id, flag, quantity_destroyed)
VALUES (9200001, 0, 2881, 27, 1), (9200001, 1, 21894, 27, 100), (9200001, 2, 2881, 28, 1);

-- 10k profiles with mixed leaves; ids drawn from small pools so some match.
SELECT setseed(0.42);
CREATE TEMP TABLE bench_systems AS SELECT solar_system_id AS id FROM killboard.sde_systems ORDER BY 1 LIMIT 200;
INSERT INTO killboard.profiles (name, filter)
SELECT 'bench ' || g,
  CASE g % 10
    WHEN 0 THEN jsonb_build_object('solar_system_ids', jsonb_build_array((SELECT id FROM bench_systems OFFSET (g * 7) % 200 LIMIT 1)))
    WHEN 1 THEN jsonb_build_object('victim_corporation_ids', jsonb_build_array(98000000 + g % 500), 'min_value', 1000000)
    WHEN 2 THEN jsonb_build_object('attacker_alliance_ids', jsonb_build_array(99000000 + g % 400))
    WHEN 3 THEN jsonb_build_object('module_tags', jsonb_build_array((ARRAY['T2','Faction','Laser','Hybrid','Missile','Officer','Deadspace','Drone'])[1 + g % 8]),
                                   'security_band', jsonb_build_array((ARRAY['highsec','lowsec','nullsec'])[1 + g % 3]),
                                   'min_value', (g % 7) * 50000000)
    WHEN 4 THEN jsonb_build_object('involved_character_ids', jsonb_build_array(90000000 + g % 1000, 90000100 + g % 977))
    WHEN 5 THEN jsonb_build_object('region_ids', jsonb_build_array(10000000 + g % 70), 'victim_ship_group_ids', jsonb_build_array(25 + g % 5))
    WHEN 6 THEN jsonb_build_object('any', jsonb_build_array(
                    jsonb_build_object('victim_alliance_ids', jsonb_build_array(99000000 + g % 300)),
                    jsonb_build_object('solar_system_ids', jsonb_build_array((SELECT id FROM bench_systems OFFSET (g * 11) % 200 LIMIT 1)))))
    WHEN 7 THEN jsonb_build_object('attacker_ship_type_ids', jsonb_build_array(580 + g % 50), 'not', jsonb_build_object('npc', true))
    WHEN 8 THEN jsonb_build_object('within_jumps', jsonb_build_object('system_id', (SELECT id FROM bench_systems OFFSET (g * 13) % 200 LIMIT 1), 'jumps', g % 3))
    ELSE CASE WHEN g % 100 = 9 THEN jsonb_build_object('min_attackers', 5 + g % 20)   -- always-check
              ELSE jsonb_build_object('victim_character_ids', jsonb_build_array(90000000 + g % 2000)) END
  END
FROM generate_series(1, 10000) g;

-- Naive evaluation: the killmail's facts once, then every filter interpreted in PL/pgSQL.
CREATE FUNCTION pg_temp.ids_hit(want jsonb, have bigint[]) RETURNS boolean LANGUAGE sql IMMUTABLE AS
$$ SELECT EXISTS (SELECT 1 FROM jsonb_array_elements_text(want) w WHERE w::bigint = ANY (have)) $$;
CREATE FUNCTION pg_temp.naive_eval(f jsonb, k jsonb) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE key text; val jsonb; e jsonb; hit boolean;
BEGIN
  FOR key, val IN SELECT * FROM jsonb_each(f) LOOP
    hit := CASE key
      WHEN 'solar_system_ids' THEN pg_temp.ids_hit(val, ARRAY[(k->>'system')::bigint])
      WHEN 'region_ids' THEN pg_temp.ids_hit(val, ARRAY[(k->>'region')::bigint])
      WHEN 'security_band' THEN val ? (k->>'band')
      WHEN 'min_value' THEN (k->>'value')::numeric >= (val#>>'{}')::numeric
      WHEN 'min_attackers' THEN (k->>'attackers')::int >= (val#>>'{}')::int
      WHEN 'npc' THEN (k->>'npc')::boolean = (val#>>'{}')::boolean
      WHEN 'module_tags' THEN EXISTS (SELECT 1 FROM jsonb_array_elements_text(val) t WHERE k->'tags' ? t)
      WHEN 'victim_character_ids' THEN pg_temp.ids_hit(val, ARRAY[(k->>'v_char')::bigint])
      WHEN 'victim_corporation_ids' THEN pg_temp.ids_hit(val, ARRAY[(k->>'v_corp')::bigint])
      WHEN 'victim_alliance_ids' THEN pg_temp.ids_hit(val, ARRAY[(k->>'v_alli')::bigint])
      WHEN 'victim_ship_group_ids' THEN pg_temp.ids_hit(val, ARRAY[(k->>'v_group')::bigint])
      WHEN 'attacker_alliance_ids' THEN pg_temp.ids_hit(val, ARRAY(SELECT jsonb_array_elements_text(k->'a_alli')::bigint))
      WHEN 'attacker_ship_type_ids' THEN pg_temp.ids_hit(val, ARRAY(SELECT jsonb_array_elements_text(k->'a_ship')::bigint))
      WHEN 'involved_character_ids' THEN pg_temp.ids_hit(val, ARRAY(SELECT jsonb_array_elements_text(k->'chars')::bigint))
      WHEN 'within_jumps' THEN (k->>'system')::int IN (
          WITH RECURSIVE r(s, d) AS (SELECT (val->>'system_id')::int, 0
              UNION SELECT j.to_system_id, r.d + 1 FROM r JOIN killboard.sde_jumps j ON j.from_system_id = r.s
              WHERE r.d < (val->>'jumps')::int)
          SELECT s FROM r)
      WHEN 'any' THEN EXISTS (SELECT 1 FROM jsonb_array_elements(val) x WHERE pg_temp.naive_eval(x, k))
      WHEN 'not' THEN NOT pg_temp.naive_eval(val, k)
      ELSE false END;
    IF NOT coalesce(hit, false) THEN RETURN false; END IF;
  END LOOP;
  RETURN true;
END $$;
CREATE TEMP TABLE bench_facts AS
SELECT jsonb_build_object('system', k.solar_system_id, 'region', s.region_id,
    'band', CASE WHEN s.security >= 0.45 THEN 'highsec' WHEN s.security > 0 THEN 'lowsec' ELSE 'nullsec' END,
    'value', k.total_value, 'attackers', (SELECT count(*) FROM killboard.attackers a WHERE a.killmail_id = k.killmail_id),
    'npc', coalesce(k.npc, false), 'tags', to_jsonb(killboard.killmail_module_tags(jsonb_build_object(
        'killmail_id', k.killmail_id, 'solar_system_id', k.solar_system_id, 'attackers', '[]'::jsonb,
        'victim', jsonb_build_object('ship_type_id', k.victim_ship_type_id, 'items',
            (SELECT jsonb_agg(jsonb_build_object('item_type_id', i.item_type_id, 'flag', i.flag)) FROM killboard.items i WHERE i.killmail_id = k.killmail_id))))),
    'v_char', k.victim_character_id, 'v_corp', k.victim_corporation_id, 'v_alli', k.victim_alliance_id,
    'v_group', (SELECT group_id FROM killboard.sde_types WHERE type_id = k.victim_ship_type_id),
    'a_alli', (SELECT jsonb_agg(alliance_id) FROM killboard.attackers a WHERE a.killmail_id = k.killmail_id),
    'a_ship', (SELECT jsonb_agg(ship_type_id) FROM killboard.attackers a WHERE a.killmail_id = k.killmail_id),
    'chars', (SELECT jsonb_agg(c) FROM (SELECT k.victim_character_id c UNION ALL SELECT character_id FROM killboard.attackers a WHERE a.killmail_id = k.killmail_id) x)
  ) AS facts
FROM killboard.killmails k JOIN killboard.sde_systems s USING (solar_system_id)
WHERE k.killmail_id = 9200001;

CREATE TEMP TABLE bench_results (what text, n int, p50_us numeric, p99_us numeric, matches int);
DO $$
DECLARE t0 timestamptz; samples float8[]; n int; km jsonb; i int; m int;
BEGIN
  -- First call builds the index (10k parses + compiles): reported by cache_stats().
  PERFORM count(*) FROM killboard.match_profiles(9200001::bigint);
  samples := '{}';
  FOR i IN 1..2000 LOOP
    t0 := clock_timestamp();
    SELECT count(*) INTO m FROM killboard.match_profiles(9200001::bigint);
    samples := samples || extract(epoch FROM clock_timestamp() - t0) * 1e6;
  END LOOP;
  INSERT INTO bench_results SELECT 'match_profiles(killmail_id)', 2000,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY s), percentile_cont(0.99) WITHIN GROUP (ORDER BY s), m FROM unnest(samples) s;

  km := '{"killmail_id": 9200001, "solar_system_id": 30000142,
          "victim": {"ship_type_id": 587, "character_id": 90000001, "corporation_id": 98000001, "alliance_id": 99000001,
                     "items": [{"item_type_id": 2881, "flag": 27}, {"item_type_id": 21894, "flag": 27}, {"item_type_id": 2881, "flag": 28}]},
          "attackers": [{"character_id": 90000100, "corporation_id": 98000100, "alliance_id": 99000100, "ship_type_id": 587}],
          "zkb": {"totalValue": 150000000}}';
  samples := '{}';
  FOR i IN 1..2000 LOOP
    t0 := clock_timestamp();
    SELECT count(*) INTO m FROM killboard.match_profiles(km);
    samples := samples || extract(epoch FROM clock_timestamp() - t0) * 1e6;
  END LOOP;
  INSERT INTO bench_results SELECT 'match_profiles(jsonb)', 2000,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY s), percentile_cont(0.99) WITHIN GROUP (ORDER BY s), m FROM unnest(samples) s;

  samples := '{}';
  FOR i IN 1..5 LOOP
    t0 := clock_timestamp();
    SELECT count(*) INTO m FROM killboard.profiles p, bench_facts b WHERE p.enabled AND pg_temp.naive_eval(p.filter, b.facts);
    samples := samples || extract(epoch FROM clock_timestamp() - t0) * 1e6;
  END LOOP;
  INSERT INTO bench_results SELECT 'naive SQL over all profiles', 5,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY s), percentile_cont(0.99) WITHIN GROUP (ORDER BY s), m FROM unnest(samples) s;
END $$;

SELECT what, n, round(p50_us, 1) AS p50_us, round(p99_us, 1) AS p99_us, matches FROM bench_results;
SELECT round((SELECT p50_us FROM bench_results WHERE what LIKE 'naive%')
           / (SELECT p50_us FROM bench_results WHERE what = 'match_profiles(killmail_id)'), 0) AS speedup_vs_naive_p50;
SELECT cache, entries, rebuilds, round(last_rebuild_ms::numeric, 1) AS last_rebuild_ms
FROM killboard.cache_stats() WHERE cache IN ('profile_index', 'profiles', 'jump_graph');
ROLLBACK;
