SELECT j.from_system_id, j.to_system_id FROM killboard.sde_jumps j
