//! Killmails in: the JSON shapes we accept (ESI, zKillboard API element, R2Z2,
//! RedisQ), validated into a typed `Killmail` with the path of any bad field.

pub mod flags;
pub mod parse;

use crate::model::Micros;

pub const MAX_ATTACKERS: usize = 100_000;
pub const MAX_ITEMS: usize = 100_000;
pub const MAX_ITEM_DEPTH: usize = 8;
/// 90 quadrillion ISK: far above any real killmail, and cents still fit an int8.
pub const MAX_VALUE_CENTS: i128 = 9_000_000_000_000_000_000;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct VictimIn {
    pub character_id: Option<i64>,
    pub corporation_id: Option<i64>,
    pub alliance_id: Option<i64>,
    pub faction_id: Option<i64>,
    pub ship_type_id: i64,
    pub damage_taken: i64,
    pub position: Option<[f64; 3]>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttackerIn {
    pub character_id: Option<i64>,
    pub corporation_id: Option<i64>,
    pub alliance_id: Option<i64>,
    pub faction_id: Option<i64>,
    pub ship_type_id: Option<i64>,
    pub weapon_type_id: Option<i64>,
    pub damage_done: i64,
    pub final_blow: bool,
    pub security_status: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ItemIn {
    pub index: i32,
    pub parent_index: Option<i32>,
    pub type_id: i64,
    pub flag: i64,
    pub singleton: i64,
    pub quantity_destroyed: i64,
    pub quantity_dropped: i64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Zkb {
    pub total_value_cents: Option<i128>,
    pub fitted_value_cents: Option<i128>,
    pub destroyed_value_cents: Option<i128>,
    pub dropped_value_cents: Option<i128>,
    pub points: Option<i64>,
    pub npc: Option<bool>,
    pub solo: Option<bool>,
    pub awox: Option<bool>,
    pub location_id: Option<i64>,
    pub labels: Option<Vec<String>>,
    pub hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Killmail {
    pub killmail_id: i64,
    pub hash: Option<String>,
    pub time: Micros,
    pub solar_system_id: i64,
    pub moon_id: Option<i64>,
    pub war_id: Option<i64>,
    pub victim: VictimIn,
    pub attackers: Vec<AttackerIn>,
    pub items: Vec<ItemIn>,
    pub zkb: Option<Zkb>,
    pub sequence_id: Option<i64>,
}
