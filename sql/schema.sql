-- =============================================================================
-- pg_killboard: killmail tables and the stats store
-- =============================================================================
-- Everything here lives in schema killboard (pinned by the control file).
-- Stats are kept by native triggers (src/triggers) and by ingest (src/ingest);
-- never write to the stats tables directly.

-- -----------------------------------------------------------------------------
-- Killmails
-- -----------------------------------------------------------------------------
CREATE TABLE killboard.killmails (
    killmail_id           bigint PRIMARY KEY CHECK (killmail_id > 0),
    killmail_hash         text,
    killmail_time         timestamptz NOT NULL,
    solar_system_id       integer NOT NULL CHECK (solar_system_id > 0),
    constellation_id      integer,          -- derived from the SDE when present
    region_id             integer,          -- derived from the SDE when present
    security              real,             -- derived from the SDE when present
    moon_id               integer,
    war_id                integer,
    position_x            double precision,
    position_y            double precision,
    position_z            double precision,
    victim_character_id   bigint CHECK (victim_character_id > 0),
    victim_corporation_id bigint CHECK (victim_corporation_id > 0),
    victim_alliance_id    bigint CHECK (victim_alliance_id > 0),
    victim_faction_id     bigint CHECK (victim_faction_id > 0),
    victim_ship_type_id   integer NOT NULL CHECK (victim_ship_type_id > 0),
    victim_ship_group_id  integer,          -- derived from the SDE when present
    victim_damage_taken   bigint NOT NULL DEFAULT 0,
    attacker_count        integer,          -- informational; stats count attacker rows
    -- zKillboard values. NULL flags are derived by zKillboard's rules (needs the SDE).
    total_value           numeric(20,2) CHECK (total_value >= 0 AND total_value < 9e16),
    fitted_value          numeric(20,2),
    destroyed_value       numeric(20,2),
    dropped_value         numeric(20,2),
    points                integer,
    npc                   boolean,
    solo                  boolean,
    awox                  boolean,
    location_id           bigint,
    labels                text[],
    value_source          text NOT NULL DEFAULT 'zkb'
                          CHECK (value_source IN ('zkb', 'prices', 'unknown', 'sql')),
    r2z2_sequence         bigint,
    ingested_at           timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE killboard.killmails IS
  'One row per killmail (ESI fields plus zKillboard values). INSERT/UPDATE/DELETE keep entity stats exact.';
COMMENT ON COLUMN killboard.killmails.value_source IS
  'zkb: totalValue from zKillboard; prices: hull + items from the price cache; unknown: no price, value 0; sql: written by plain SQL';

CREATE INDEX killmails_time_idx ON killboard.killmails (killmail_time);
CREATE INDEX killmails_victim_character_idx ON killboard.killmails (victim_character_id) WHERE victim_character_id IS NOT NULL;
CREATE INDEX killmails_victim_corporation_idx ON killboard.killmails (victim_corporation_id);
CREATE INDEX killmails_victim_alliance_idx ON killboard.killmails (victim_alliance_id) WHERE victim_alliance_id IS NOT NULL;
CREATE INDEX killmails_system_idx ON killboard.killmails (solar_system_id);

CREATE TABLE killboard.attackers (
    killmail_id     bigint  NOT NULL REFERENCES killboard.killmails ON DELETE CASCADE,
    attacker_index  integer NOT NULL CHECK (attacker_index >= 0),
    character_id    bigint CHECK (character_id > 0),
    corporation_id  bigint CHECK (corporation_id > 0),
    alliance_id     bigint CHECK (alliance_id > 0),
    faction_id      bigint CHECK (faction_id > 0),
    ship_type_id    integer CHECK (ship_type_id > 0),
    ship_group_id   integer,                -- derived from the SDE when present
    weapon_type_id  integer,
    damage_done     bigint NOT NULL DEFAULT 0,
    final_blow      boolean NOT NULL DEFAULT false,
    security_status real,
    PRIMARY KEY (killmail_id, attacker_index)
);
COMMENT ON TABLE killboard.attackers IS 'Attackers of a killmail, in ESI order (attacker_index from 0).';
CREATE INDEX attackers_character_idx ON killboard.attackers (character_id) WHERE character_id IS NOT NULL;
CREATE INDEX attackers_corporation_idx ON killboard.attackers (corporation_id) WHERE corporation_id IS NOT NULL;
CREATE INDEX attackers_alliance_idx ON killboard.attackers (alliance_id) WHERE alliance_id IS NOT NULL;

CREATE TABLE killboard.items (
    killmail_id        bigint  NOT NULL REFERENCES killboard.killmails ON DELETE CASCADE,
    item_index         integer NOT NULL CHECK (item_index >= 0),
    parent_index       integer,             -- container item (ESI nested items), NULL at top level
    item_type_id       integer NOT NULL CHECK (item_type_id > 0),
    flag               integer NOT NULL,
    singleton          integer NOT NULL DEFAULT 0,
    quantity_destroyed bigint NOT NULL DEFAULT 0,
    quantity_dropped   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (killmail_id, item_index)
);
COMMENT ON TABLE killboard.items IS 'Victim items (fitted, cargo, nested containers). They feed value and profile matching, not stats.';

-- -----------------------------------------------------------------------------
-- Stats store
-- -----------------------------------------------------------------------------
-- One row per entity. data is a compact varint encoding of every period
-- (killboard-core stats::record), so a long-tail character costs a few dozen
-- bytes. The key is one int8, the entity kind's code in the bits above 59
-- and the id below (killboard-core stats::credit::EntityKey): an index entry
-- of one int8 takes 16 bytes where (int8, int2) took 24, and a probe compares
-- once. Small transactions append their deltas to stats_delta instead (as do
-- removals on rows another writer holds); readers add both, and
-- advance_windows() folds the deltas in.
CREATE TABLE killboard.stats (
    entity_key  bigint PRIMARY KEY,
    data        bytea  NOT NULL
) WITH (fillfactor = 90);
COMMENT ON TABLE killboard.stats IS 'Per-entity stats for every period, compactly encoded; read with killboard.entity_stats().';
COMMENT ON COLUMN killboard.stats.entity_key IS
  'kind code << 59 | entity_id; codes: 1 character, 2 corporation, 3 alliance, 4 faction, 5 ship_type, 6 ship_group, 7 solar_system, 8 constellation, 9 region';
ALTER TABLE killboard.stats ALTER COLUMN data SET STORAGE MAIN;

CREATE TABLE killboard.stats_delta (
    entity_key  bigint NOT NULL,
    data        bytea  NOT NULL
);
CREATE INDEX stats_delta_entity_idx ON killboard.stats_delta (entity_key);
COMMENT ON TABLE killboard.stats_delta IS 'Append-only stats deltas (small transactions, and removals on rows another writer holds); readers add them, advance_windows() folds them.';

-- The single row of store-wide state: the time windows are measured from
-- as_of (moved only by advance_windows), and the credit mode the store was built in.
CREATE TABLE killboard.stats_state (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    as_of        timestamptz NOT NULL,
    kill_credit  text NOT NULL CHECK (kill_credit IN ('involved', 'final_blow')),
    rebuilt_at   timestamptz,
    advanced_at  timestamptz,
    stale_since  timestamptz      -- set by writes with killboard.maintain_stats = off
);
INSERT INTO killboard.stats_state (as_of, kill_credit) VALUES (now(), 'involved');
COMMENT ON TABLE killboard.stats_state IS 'as_of of the rolling windows and the kill credit mode the stats were built with.';
