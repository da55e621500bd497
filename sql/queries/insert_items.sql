INSERT INTO killboard.items (
    killmail_id, item_index, parent_index, item_type_id, flag, singleton, quantity_destroyed, quantity_dropped)
SELECT * FROM unnest($1::int8[], $2::int4[], $3::int4[], $4::int4[], $5::int4[], $6::int4[], $7::int8[], $8::int8[])
