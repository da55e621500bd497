SELECT s.constellation_id, s.region_id, s.security
FROM killboard.sde_systems s
WHERE s.solar_system_id = $1
