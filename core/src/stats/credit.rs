//! Kill credit: the one rule for who gets what from a killmail.
//!
//! - `involved` (zKillboard): every distinct attacker entity of each kind gets
//!   one kill; `final_blow` (EDK): only the final-blow attacker's entities.
//! - Every victim entity gets one loss; an entity on both sides gets both.
//! - Ship type/group: attackers' ships get kills, the victim's ship the loss.
//! - Solar system, constellation, region: each killmail there is a kill, no losses.

use std::collections::HashMap;

use crate::error::{KillboardError, Result, SqlState};
use crate::model::{KillState, Party};
use crate::stats::kinds::{CreditMode, EntityKind, ALL_PERIODS};
use crate::stats::record::{field, Counters, Record};
use crate::windows::PeriodMask;

/// An entity: kind first, so the derived order is the order of the stored key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityKey {
    pub kind: EntityKind,
    pub id: i64,
}

/// Stats rows are keyed by one int8: the kind code in the bits above
/// `ID_BITS`, the id below. One int8 key costs 16 B an index entry where
/// (int8, int2) cost 24, and compares once. EVE ids fit in 32 bits; 2^59 - 1
/// leaves room for any id a killboard will see.
pub const ID_BITS: u32 = 59;
pub const MAX_ENTITY_ID: i64 = (1 << ID_BITS) - 1;

impl EntityKey {
    /// The stored key; an id outside 1..=MAX_ENTITY_ID has none.
    pub fn stored(self) -> Result<i64> {
        if self.id <= 0 || self.id > MAX_ENTITY_ID {
            return Err(KillboardError::at(
                SqlState::NumericValueOutOfRange,
                format!("{}_id", self.kind.name()),
                format!(
                    "{} id {} is out of range for stats (1 to {MAX_ENTITY_ID})",
                    self.kind.name(),
                    self.id
                ),
            ));
        }
        Ok(((self.kind.code() as i64) << ID_BITS) | self.id)
    }

    /// The entity of a stored key; None for a kind code this version does not know.
    pub fn from_stored(key: i64) -> Option<EntityKey> {
        let kind = EntityKind::from_code(i16::try_from(key >> ID_BITS).ok()?)?;
        Some(EntityKey {
            kind,
            id: key & MAX_ENTITY_ID,
        })
    }

    /// The stored keys of one kind: [lo, hi].
    pub fn kind_range(kind: EntityKind) -> (i64, i64) {
        let lo = (kind.code() as i64) << ID_BITS;
        (lo, lo | MAX_ENTITY_ID)
    }
}

/// Every entity `k` can credit has a stored key (ids in range): checked
/// before a killmail's credits are taken, so a bad id fails its statement
/// with the field named, never a flush or a rebuild half-way.
pub fn check_ids(k: &KillState) -> Result<()> {
    let bad = |path: String, kind: EntityKind, id: i64| {
        KillboardError::at(
            SqlState::NumericValueOutOfRange,
            path,
            format!(
                "{} id {id} of killmail {} is out of range for stats (1 to {MAX_ENTITY_ID})",
                kind.name(),
                k.killmail_id
            ),
        )
    };
    let in_range = |id: i64| (1..=MAX_ENTITY_ID).contains(&id);
    for (i, a) in std::iter::once(&k.victim)
        .chain(k.attackers.iter().map(|a| &a.party))
        .enumerate()
    {
        for (kind, id) in party_entities(a) {
            match id {
                Some(id) if !in_range(id) => {
                    let side = match i {
                        0 => "victim".to_string(),
                        n => format!("attackers[{}]", n - 1),
                    };
                    return Err(bad(format!("{side}.{}_id", kind.name()), kind, id));
                }
                _ => {}
            }
        }
    }
    for (kind, id) in [
        (EntityKind::SolarSystem, Some(k.solar_system_id)),
        (EntityKind::Constellation, k.constellation_id),
        (EntityKind::Region, k.region_id),
    ] {
        match id {
            Some(id) if !in_range(id) => return Err(bad(format!("{}_id", kind.name()), kind, id)),
            _ => {}
        }
    }
    Ok(())
}

/// Merged deltas keyed by entity. Sorted at flush time so every writer locks
/// rows in the same order.
pub type DeltaMap = HashMap<EntityKey, Record>;

fn party_entities(p: &Party) -> [(EntityKind, Option<i64>); 6] {
    [
        (EntityKind::Character, p.character_id),
        (EntityKind::Corporation, p.corporation_id),
        (EntityKind::Alliance, p.alliance_id),
        (EntityKind::Faction, p.faction_id),
        (EntityKind::ShipType, p.ship_type_id),
        (EntityKind::ShipGroup, p.ship_group_id),
    ]
}

/// What one killmail gives one credited attacker-side entity.
#[derive(Default, Clone, Copy)]
struct KillShare {
    // i128: two attackers with damage near i64::MAX (hostile input) must not overflow.
    damage: i128,
    final_blow: bool,
}

/// Add `sign` × the credits of `k` for the periods in `mask` to `out`.
/// `sign` is +1 for a killmail coming in, -1 for one leaving (delete, the old
/// side of an update, or a window it has aged out of).
pub fn credit(
    k: &KillState,
    mode: CreditMode,
    mask: PeriodMask,
    sign: i128,
    only: Option<EntityKey>,
    out: &mut DeltaMap,
) {
    if mask.is_empty() {
        return;
    }
    for_each_credit(k, mode, |key, c, is_kill| {
        if only.is_some_and(|o| o != key) {
            return;
        }
        let rec = out.entry(key).or_default();
        let c = c.scaled(sign);
        for p in ALL_PERIODS {
            if mask.contains(p) {
                rec.periods[p.index()].add(&c);
            }
        }
        // Last times are all-time maxima: only the all-time pass moves them.
        if mask.contains(crate::stats::kinds::Period::All) {
            let slot = match (is_kill, sign > 0) {
                (true, true) => &mut rec.last_kill,
                (false, true) => &mut rec.last_loss,
                (true, false) => &mut rec.removed_kill,
                (false, false) => &mut rec.removed_loss,
            };
            *slot = Some(slot.map_or(k.time, |t| t.max(k.time)));
        }
    });
}

/// Call `f(entity, counters, is_kill)` once per entity `k` credits, with the
/// counters one killmail gives it (unsigned, for a single period). The one
/// place the credit rules live; `credit` and the rebuild accumulate from it.
pub fn for_each_credit(
    k: &KillState,
    mode: CreditMode,
    mut f: impl FnMut(EntityKey, &Counters, bool),
) {
    let flags = k.flags;
    let v = k.value_cents;
    let n_att = k.attackers.len() as i128;

    let mut kill = Counters::default();
    kill.0[field::KILLS] = 1;
    kill.0[field::ISK_DESTROYED] = v;
    kill.0[field::SOLO_KILLS] = flags.solo as i128;
    kill.0[field::NPC_KILLS] = flags.npc as i128;
    kill.0[field::POINTS] = k.points as i128;
    kill.0[field::ATTACKERS_SUM] = n_att;

    let mut loss = Counters::default();
    loss.0[field::LOSSES] = 1;
    loss.0[field::ISK_LOST] = v;
    loss.0[field::SOLO_LOSSES] = flags.solo as i128;
    loss.0[field::NPC_LOSSES] = flags.npc as i128;
    loss.0[field::DAMAGE_TAKEN] = k.victim_damage_taken as i128;

    // Attacker side: merge per entity first, so shared corporations count once.
    let mut shares: Vec<(EntityKey, KillShare)> = Vec::new();
    for a in &k.attackers {
        if mode == CreditMode::FinalBlow && !a.final_blow {
            continue;
        }
        for (kind, id) in party_entities(&a.party) {
            let Some(id) = id else { continue };
            let key = EntityKey { id, kind };
            match shares.iter_mut().find(|(k2, _)| *k2 == key) {
                Some((_, s)) => {
                    s.damage += a.damage_done as i128;
                    s.final_blow |= a.final_blow;
                }
                None => shares.push((
                    key,
                    KillShare {
                        damage: a.damage_done as i128,
                        final_blow: a.final_blow,
                    },
                )),
            }
        }
    }
    for (key, s) in shares {
        let mut c = kill;
        c.0[field::DAMAGE_DEALT] = s.damage;
        c.0[field::FINAL_BLOWS] = s.final_blow as i128;
        f(key, &c, true);
    }

    for (kind, id) in party_entities(&k.victim) {
        if let Some(id) = id {
            f(EntityKey { id, kind }, &loss, false);
        }
    }

    for (kind, id) in [
        (EntityKind::SolarSystem, Some(k.solar_system_id)),
        (EntityKind::Constellation, k.constellation_id),
        (EntityKind::Region, k.region_id),
    ] {
        if let Some(id) = id {
            f(EntityKey { id, kind }, &kill, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttackerState, Flags};
    use crate::stats::kinds::Period;

    fn att(ch: i64, corp: i64, dmg: i64, fb: bool) -> AttackerState {
        AttackerState {
            party: Party {
                character_id: Some(ch),
                corporation_id: Some(corp),
                alliance_id: Some(99),
                ship_type_id: Some(587),
                ..Default::default()
            },
            damage_done: dmg,
            final_blow: fb,
        }
    }
    fn km() -> KillState {
        KillState {
            killmail_id: 1,
            time: 1_000,
            solar_system_id: 30_000_142,
            constellation_id: Some(20_000_020),
            region_id: Some(10_000_002),
            value_cents: 100_00,
            points: 5,
            flags: Flags {
                npc: false,
                solo: false,
                awox: false,
            },
            victim: Party {
                character_id: Some(7),
                corporation_id: Some(70),
                ship_type_id: Some(670),
                ..Default::default()
            },
            victim_damage_taken: 300,
            attackers: vec![
                att(1, 10, 100, true),
                att(2, 10, 150, false),
                att(3, 11, 50, false),
            ],
        }
    }
    #[test]
    fn stored_keys_round_trip_and_sort_by_kind_then_id() {
        let keys = [
            EntityKey {
                kind: EntityKind::Character,
                id: 1,
            },
            EntityKey {
                kind: EntityKind::Character,
                id: 2_100_000_000,
            },
            EntityKey {
                kind: EntityKind::Character,
                id: MAX_ENTITY_ID,
            },
            EntityKey {
                kind: EntityKind::Corporation,
                id: 1,
            },
            EntityKey {
                kind: EntityKind::Region,
                id: MAX_ENTITY_ID,
            },
        ];
        let stored: Vec<i64> = keys.iter().map(|k| k.stored().unwrap()).collect();
        // The derived order is the stored (index) order.
        assert!(stored.windows(2).all(|w| w[0] < w[1]));
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for (k, s) in keys.iter().zip(&stored) {
            assert!(*s > 0);
            assert_eq!(EntityKey::from_stored(*s), Some(*k));
            let (lo, hi) = EntityKey::kind_range(k.kind);
            assert!((lo..=hi).contains(s));
        }
        // 9 kinds in 4 bits above the id; an unknown code has no entity.
        assert_eq!(EntityKey::from_stored(15 << ID_BITS | 5), None);
        for id in [0, -1, MAX_ENTITY_ID + 1, i64::MAX] {
            let e = EntityKey {
                kind: EntityKind::Alliance,
                id,
            }
            .stored()
            .unwrap_err();
            assert_eq!(e.sqlstate(), "22003");
            assert_eq!(e.path.as_deref(), Some("alliance_id"));
        }
    }

    #[test]
    fn ids_no_key_can_hold_are_named_by_their_field() {
        assert!(check_ids(&km()).is_ok());
        let mut k = km();
        k.attackers[2].party.alliance_id = Some(MAX_ENTITY_ID + 1);
        let e = check_ids(&k).unwrap_err();
        assert_eq!(e.sqlstate(), "22003");
        assert_eq!(e.path.as_deref(), Some("attackers[2].alliance_id"));
        let mut k = km();
        k.victim.corporation_id = Some(1 << 62);
        assert_eq!(
            check_ids(&k).unwrap_err().path.as_deref(),
            Some("victim.corporation_id")
        );
        let mut k = km();
        k.region_id = Some(0);
        assert_eq!(
            check_ids(&k).unwrap_err().path.as_deref(),
            Some("region_id")
        );
    }

    fn get(m: &DeltaMap, kind: EntityKind, id: i64) -> Counters {
        m.get(&EntityKey { id, kind })
            .map(|r| r.periods[0])
            .unwrap_or_default()
    }

    #[test]
    fn involved_credits_shared_corporation_once() {
        let mut m = DeltaMap::new();
        credit(
            &km(),
            CreditMode::Involved,
            PeriodMask::only(Period::All),
            1,
            None,
            &mut m,
        );
        let corp = get(&m, EntityKind::Corporation, 10);
        assert_eq!(corp.0[field::KILLS], 1);
        assert_eq!(corp.0[field::DAMAGE_DEALT], 250);
        assert_eq!(corp.0[field::FINAL_BLOWS], 1);
        assert_eq!(corp.0[field::ATTACKERS_SUM], 3);
        assert_eq!(get(&m, EntityKind::Alliance, 99).0[field::KILLS], 1);
        assert_eq!(get(&m, EntityKind::ShipType, 587).0[field::KILLS], 1);
        assert_eq!(get(&m, EntityKind::Character, 3).0[field::KILLS], 1);
        assert_eq!(get(&m, EntityKind::Character, 7).0[field::LOSSES], 1);
        assert_eq!(
            get(&m, EntityKind::ShipType, 670).0[field::ISK_LOST],
            100_00
        );
        assert_eq!(get(&m, EntityKind::Region, 10_000_002).0[field::KILLS], 1);
        assert_eq!(
            get(&m, EntityKind::SolarSystem, 30_000_142).0[field::LOSSES],
            0
        );
    }

    #[test]
    fn final_blow_credits_only_the_final_blow_attacker() {
        let mut m = DeltaMap::new();
        credit(
            &km(),
            CreditMode::FinalBlow,
            PeriodMask::only(Period::All),
            1,
            None,
            &mut m,
        );
        assert_eq!(get(&m, EntityKind::Character, 1).0[field::KILLS], 1);
        assert_eq!(get(&m, EntityKind::Character, 2).0[field::KILLS], 0);
        assert_eq!(get(&m, EntityKind::Corporation, 11).0[field::KILLS], 0);
        assert_eq!(
            get(&m, EntityKind::Corporation, 10).0[field::DAMAGE_DEALT],
            100
        );
    }

    #[test]
    fn entity_on_both_sides_gets_both_and_minus_cancels() {
        let mut k = km();
        k.victim.corporation_id = Some(10);
        let mut m = DeltaMap::new();
        credit(
            &k,
            CreditMode::Involved,
            PeriodMask(0b11_1111),
            1,
            None,
            &mut m,
        );
        let c = get(&m, EntityKind::Corporation, 10);
        assert_eq!((c.0[field::KILLS], c.0[field::LOSSES]), (1, 1));
        credit(
            &k,
            CreditMode::Involved,
            PeriodMask(0b11_1111),
            -1,
            None,
            &mut m,
        );
        assert!(m.values().all(|r| r.periods.iter().all(|c| c.is_zero())));
        assert_eq!(
            m.values().filter(|r| r.removed_kill == Some(1_000)).count(),
            m.values().filter(|r| r.last_kill.is_some()).count()
        );
    }

    #[test]
    fn only_filter_and_window_mask() {
        let mut m = DeltaMap::new();
        let key = EntityKey {
            id: 10,
            kind: EntityKind::Corporation,
        };
        credit(
            &km(),
            CreditMode::Involved,
            PeriodMask::only(Period::D7),
            1,
            Some(key),
            &mut m,
        );
        assert_eq!(m.len(), 1);
        let r = m[&key];
        assert_eq!(r.periods[Period::D7.index()].0[field::KILLS], 1);
        assert_eq!(r.periods[0].0[field::KILLS], 0);
        assert_eq!(r.last_kill, None);
    }
}
