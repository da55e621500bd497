-- =============================================================================
-- pg_killboard: static data (SDE)
-- =============================================================================
-- Loaded from the CSV SDE by killboard.load_sde(dir) or `killboard-sidecar sde load`.
-- Ingest derives constellation, region, security and ship groups from here;
-- flag derivation (npc/solo/awox) and profile matching read groups and categories.

CREATE TABLE killboard.sde_categories (
    category_id integer PRIMARY KEY,
    name        text NOT NULL,
    published   boolean NOT NULL DEFAULT true
);
CREATE TABLE killboard.sde_groups (
    group_id    integer PRIMARY KEY,
    category_id integer NOT NULL,
    name        text NOT NULL,
    published   boolean NOT NULL DEFAULT true
);
CREATE TABLE killboard.sde_meta_groups (
    meta_group_id integer PRIMARY KEY,
    name          text NOT NULL
);
CREATE TABLE killboard.sde_market_groups (
    market_group_id integer PRIMARY KEY,
    parent_group_id integer,
    name            text NOT NULL,
    has_types       boolean NOT NULL DEFAULT false
);
CREATE TABLE killboard.sde_types (
    type_id         integer PRIMARY KEY,
    group_id        integer NOT NULL,
    name            text NOT NULL,
    mass            double precision,
    volume          double precision,
    capacity        double precision,
    portion_size    integer,
    race_id         integer,
    base_price      numeric,
    published       boolean NOT NULL DEFAULT false,
    market_group_id integer,
    meta_group_id   integer,      -- from invMetaTypes; NULL means Tech I
    parent_type_id  integer       -- from invMetaTypes
);
CREATE INDEX sde_types_group_idx ON killboard.sde_types (group_id);
CREATE TABLE killboard.sde_factions (
    faction_id             integer PRIMARY KEY,
    name                   text NOT NULL,
    corporation_id         integer,
    militia_corporation_id integer
);
CREATE TABLE killboard.sde_regions (
    region_id  integer PRIMARY KEY,
    name       text NOT NULL,
    faction_id integer
);
CREATE TABLE killboard.sde_constellations (
    constellation_id integer PRIMARY KEY,
    region_id        integer NOT NULL,
    name             text NOT NULL,
    faction_id       integer
);
CREATE TABLE killboard.sde_systems (
    solar_system_id  integer PRIMARY KEY,
    constellation_id integer NOT NULL,
    region_id        integer NOT NULL,
    name             text NOT NULL,
    security         double precision NOT NULL,
    security_class   text,
    faction_id       integer
);
CREATE TABLE killboard.sde_jumps (
    from_system_id integer NOT NULL,
    to_system_id   integer NOT NULL,
    PRIMARY KEY (from_system_id, to_system_id)
);

COMMENT ON TABLE killboard.sde_types IS 'SDE invTypes joined with invMetaTypes (meta group, parent type).';
COMMENT ON TABLE killboard.sde_systems IS 'SDE mapSolarSystems: constellation, region, security.';
COMMENT ON TABLE killboard.sde_jumps IS 'SDE mapSolarSystemJumps: stargate adjacency (both directions).';
