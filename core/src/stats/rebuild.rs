//! Recomputing every entity's record from all killmails (rebuild_stats,
//! verify_stats) in bounded memory.
//!
//! A full `Record` holds every period (~1.3 KB); building one per entity in a
//! map cost ~1.2 KB/entity and most of the time went to moving them when the
//! map grew. Here a killmail adds its counters once, to the bucket of its
//! period mask (which windows contain it); an entity touched by killmails of
//! one or two masks costs one or two small accumulators. Records are
//! assembled per entity at the end, in key order, and handed out one by one.
//! With `parts > 1` only the entities of one hash partition are kept, so a
//! caller can bound memory further with several passes.

use std::collections::HashMap;

use crate::model::{KillState, Micros};
use crate::stats::credit::{for_each_credit, EntityKey};
use crate::stats::kinds::{CreditMode, ALL_PERIODS};
use crate::stats::record::{Counters, Record};
use crate::windows::{mask_for, PeriodMask};

#[derive(Default, Clone, Copy)]
struct Acc {
    counters: Counters,
    last_kill: Option<Micros>,
    last_loss: Option<Micros>,
}

/// Bytes one accumulator costs in the map (for sizing passes).
pub const BYTES_PER_ENTRY: usize = std::mem::size_of::<((EntityKey, u8), Acc)>() + 16;

pub struct Rebuilder {
    mode: CreditMode,
    as_of: Micros,
    parts: u64,
    part: u64,
    acc: HashMap<(EntityKey, u8), Acc>,
}

/// The hash partition of an entity, stable across passes.
pub fn partition_of(key: &EntityKey, parts: u64) -> u64 {
    if parts <= 1 {
        return 0;
    }
    let h = (key.id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (key.kind.code() as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    (h >> 17) % parts
}

impl Rebuilder {
    pub fn new(mode: CreditMode, as_of: Micros, parts: u64, part: u64) -> Self {
        Rebuilder {
            mode,
            as_of,
            parts: parts.max(1),
            part,
            acc: HashMap::new(),
        }
    }

    pub fn add(&mut self, k: &KillState) {
        let mask = mask_for(k.time, self.as_of).0;
        let (parts, part, acc) = (self.parts, self.part, &mut self.acc);
        for_each_credit(k, self.mode, |key, c, is_kill| {
            if parts > 1 && partition_of(&key, parts) != part {
                return;
            }
            let a = acc.entry((key, mask)).or_default();
            a.counters.add(c);
            let slot = if is_kill {
                &mut a.last_kill
            } else {
                &mut a.last_loss
            };
            *slot = Some(slot.map_or(k.time, |t| t.max(k.time)));
        });
    }

    pub fn entries(&self) -> usize {
        self.acc.len()
    }

    /// Every non-empty record, in key order.
    pub fn finish(self, mut f: impl FnMut(EntityKey, &Record)) {
        let mut entries: Vec<((EntityKey, u8), Acc)> = self.acc.into_iter().collect();
        entries.sort_unstable_by_key(|(k, _)| *k);
        let mut cur: Option<(EntityKey, Record)> = None;
        for ((key, mask), a) in entries {
            if cur.as_ref().is_some_and(|(k, _)| *k != key) {
                let (k, r) = cur.take().unwrap();
                if !r.is_empty() {
                    f(k, &r);
                }
            }
            let (_, rec) = cur.get_or_insert_with(|| (key, Record::default()));
            let mask = PeriodMask(mask);
            for p in ALL_PERIODS {
                if mask.contains(p) {
                    rec.periods[p.index()].add(&a.counters);
                }
            }
            rec.last_kill = match (rec.last_kill, a.last_kill) {
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => x.or(y),
            };
            rec.last_loss = match (rec.last_loss, a.last_loss) {
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => x.or(y),
            };
        }
        if let Some((k, r)) = cur {
            if !r.is_empty() {
                f(k, &r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttackerState, Party};
    use crate::stats::credit::{credit, DeltaMap};

    fn km(id: i64, time: Micros, victim: i64, attackers: &[(i64, bool)]) -> KillState {
        KillState {
            killmail_id: id,
            time,
            solar_system_id: 30000142,
            value_cents: 1234 * id as i128,
            points: 3,
            victim: Party {
                character_id: Some(victim),
                corporation_id: Some(98000001),
                ship_type_id: Some(587),
                ..Default::default()
            },
            victim_damage_taken: 500,
            attackers: attackers
                .iter()
                .map(|(c, fb)| AttackerState {
                    party: Party {
                        character_id: Some(*c),
                        corporation_id: Some(98000002),
                        ship_type_id: Some(670),
                        ..Default::default()
                    },
                    damage_done: 100,
                    final_blow: *fb,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn same_records_as_crediting_every_killmail() {
        let day = 86_400_000_000i64;
        let as_of = 400 * day;
        let kms: Vec<KillState> = (1..200)
            .map(|i| {
                km(
                    i,
                    as_of - (i * 7919 % 400) * day / 3,
                    90000000 + i % 13,
                    &[(90000000 + i % 7, true), (90000000 + i % 5, false)],
                )
            })
            .collect();
        for mode in [CreditMode::Involved, CreditMode::FinalBlow] {
            let mut want = DeltaMap::new();
            for k in &kms {
                credit(k, mode, mask_for(k.time, as_of), 1, None, &mut want);
            }
            for parts in [1u64, 3] {
                let mut got: Vec<(EntityKey, Record)> = Vec::new();
                for part in 0..parts {
                    let mut r = Rebuilder::new(mode, as_of, parts, part);
                    for k in &kms {
                        r.add(k);
                    }
                    r.finish(|k, rec| got.push((k, *rec)));
                }
                got.sort_by_key(|(k, _)| *k);
                let mut w: Vec<(EntityKey, Record)> = want.iter().map(|(k, r)| (*k, *r)).collect();
                w.sort_by_key(|(k, _)| *k);
                assert_eq!(got.len(), w.len());
                assert_eq!(got, w, "mode {mode:?}, parts {parts}");
            }
        }
    }
}
