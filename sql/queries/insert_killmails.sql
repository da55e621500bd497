INSERT INTO killboard.killmails (
    killmail_id, killmail_hash, killmail_time, solar_system_id, constellation_id, region_id, security,
    moon_id, war_id, position_x, position_y, position_z,
    victim_character_id, victim_corporation_id, victim_alliance_id, victim_faction_id,
    victim_ship_type_id, victim_ship_group_id, victim_damage_taken, attacker_count,
    total_value, fitted_value, destroyed_value, dropped_value, points, npc, solo, awox,
    location_id, labels, value_source, r2z2_sequence)
SELECT u.id, u.hash, to_timestamp(u.t::float8 / 1e6), u.sys, u.con, u.reg, u.sec,
       u.moon, u.war, u.px, u.py, u.pz,
       u.vch, u.vco, u.val, u.vfa, u.vst, u.vsg, u.dmg, u.natt,
       u.total::numeric / 100, u.fitted::numeric / 100, u.destroyed::numeric / 100, u.dropped::numeric / 100,
       u.points, u.npc, u.solo, u.awox, u.loc,
       CASE WHEN u.labels IS NULL THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(u.labels)) END,
       u.vsrc, u.seq
  FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int4[], $5::int4[], $6::int4[], $7::float4[],
              $8::int4[], $9::int4[], $10::float8[], $11::float8[], $12::float8[],
              $13::int8[], $14::int8[], $15::int8[], $16::int8[], $17::int4[], $18::int4[], $19::int8[], $20::int4[],
              $21::int8[], $22::int8[], $23::int8[], $24::int8[], $25::int4[], $26::bool[], $27::bool[], $28::bool[],
              $29::int8[], $30::jsonb[], $31::text[], $32::int8[])
       AS u(id, hash, t, sys, con, reg, sec, moon, war, px, py, pz, vch, vco, val, vfa, vst, vsg, dmg, natt,
            total, fitted, destroyed, dropped, points, npc, solo, awox, loc, labels, vsrc, seq)
    ON CONFLICT (killmail_id) DO NOTHING
RETURNING killmail_id
