-- =============================================================================
-- pg_killboard: entity_stats, the hot read path
-- =============================================================================
-- One composite row per call, not a set (src/api/mod.rs, entity_stats_row).
-- The result is a named row type rather than OUT parameters: each query's
-- executor start-up then copies the row descriptor from the type cache
-- instead of building it from the argument arrays in pg_proc (~8 µs of a
-- ~120 µs prepared lookup from a client, measured side by side).
CREATE TYPE killboard.entity_stats_result AS (
    entity_id       bigint,
    entity_type     text,
    period          text,
    kills           bigint,
    losses          bigint,
    isk_destroyed   numeric,
    isk_lost        numeric,
    efficiency      double precision,
    isk_efficiency  double precision,
    kill_loss_ratio double precision,
    solo_kills      bigint,
    solo_losses     bigint,
    npc_kills       bigint,
    npc_losses      bigint,
    last_kill_time  timestamp with time zone,
    last_loss_time  timestamp with time zone,
    final_blows     bigint,
    points          bigint,
    damage_dealt    bigint,
    damage_taken    bigint,
    avg_attackers   double precision,
    as_of           timestamp with time zone
);
COMMENT ON TYPE killboard.entity_stats_result IS 'One row of killboard.entity_stats().';

CREATE FUNCTION killboard.entity_stats(
    entity_id bigint,
    entity_type text,
    period text DEFAULT 'all'
) RETURNS killboard.entity_stats_result
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'entity_stats_row';
