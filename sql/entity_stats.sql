-- =============================================================================
-- pg_killboard: entity_stats, the hot read path
-- =============================================================================
-- One composite row per call, not a set (src/api/mod.rs, entity_stats_row).
-- The id, type and period come back as the first three columns, hence INOUT.
CREATE FUNCTION killboard.entity_stats(
    INOUT entity_id bigint,
    INOUT entity_type text,
    INOUT period text DEFAULT 'all',
    OUT kills bigint,
    OUT losses bigint,
    OUT isk_destroyed numeric,
    OUT isk_lost numeric,
    OUT efficiency double precision,
    OUT isk_efficiency double precision,
    OUT kill_loss_ratio double precision,
    OUT solo_kills bigint,
    OUT solo_losses bigint,
    OUT npc_kills bigint,
    OUT npc_losses bigint,
    OUT last_kill_time timestamp with time zone,
    OUT last_loss_time timestamp with time zone,
    OUT final_blows bigint,
    OUT points bigint,
    OUT damage_dealt bigint,
    OUT damage_taken bigint,
    OUT avg_attackers double precision,
    OUT as_of timestamp with time zone
) RETURNS record
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'entity_stats_row';
