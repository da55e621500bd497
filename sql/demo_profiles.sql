-- =============================================================================
-- pg_killboard demo: filter profiles over the sample killmails
-- =============================================================================
-- Run after the fixture SDE (SELECT killboard.load_sde('<repo>/fixtures/sde'))
-- and the sample killmails are loaded. Idempotent: demo profiles are replaced.

DELETE FROM killboard.profiles WHERE name LIKE 'demo: %';

INSERT INTO killboard.profiles (name, filter) VALUES
  ('demo: T2-fitted losses over 100M in lowsec',
   '{"module_tags": ["T2"], "min_value": 100000000, "security_band": ["lowsec"]}'),
  ('demo: capital kills within 5 jumps of Kuomi',
   '{"victim_ship_group_ids": [30, 485, 547, 659, 883, 902, 1538], "within_jumps": {"system_id": 30003066, "jumps": 5}}'),
  ('demo: capital or supercapital kills anywhere',
   '{"victim_ship_group_ids": [30, 485, 547, 659, 883, 902, 1538]}'),
  ('demo: faction, deadspace or officer fits',
   '{"module_tags": ["Faction", "Deadspace", "Officer"]}'),
  ('demo: hybrid or projectile fits in nullsec, no pods',
   '{"module_tags": ["Hybrid", "Projectile"], "security_band": ["nullsec"], "not": {"victim_ship_group_ids": [29]}}'),
  ('demo: big fights (50+ attackers) or kills over 1B',
   '{"any": [{"min_attackers": 50}, {"min_value": 1000000000}]}');

-- A filter with a mistake is refused with the path of the problem (22023).
DO $$
BEGIN
    INSERT INTO killboard.profiles (name, filter)
    VALUES ('demo: broken', '{"any": [{"module_tags": ["T2"]}, {"within_jumps": {"system_id": 30000142, "jumps": -1}}]}');
EXCEPTION WHEN invalid_parameter_value THEN
    RAISE NOTICE 'rejected as expected: %', SQLERRM;
END
$$;

-- Which stored killmails each profile matches (on demand; profiles created
-- after the killmails were loaded have no profile_matches rows for them).
SELECT p.name AS profile,
       count(*) AS killmails,
       (array_agg(k.killmail_id ORDER BY k.killmail_id))[1:8] AS first_killmail_ids
FROM killboard.killmails k
CROSS JOIN LATERAL killboard.match_profiles(k.killmail_id) AS m(profile_id)
JOIN killboard.profiles p ON p.profile_id = m.profile_id
WHERE p.name LIKE 'demo: %'
GROUP BY p.name
ORDER BY p.name;

-- Matching a killmail that is not stored (the R2Z2 example shape).
SELECT p.name AS profile
FROM killboard.match_profiles('{"killmail_id": 1, "esi": {"killmail_id": 1, "solar_system_id": 30002813,
        "victim": {"ship_type_id": 587, "items": [{"item_type_id": 2881, "flag": 27, "quantity_destroyed": 1}]},
        "attackers": [{"character_id": 90000002}]},
      "zkb": {"totalValue": 150000000}}'::jsonb) AS m(profile_id)
JOIN killboard.profiles p ON p.profile_id = m.profile_id;

SELECT cache, hits, misses, evictions, entries, rebuilds, round(last_rebuild_ms::numeric, 2) AS last_rebuild_ms
FROM killboard.cache_stats();
