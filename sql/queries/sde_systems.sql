SELECT solar_system_id::int8, constellation_id::int8, region_id::int8, security
  FROM killboard.sde_systems WHERE solar_system_id = ANY($1)
