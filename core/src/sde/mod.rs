//! Static data (SDE) facts as plain Rust, used by flag derivation and profile matching.
//!
//! This module is the ONE place where module tags are defined: the meta-group tags
//! (`T1`, `T2`, `Faction`, …) and the weapon families (`Hybrid`, `Laser`, …), plus
//! the fitted-slot rule that decides which victim items carry tags. The glue feeds
//! it rows from the `killboard.sde_*` tables; tests feed it `sde.json`.

use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::VecDeque;

/// What matching needs to know about a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TypeInfo {
    pub group_id: i32,
    pub category_id: Option<i32>,
    /// invMetaTypes meta group; `None` (or 0) means Tech I.
    pub meta_group_id: Option<i32>,
    pub market_group_id: Option<i32>,
}

/// What matching needs to know about a solar system.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SystemInfo {
    pub constellation_id: i32,
    pub region_id: i32,
    pub security: f64,
}

pub const CATEGORY_SHIP: i32 = 6;
pub const CATEGORY_MODULE: i32 = 7;
pub const CATEGORY_SUBSYSTEM: i32 = 32;
pub const REGION_POCHVEN: i32 = 10_000_070;
pub const REGION_WORMHOLE_MIN: i32 = 11_000_000;

// ---------------------------------------------------------------------------
// Security bands
// ---------------------------------------------------------------------------

/// Security bands of the contract. Region decides wormhole and Pochven first,
/// because their systems carry security values that would otherwise read as nullsec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecurityBand {
    Highsec = 0,
    Lowsec = 1,
    Nullsec = 2,
    Wormhole = 3,
    Pochven = 4,
}

impl SecurityBand {
    pub const ALL: [SecurityBand; 5] = [
        SecurityBand::Highsec,
        SecurityBand::Lowsec,
        SecurityBand::Nullsec,
        SecurityBand::Wormhole,
        SecurityBand::Pochven,
    ];

    pub fn parse(s: &str) -> Option<SecurityBand> {
        Some(match s {
            "highsec" => SecurityBand::Highsec,
            "lowsec" => SecurityBand::Lowsec,
            "nullsec" => SecurityBand::Nullsec,
            "wormhole" => SecurityBand::Wormhole,
            "pochven" => SecurityBand::Pochven,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SecurityBand::Highsec => "highsec",
            SecurityBand::Lowsec => "lowsec",
            SecurityBand::Nullsec => "nullsec",
            SecurityBand::Wormhole => "wormhole",
            SecurityBand::Pochven => "pochven",
        }
    }

    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Band of a system from its region and raw (unrounded) security.
    pub fn classify(region_id: i32, security: f64) -> SecurityBand {
        if region_id == REGION_POCHVEN {
            SecurityBand::Pochven
        } else if region_id >= REGION_WORMHOLE_MIN {
            SecurityBand::Wormhole
        } else if security >= 0.45 {
            SecurityBand::Highsec
        } else if security > 0.0 {
            SecurityBand::Lowsec
        } else {
            SecurityBand::Nullsec
        }
    }
}

// ---------------------------------------------------------------------------
// Module tags
// ---------------------------------------------------------------------------

/// Module tags. Meta-group tags come from `invMetaTypes.metaGroupID`; weapon
/// families from the item's SDE group (the market tree has no stable family
/// node, groups do). The bit position is the enum value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModuleTag {
    T1 = 0,
    T2 = 1,
    Faction = 2,
    Deadspace = 3,
    Officer = 4,
    Storyline = 5,
    T3 = 6,
    Abyssal = 7,
    Hybrid = 8,
    Projectile = 9,
    Laser = 10,
    Missile = 11,
    Drone = 12,
    Precursor = 13,
    Vorton = 14,
    Smartbomb = 15,
}

impl ModuleTag {
    pub const ALL: [ModuleTag; 16] = [
        ModuleTag::T1,
        ModuleTag::T2,
        ModuleTag::Faction,
        ModuleTag::Deadspace,
        ModuleTag::Officer,
        ModuleTag::Storyline,
        ModuleTag::T3,
        ModuleTag::Abyssal,
        ModuleTag::Hybrid,
        ModuleTag::Projectile,
        ModuleTag::Laser,
        ModuleTag::Missile,
        ModuleTag::Drone,
        ModuleTag::Precursor,
        ModuleTag::Vorton,
        ModuleTag::Smartbomb,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ModuleTag::T1 => "T1",
            ModuleTag::T2 => "T2",
            ModuleTag::Faction => "Faction",
            ModuleTag::Deadspace => "Deadspace",
            ModuleTag::Officer => "Officer",
            ModuleTag::Storyline => "Storyline",
            ModuleTag::T3 => "T3",
            ModuleTag::Abyssal => "Abyssal",
            ModuleTag::Hybrid => "Hybrid",
            ModuleTag::Projectile => "Projectile",
            ModuleTag::Laser => "Laser",
            ModuleTag::Missile => "Missile",
            ModuleTag::Drone => "Drone",
            ModuleTag::Precursor => "Precursor",
            ModuleTag::Vorton => "Vorton",
            ModuleTag::Smartbomb => "Smartbomb",
        }
    }

    pub fn parse(s: &str) -> Option<ModuleTag> {
        ModuleTag::ALL.iter().copied().find(|t| t.name() == s)
    }

    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// Names of every tag, for error messages and docs.
    pub fn names() -> Vec<&'static str> {
        ModuleTag::ALL.iter().map(|t| t.name()).collect()
    }
}

/// Tag of a meta group id. Structure variants fold into their ship-module
/// counterparts; Premium/Limited Time are cosmetic-distribution metas of T1 items.
pub fn meta_tag(meta_group_id: Option<i32>) -> ModuleTag {
    match meta_group_id.unwrap_or(0) {
        2 | 53 => ModuleTag::T2,
        3 => ModuleTag::Storyline,
        4 | 52 => ModuleTag::Faction,
        5 => ModuleTag::Officer,
        6 => ModuleTag::Deadspace,
        14 => ModuleTag::T3,
        15 => ModuleTag::Abyssal,
        _ => ModuleTag::T1,
    }
}

/// Weapon family of an SDE group: the weapons themselves, their damage
/// upgrades and their rigs (a "Laser fit" is lasers plus heat sinks).
pub fn weapon_family(group_id: i32) -> Option<ModuleTag> {
    Some(match group_id {
        // Hybrid Weapon, Magnetic Field Stabilizer, Rig Hybrid Weapon
        74 | 302 | 776 => ModuleTag::Hybrid,
        // Projectile Weapon, Gyrostabilizer, Rig Projectile Weapon
        55 | 59 | 777 => ModuleTag::Projectile,
        // Energy Weapon, Heat Sink, Rig Energy Weapon
        53 | 205 | 775 => ModuleTag::Laser,
        // Missile launchers of every size, Ballistic Control System,
        // Missile Guidance Enhancer/Computer, Rig Launcher
        56 | 506 | 507 | 508 | 509 | 510 | 511 | 512 | 524 | 771 | 862 | 1245 | 1673 | 1674
        | 367 | 1395 | 1396 | 779 => ModuleTag::Missile,
        // Drone modules and upgrades, Rig Drones
        586 | 644 | 645 | 646 | 647 | 1292 | 357 | 778 => ModuleTag::Drone,
        // Precursor Weapon (Entropic Disintegrator), Entropic Radiation Sink
        1986 | 1988 => ModuleTag::Precursor,
        // Vorton Projector and its upgrade
        4060 | 4067 => ModuleTag::Vorton,
        72 => ModuleTag::Smartbomb,
        _ => return None,
    })
}

/// Tags carried by one type (meta group always, weapon family when any).
pub fn type_tags(info: &TypeInfo) -> u32 {
    let mut bits = meta_tag(info.meta_group_id).bit();
    if let Some(f) = weapon_family(info.group_id) {
        bits |= f.bit();
    }
    bits
}

/// Item flags of fitting slots: low 11–18, mid 19–26, high 27–34, rigs 92–99,
/// subsystems 125–132.
pub fn is_fitting_flag(flag: i32) -> bool {
    (11..=34).contains(&flag) || (92..=99).contains(&flag) || (125..=132).contains(&flag)
}

/// One victim item as far as the fitted-slot rule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemRef {
    pub type_id: i32,
    pub flag: i32,
    /// false for items inside a container (ESI nested `items`).
    pub top_level: bool,
}

/// The fitted-slot rule: a top-level item in a fitting slot whose category is
/// Module or Subsystem. Charges share their weapon's flag but are category 8, so
/// the category test is what keeps them out.
pub fn is_fitted_module(item: &ItemRef, info: Option<&TypeInfo>) -> bool {
    item.top_level
        && is_fitting_flag(item.flag)
        && matches!(
            info.and_then(|i| i.category_id),
            Some(CATEGORY_MODULE) | Some(CATEGORY_SUBSYSTEM)
        )
}

/// Union of the tags of the victim's fitted modules.
pub fn fitted_module_tags<F>(items: &[ItemRef], mut lookup: F) -> u32
where
    F: FnMut(i32) -> Option<TypeInfo>,
{
    let mut bits = 0;
    for item in items {
        if !item.top_level || !is_fitting_flag(item.flag) {
            continue;
        }
        let info = lookup(item.type_id);
        if is_fitted_module(item, info.as_ref()) {
            if let Some(info) = info {
                bits |= type_tags(&info);
            }
        }
    }
    bits
}

// ---------------------------------------------------------------------------
// Jump graph
// ---------------------------------------------------------------------------

/// Stargate adjacency. Edges are stored in both directions whatever the input
/// held, since the SDE lists each gate once per side but extracts may not.
#[derive(Debug, Default, Clone)]
pub struct JumpGraph {
    adj: FxHashMap<i32, Vec<i32>>,
}

impl JumpGraph {
    pub fn from_edges<I: IntoIterator<Item = (i32, i32)>>(edges: I) -> JumpGraph {
        let mut adj: FxHashMap<i32, Vec<i32>> = FxHashMap::default();
        for (a, b) in edges {
            if a == b {
                continue;
            }
            adj.entry(a).or_default().push(b);
            adj.entry(b).or_default().push(a);
        }
        for v in adj.values_mut() {
            v.sort_unstable();
            v.dedup();
        }
        JumpGraph { adj }
    }

    pub fn edge_count(&self) -> usize {
        self.adj.values().map(Vec::len).sum::<usize>() / 2
    }

    pub fn neighbours(&self, system: i32) -> &[i32] {
        self.adj.get(&system).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Systems at most `jumps` gate jumps from `start` (BFS), `start` included.
    /// A system without gates (wormhole space) reaches only itself.
    pub fn within(&self, start: i32, jumps: u32) -> FxHashSet<i32> {
        let mut seen = FxHashSet::default();
        seen.insert(start);
        let mut queue = VecDeque::new();
        queue.push_back((start, 0u32));
        while let Some((sys, d)) = queue.pop_front() {
            if d == jumps {
                continue;
            }
            for &n in self.neighbours(sys) {
                if seen.insert(n) {
                    queue.push_back((n, d + 1));
                }
            }
        }
        seen
    }
}

// ---------------------------------------------------------------------------
// In-memory SDE (tests, benches, and the jsonb path when no tables are needed)
// ---------------------------------------------------------------------------

/// Lookups the matcher needs; the glue implements it over its LRU caches.
pub trait StaticData {
    fn type_info(&mut self, type_id: i32) -> Option<TypeInfo>;
    fn system_info(&mut self, system_id: i32) -> Option<SystemInfo>;
}

/// A whole SDE in hash maps.
#[derive(Debug, Default, Clone)]
pub struct MemorySde {
    pub types: FxHashMap<i32, TypeInfo>,
    pub systems: FxHashMap<i32, SystemInfo>,
    pub jumps: JumpGraph,
}

impl StaticData for MemorySde {
    fn type_info(&mut self, type_id: i32) -> Option<TypeInfo> {
        self.types.get(&type_id).copied()
    }
    fn system_info(&mut self, system_id: i32) -> Option<SystemInfo> {
        self.systems.get(&system_id).copied()
    }
}

impl MemorySde {
    /// Reads the trimmed SDE of the Shrike test corpus (`esi_killmails/sde.json`):
    /// `types{id:{group_id, category_id, meta_group_id, market_group_id}}`,
    /// `systems{id:{constellation_id, region_id, security}}`. It has no jumps.
    pub fn from_shrike_json(v: &serde_json::Value) -> MemorySde {
        let mut sde = MemorySde::default();
        let int =
            |o: &serde_json::Value, k: &str| o.get(k).and_then(|x| x.as_i64()).map(|x| x as i32);
        if let Some(types) = v.get("types").and_then(|t| t.as_object()) {
            for (id, t) in types {
                let (Ok(id), Some(group_id)) = (id.parse::<i32>(), int(t, "group_id")) else {
                    continue;
                };
                sde.types.insert(
                    id,
                    TypeInfo {
                        group_id,
                        category_id: int(t, "category_id"),
                        meta_group_id: int(t, "meta_group_id").filter(|m| *m != 0),
                        market_group_id: int(t, "market_group_id").filter(|m| *m != 0),
                    },
                );
            }
        }
        if let Some(systems) = v.get("systems").and_then(|t| t.as_object()) {
            for (id, s) in systems {
                let Ok(id) = id.parse::<i32>() else { continue };
                let (Some(c), Some(r), Some(sec)) = (
                    int(s, "constellation_id"),
                    int(s, "region_id"),
                    s.get("security").and_then(|x| x.as_f64()),
                ) else {
                    continue;
                };
                sde.systems.insert(
                    id,
                    SystemInfo {
                        constellation_id: c,
                        region_id: r,
                        security: sec,
                    },
                );
            }
        }
        sde
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_follow_the_contract() {
        assert_eq!(
            SecurityBand::classify(10000002, 0.9459),
            SecurityBand::Highsec
        );
        assert_eq!(
            SecurityBand::classify(10000002, 0.45),
            SecurityBand::Highsec
        );
        assert_eq!(
            SecurityBand::classify(10000002, 0.4499),
            SecurityBand::Lowsec
        );
        assert_eq!(
            SecurityBand::classify(10000002, 0.0001),
            SecurityBand::Lowsec
        );
        assert_eq!(SecurityBand::classify(10000002, 0.0), SecurityBand::Nullsec);
        assert_eq!(
            SecurityBand::classify(10000060, -0.52),
            SecurityBand::Nullsec
        );
        assert_eq!(
            SecurityBand::classify(11000001, -1.0),
            SecurityBand::Wormhole
        );
        assert_eq!(SecurityBand::classify(10000070, 0.7), SecurityBand::Pochven);
        for b in SecurityBand::ALL {
            assert_eq!(SecurityBand::parse(b.name()), Some(b));
        }
        assert_eq!(SecurityBand::parse("deepspace"), None);
    }

    #[test]
    fn meta_groups_map_to_tags_and_missing_meta_is_t1() {
        assert_eq!(meta_tag(None), ModuleTag::T1);
        assert_eq!(meta_tag(Some(0)), ModuleTag::T1);
        assert_eq!(meta_tag(Some(1)), ModuleTag::T1);
        assert_eq!(meta_tag(Some(2)), ModuleTag::T2);
        assert_eq!(meta_tag(Some(3)), ModuleTag::Storyline);
        assert_eq!(meta_tag(Some(4)), ModuleTag::Faction);
        assert_eq!(meta_tag(Some(5)), ModuleTag::Officer);
        assert_eq!(meta_tag(Some(6)), ModuleTag::Deadspace);
        assert_eq!(meta_tag(Some(53)), ModuleTag::T2);
        for t in ModuleTag::ALL {
            assert_eq!(ModuleTag::parse(t.name()), Some(t));
        }
        assert_eq!(ModuleTag::parse("t2"), None);
    }

    #[test]
    fn weapon_families_cover_weapons_and_upgrades() {
        assert_eq!(weapon_family(74), Some(ModuleTag::Hybrid));
        assert_eq!(weapon_family(302), Some(ModuleTag::Hybrid));
        assert_eq!(weapon_family(55), Some(ModuleTag::Projectile));
        assert_eq!(weapon_family(53), Some(ModuleTag::Laser));
        assert_eq!(weapon_family(510), Some(ModuleTag::Missile));
        assert_eq!(weapon_family(645), Some(ModuleTag::Drone));
        assert_eq!(weapon_family(1986), Some(ModuleTag::Precursor));
        assert_eq!(weapon_family(40), None); // shield booster
    }

    fn info(group: i32, cat: i32, meta: Option<i32>) -> TypeInfo {
        TypeInfo {
            group_id: group,
            category_id: Some(cat),
            meta_group_id: meta,
            market_group_id: None,
        }
    }

    #[test]
    fn fitted_rule_skips_charges_cargo_drones_and_nested_items() {
        let types: FxHashMap<i32, TypeInfo> = [
            (3082, info(74, 7, Some(2))),     // Neutron Blaster Cannon II
            (230, info(85, 8, None)),         // Antimatter charge
            (2488, info(100, 18, Some(2))),   // drone
            (31790, info(782, 7, None)),      // rig, T1
            (29990, info(954, 32, Some(14))), // T3 subsystem
            (3178, info(55, 7, Some(4))),     // faction autocannon
        ]
        .into_iter()
        .collect();
        let lookup = |t: i32| types.get(&t).copied();
        let it = |type_id, flag, top_level| ItemRef {
            type_id,
            flag,
            top_level,
        };
        // A blaster II in a high slot with its charge: T2 + Hybrid only.
        assert_eq!(
            fitted_module_tags(&[it(3082, 27, true), it(230, 27, true)], lookup),
            ModuleTag::T2.bit() | ModuleTag::Hybrid.bit()
        );
        // Charges alone, drones in the bay, cargo and nested items carry nothing.
        assert_eq!(fitted_module_tags(&[it(230, 27, true)], lookup), 0);
        assert_eq!(fitted_module_tags(&[it(2488, 87, true)], lookup), 0);
        assert_eq!(fitted_module_tags(&[it(3178, 5, true)], lookup), 0);
        assert_eq!(fitted_module_tags(&[it(3082, 27, false)], lookup), 0);
        // Rigs and subsystems count; unknown types do not.
        assert_eq!(
            fitted_module_tags(&[it(31790, 92, true)], lookup),
            ModuleTag::T1.bit()
        );
        assert_eq!(
            fitted_module_tags(&[it(29990, 125, true)], lookup),
            ModuleTag::T3.bit()
        );
        assert_eq!(fitted_module_tags(&[it(999999, 11, true)], lookup), 0);
        // Slot edges.
        assert!(
            is_fitting_flag(11)
                && is_fitting_flag(34)
                && is_fitting_flag(92)
                && is_fitting_flag(132)
        );
        assert!(
            !is_fitting_flag(10)
                && !is_fitting_flag(35)
                && !is_fitting_flag(100)
                && !is_fitting_flag(133)
        );
    }

    #[test]
    fn bfs_counts_jumps_in_both_directions() {
        // 1 - 2 - 3 - 4, and 2 - 5; edges given one way only.
        let g = JumpGraph::from_edges([(1, 2), (2, 3), (3, 4), (5, 2)]);
        assert_eq!(g.edge_count(), 4);
        let set = |v: &[i32]| v.iter().copied().collect::<FxHashSet<i32>>();
        assert_eq!(g.within(1, 0), set(&[1]));
        assert_eq!(g.within(1, 1), set(&[1, 2]));
        assert_eq!(g.within(1, 2), set(&[1, 2, 3, 5]));
        assert_eq!(g.within(4, 2), set(&[4, 3, 2]));
        assert_eq!(g.within(5, 10), set(&[1, 2, 3, 4, 5]));
        assert_eq!(g.within(99, 3), set(&[99]));
    }
}
