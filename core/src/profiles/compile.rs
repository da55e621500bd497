//! Compilation of a validated filter into a native predicate, its evaluation,
//! and the index keys that say which killmails can possibly match it.

use super::filter::{Filter, Leaf, PartyKind, ShipLevel, Side};
use super::view::{KillmailView, PartyView};
use crate::sde::{JumpGraph, ModuleTag, SecurityBand};

/// A key of the inverted index. A killmail carries a set of keys; a profile is
/// a candidate when its key set meets the killmail's (or when it has none and
/// sits in the always-check list). Party and ship keys ignore the side, which
/// keeps the killmail's key set small and the condition still necessary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    System(i64),
    Constellation(i64),
    Region(i64),
    Band(u8),
    Tag(u8),
    Character(i64),
    Corporation(i64),
    Alliance(i64),
    Faction(i64),
    ShipType(i64),
    ShipGroup(i64),
    ShipCategory(i64),
    /// A place key and a weak key together (see [`pair_keys`]): a killmail
    /// carries it when it carries both. Lets `{"security_band": …,
    /// "module_tags": …}` wait for killmails with that band *and* tag instead
    /// of being checked on every killmail of the band.
    Pair(Place, Weak),
    /// A flag that is true ([`FLAG_SOLO`], [`FLAG_NPC`], [`FLAG_AWOX`]); a
    /// filter asking for `false` stays unindexed.
    Flag(u8),
    /// At least this many attackers, a power of two: a killmail with `n`
    /// attackers carries every power of two up to `n`, and `min_attackers: m`
    /// waits under the largest power of two not above `m`.
    Attackers(u32),
}

pub const FLAG_SOLO: u8 = 0;
pub const FLAG_NPC: u8 = 1;
pub const FLAG_AWOX: u8 = 2;

/// Keys a killmail has at most one of: the pair's first half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Place {
    Band(u8),
    Region(i64),
    Constellation(i64),
}

/// Unselective keys that pair with a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Weak {
    Tag(u8),
    ShipGroup(i64),
    ShipCategory(i64),
    Faction(i64),
}

impl Place {
    fn of(k: Key) -> Option<Place> {
        match k {
            Key::Band(b) => Some(Place::Band(b)),
            Key::Region(r) => Some(Place::Region(r)),
            Key::Constellation(c) => Some(Place::Constellation(c)),
            _ => None,
        }
    }
}

impl Weak {
    fn of(k: Key) -> Option<Weak> {
        match k {
            Key::Tag(t) => Some(Weak::Tag(t)),
            Key::ShipGroup(g) => Some(Weak::ShipGroup(g)),
            Key::ShipCategory(c) => Some(Weak::ShipCategory(c)),
            Key::Faction(f) => Some(Weak::Faction(f)),
            _ => None,
        }
    }
}

/// Most pair keys one profile may get (place keys × weak keys); beyond it the
/// profile stays under its single most selective conjunct.
const MAX_PAIRS: usize = 64;

impl Key {
    /// Rough share of killmails carrying the key; used to pick the most
    /// selective conjunct of an AND as the profile's index entry.
    fn weight(self) -> u32 {
        match self {
            Key::System(_) | Key::Character(_) => 1,
            Key::Corporation(_) => 2,
            Key::Alliance(_) => 3,
            Key::ShipType(_) => 5,
            Key::Constellation(_) => 10,
            Key::ShipGroup(_) => 20,
            Key::Faction(_) => 50,
            Key::Region(_) => 60,
            Key::ShipCategory(_) => 200,
            Key::Band(_) => 300,
            Key::Tag(_) => 500,
            Key::Flag(FLAG_AWOX) => 20,
            Key::Flag(FLAG_SOLO) => 150,
            Key::Flag(_) => 300,
            // Share of killmails with at least that many attackers, roughly.
            Key::Attackers(n) => match n {
                0..=1 => 1000,
                2..=3 => 600,
                4..=7 => 350,
                8..=15 => 200,
                16..=31 => 100,
                32..=63 => 50,
                _ => 20,
            },
            // Shares multiply (weights are per mille); at least 1.
            Key::Pair(p, w) => {
                let place = match p {
                    Place::Band(b) => Key::Band(b),
                    Place::Region(r) => Key::Region(r),
                    Place::Constellation(c) => Key::Constellation(c),
                };
                let weak = match w {
                    Weak::Tag(t) => Key::Tag(t),
                    Weak::ShipGroup(g) => Key::ShipGroup(g),
                    Weak::ShipCategory(c) => Key::ShipCategory(c),
                    Weak::Faction(f) => Key::Faction(f),
                };
                (place.weight() * weak.weight() / 1000).max(1)
            }
        }
    }
}

/// A compiled profile: the predicate (a filter whose `within_jumps` became a
/// system set) and its index keys (`None` = always check).
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub pred: Filter,
    pub keys: Option<Vec<Key>>,
}

impl Compiled {
    pub fn matches(&self, km: &KillmailView) -> bool {
        eval(&self.pred, km)
    }
}

/// Compile a validated filter. `within_jumps` is expanded by BFS over `graph`
/// here, once, so matching is a set lookup.
pub fn compile(filter: &Filter, graph: &JumpGraph) -> Compiled {
    let pred = resolve(filter, graph);
    let keys = keys_of(&pred).map(|(mut k, _)| {
        k.sort_unstable();
        k.dedup();
        k
    });
    Compiled { pred, keys }
}

fn resolve(f: &Filter, graph: &JumpGraph) -> Filter {
    match f {
        Filter::All(v) => Filter::All(v.iter().map(|x| resolve(x, graph)).collect()),
        Filter::Any(v) => Filter::Any(v.iter().map(|x| resolve(x, graph)).collect()),
        Filter::Not(x) => Filter::Not(Box::new(resolve(x, graph))),
        Filter::Leaf(Leaf::WithinJumps { system_id, jumps }) => {
            let mut ids: Vec<i64> = graph
                .within(*system_id, *jumps)
                .into_iter()
                .map(i64::from)
                .collect();
            ids.sort_unstable();
            Filter::Leaf(Leaf::Systems(ids))
        }
        Filter::Leaf(l) => Filter::Leaf(l.clone()),
    }
}

fn cost(keys: &[Key]) -> u64 {
    keys.iter().map(|k| u64::from(k.weight())).sum()
}

/// For an AND: pair keys from a conjunct made only of place keys and one made
/// only of weak keys, when that beats the single best conjunct. Correct
/// because each conjunct's keys are necessary for it to match, and a killmail
/// carries every (place, weak) pair of its own keys.
fn pair_keys(conjuncts: &[(Vec<Key>, u64)]) -> Option<(Vec<Key>, u64)> {
    let places = conjuncts.iter().filter_map(|(k, c)| {
        Some((
            k.iter()
                .map(|k| Place::of(*k))
                .collect::<Option<Vec<_>>>()?,
            *c,
        ))
    });
    let mut best: Option<(Vec<Key>, u64)> = None;
    for (ps, place_cost) in places {
        for (ks, weak_cost) in conjuncts {
            let Some(ws) = ks.iter().map(|k| Weak::of(*k)).collect::<Option<Vec<_>>>() else {
                continue;
            };
            if ps.is_empty() || ws.is_empty() || ps.len() * ws.len() > MAX_PAIRS {
                continue;
            }
            let keys: Vec<Key> = ps
                .iter()
                .flat_map(|p| ws.iter().map(|w| Key::Pair(*p, *w)))
                .collect();
            // Its candidates are a subset of either half's: never costlier.
            let c = cost(&keys).min(place_cost).min(*weak_cost);
            if best.as_ref().is_none_or(|(_, b)| c < *b) {
                best = Some((keys, c));
            }
        }
    }
    best
}

fn keys_of(f: &Filter) -> Option<(Vec<Key>, u64)> {
    match f {
        Filter::All(v) => {
            let conjuncts: Vec<(Vec<Key>, u64)> = v.iter().filter_map(keys_of).collect();
            let single = conjuncts.iter().min_by_key(|(_, cost)| *cost).cloned();
            match (single, pair_keys(&conjuncts)) {
                (Some(s), Some(p)) if p.1 <= s.1 => Some(p),
                (s, _) => s,
            }
        }
        Filter::Any(v) => {
            let mut all = Vec::new();
            let mut cost = 0u64;
            for x in v {
                let (k, c) = keys_of(x)?;
                all.extend(k);
                cost += c;
            }
            Some((all, cost))
        }
        Filter::Not(_) => None,
        Filter::Leaf(l) => {
            let keys = leaf_keys(l)?;
            let cost = cost(&keys);
            Some((keys, cost))
        }
    }
}

fn leaf_keys(l: &Leaf) -> Option<Vec<Key>> {
    let map = |ids: &[i64], f: fn(i64) -> Key| ids.iter().map(|&i| f(i)).collect::<Vec<_>>();
    Some(match l {
        Leaf::Systems(ids) => map(ids, Key::System),
        Leaf::Constellations(ids) => map(ids, Key::Constellation),
        Leaf::Regions(ids) => map(ids, Key::Region),
        Leaf::Bands(bits) => SecurityBand::ALL
            .iter()
            .filter(|b| bits & b.bit() != 0)
            .map(|b| Key::Band(*b as u8))
            .collect(),
        Leaf::ModuleTags(bits) => ModuleTag::ALL
            .iter()
            .filter(|t| bits & t.bit() != 0)
            .map(|t| Key::Tag(*t as u8))
            .collect(),
        Leaf::Party { kind, ids, .. } => match kind {
            PartyKind::Character => map(ids, Key::Character),
            PartyKind::Corporation => map(ids, Key::Corporation),
            PartyKind::Alliance => map(ids, Key::Alliance),
            PartyKind::Faction => map(ids, Key::Faction),
        },
        Leaf::Ship { level, ids, .. } => match level {
            ShipLevel::Type => map(ids, Key::ShipType),
            ShipLevel::Group => map(ids, Key::ShipGroup),
            ShipLevel::Category => map(ids, Key::ShipCategory),
        },
        Leaf::Solo(true) => vec![Key::Flag(FLAG_SOLO)],
        Leaf::Npc(true) => vec![Key::Flag(FLAG_NPC)],
        Leaf::Awox(true) => vec![Key::Flag(FLAG_AWOX)],
        Leaf::MinAttackers(n) if *n >= 1 => vec![Key::Attackers(1 << n.ilog2())],
        _ => return None,
    })
}

/// Every key a killmail carries, for candidate lookup.
pub fn killmail_keys(km: &KillmailView) -> Vec<Key> {
    let mut keys = Vec::with_capacity(8 + 6 * (km.attackers.len() + 1) + 16);
    keys.push(Key::System(i64::from(km.solar_system_id)));
    if let Some(c) = km.constellation_id {
        keys.push(Key::Constellation(i64::from(c)));
    }
    if let Some(r) = km.region_id {
        keys.push(Key::Region(i64::from(r)));
    }
    if let Some(b) = km.band() {
        keys.push(Key::Band(b as u8));
    }
    for t in ModuleTag::ALL {
        if km.module_tags & t.bit() != 0 {
            keys.push(Key::Tag(t as u8));
        }
    }
    for p in std::iter::once(&km.victim).chain(km.attackers.iter()) {
        if let Some(x) = p.character_id {
            keys.push(Key::Character(x));
        }
        if let Some(x) = p.corporation_id {
            keys.push(Key::Corporation(x));
        }
        if let Some(x) = p.alliance_id {
            keys.push(Key::Alliance(x));
        }
        if let Some(x) = p.faction_id {
            keys.push(Key::Faction(x));
        }
        if let Some(x) = p.ship_type_id {
            keys.push(Key::ShipType(i64::from(x)));
        }
        if let Some(x) = p.ship_group_id {
            keys.push(Key::ShipGroup(i64::from(x)));
        }
        if let Some(x) = p.ship_category_id {
            keys.push(Key::ShipCategory(i64::from(x)));
        }
    }
    for (on, flag) in [
        (km.solo, FLAG_SOLO),
        (km.npc, FLAG_NPC),
        (km.awox, FLAG_AWOX),
    ] {
        if on {
            keys.push(Key::Flag(flag));
        }
    }
    let mut n = 1u32;
    while n <= km.attacker_count {
        keys.push(Key::Attackers(n));
        n = match n.checked_mul(2) {
            Some(x) => x,
            None => break,
        };
    }
    keys.sort_unstable();
    keys.dedup();
    let places: Vec<Place> = keys.iter().filter_map(|k| Place::of(*k)).collect();
    let weak: Vec<Weak> = keys.iter().filter_map(|k| Weak::of(*k)).collect();
    for p in &places {
        for w in &weak {
            keys.push(Key::Pair(*p, *w));
        }
    }
    keys
}

fn has(ids: &[i64], x: Option<i64>) -> bool {
    x.is_some_and(|x| ids.binary_search(&x).is_ok())
}

fn party_id(p: &PartyView, kind: PartyKind) -> Option<i64> {
    match kind {
        PartyKind::Character => p.character_id,
        PartyKind::Corporation => p.corporation_id,
        PartyKind::Alliance => p.alliance_id,
        PartyKind::Faction => p.faction_id,
    }
}

fn ship_id(p: &PartyView, level: ShipLevel) -> Option<i64> {
    match level {
        ShipLevel::Type => p.ship_type_id,
        ShipLevel::Group => p.ship_group_id,
        ShipLevel::Category => p.ship_category_id,
    }
    .map(i64::from)
}

fn on_side(km: &KillmailView, side: Side, test: impl Fn(&PartyView) -> bool) -> bool {
    match side {
        Side::Victim => test(&km.victim),
        Side::Attacker => km.attackers.iter().any(test),
        Side::Involved => test(&km.victim) || km.attackers.iter().any(test),
    }
}

/// Evaluate a (compiled) filter. Unknown facts (no SDE row, NULL column) never
/// satisfy a leaf that asks about them.
pub fn eval(f: &Filter, km: &KillmailView) -> bool {
    match f {
        Filter::All(v) => v.iter().all(|x| eval(x, km)),
        Filter::Any(v) => v.iter().any(|x| eval(x, km)),
        Filter::Not(x) => !eval(x, km),
        Filter::Leaf(l) => match l {
            Leaf::Systems(ids) => has(ids, Some(i64::from(km.solar_system_id))),
            Leaf::Constellations(ids) => has(ids, km.constellation_id.map(i64::from)),
            Leaf::Regions(ids) => has(ids, km.region_id.map(i64::from)),
            Leaf::Bands(bits) => km.band().is_some_and(|b| bits & b.bit() != 0),
            Leaf::SecurityMin(x) => km.security.is_some_and(|s| s >= *x),
            Leaf::SecurityMax(x) => km.security.is_some_and(|s| s <= *x),
            // Only reached when a filter was evaluated without compile().
            Leaf::WithinJumps { system_id, jumps } => {
                *jumps == 0 && *system_id == km.solar_system_id
            }
            Leaf::Party { side, kind, ids } => on_side(km, *side, |p| has(ids, party_id(p, *kind))),
            Leaf::Ship { side, level, ids } => on_side(km, *side, |p| has(ids, ship_id(p, *level))),
            Leaf::ModuleTags(bits) => km.module_tags & bits != 0,
            Leaf::MinValue(x) => km.total_value >= *x,
            Leaf::MaxValue(x) => km.total_value <= *x,
            Leaf::MinAttackers(n) => km.attacker_count >= *n,
            Leaf::MaxAttackers(n) => km.attacker_count <= *n,
            Leaf::Solo(b) => km.solo == *b,
            Leaf::Npc(b) => km.npc == *b,
            Leaf::Awox(b) => km.awox == *b,
        },
    }
}
