INSERT INTO killboard.attackers (
    killmail_id, attacker_index, character_id, corporation_id, alliance_id, faction_id,
    ship_type_id, ship_group_id, weapon_type_id, damage_done, final_blow, security_status)
SELECT * FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::int8[], $5::int8[], $6::int8[],
                     $7::int4[], $8::int4[], $9::int4[], $10::int8[], $11::bool[], $12::float4[])
