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

use crate::model::{KillState, Micros};
use crate::stats::credit::{for_each_credit, EntityKey};
use crate::stats::kinds::{CreditMode, ALL_PERIODS};
use crate::stats::record::{field, Counters, Record, N_FIELDS};
use crate::windows::{mask_for, PeriodMask};

/// Counters that stay small (counts, points, attacker sums): i64 holds any
/// sum of them over billions of killmails. ISK (cents, up to 9e18 per
/// killmail) and damage (bigint per row) keep i128 like `Counters`.
const WIDE: [usize; 4] = [
    field::ISK_DESTROYED,
    field::ISK_LOST,
    field::DAMAGE_DEALT,
    field::DAMAGE_TAKEN,
];
const NARROW: [usize; N_FIELDS - 4] = [
    field::KILLS,
    field::LOSSES,
    field::SOLO_KILLS,
    field::SOLO_LOSSES,
    field::NPC_KILLS,
    field::NPC_LOSSES,
    field::FINAL_BLOWS,
    field::POINTS,
    field::ATTACKERS_SUM,
];
/// One (entity, period mask) accumulator. Kept small: the tables hold one
/// per entity and mask, and its size is what bounds a pass (and what the
/// tables fault in as they fill). All zeros is the empty accumulator, so a
/// table's accumulators come from zeroed memory, faulted in as they are
/// used, without a pass writing defaults over all of them first.
#[derive(Clone, Copy, Default)]
struct Acc {
    wide: [i128; 4],
    narrow: [i64; N_FIELDS - 4],
    /// Last times, biased (`bias`) so that 0 is "none" and max still works.
    last_kill: u64,
    last_loss: u64,
}

fn bias(t: Micros) -> u64 {
    (t as u64) ^ (1 << 63)
}

/// `n` empty accumulators in freshly zeroed memory.
fn zeroed_accs(n: usize) -> Vec<Acc> {
    if n == 0 {
        return Vec::new();
    }
    let Ok(layout) = std::alloc::Layout::array::<Acc>(n) else {
        // Unreachable for any table that fits in memory; the slow way then.
        return vec![Acc::default(); n];
    };
    // SAFETY: Acc is integers only, so all-zero bytes are a valid (empty)
    // Acc; the pointer comes from the global allocator with Acc's layout
    // for exactly n elements, as Vec::from_raw_parts requires.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut Acc;
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Vec::from_raw_parts(p, n, n)
    }
}

/// What one credit adds (shared by the credits of a killmail that add the same).
#[derive(Clone, Copy)]
struct Delta {
    wide: [i128; 4],
    narrow: [i64; N_FIELDS - 4],
    time: Micros,
}

/// Field by field with an early exit: compared once per credit, and
/// consecutive deltas that differ mostly differ early (kills or losses,
/// damage), where a derived comparison calls memcmp over all 144 bytes.
impl PartialEq for Delta {
    #[inline]
    fn eq(&self, o: &Delta) -> bool {
        for i in 0..N_FIELDS - 4 {
            if self.narrow[i] != o.narrow[i] {
                return false;
            }
        }
        for i in 0..4 {
            if self.wide[i] != o.wide[i] {
                return false;
            }
        }
        self.time == o.time
    }
}

impl Delta {
    fn new(c: &Counters, time: Micros) -> Delta {
        let mut d = Delta {
            wide: [0; 4],
            narrow: [0; N_FIELDS - 4],
            time,
        };
        for (a, i) in d.wide.iter_mut().zip(WIDE) {
            *a = c.0[i];
        }
        for (a, i) in d.narrow.iter_mut().zip(NARROW) {
            *a = c.0[i] as i64;
        }
        d
    }
}

/// A credit waiting in its radix bucket: the entity, its period mask, and the
/// delta it adds (an index into the batch's deltas).
#[derive(Clone, Copy)]
struct Credit {
    key: EntityKey,
    delta: u32,
    mask: u8,
    is_kill: bool,
}

impl Acc {
    fn add(&mut self, d: &Delta, is_kill: bool) {
        for (a, b) in self.wide.iter_mut().zip(d.wide) {
            *a += b;
        }
        for (a, b) in self.narrow.iter_mut().zip(d.narrow) {
            *a += b;
        }
        let slot = if is_kill {
            &mut self.last_kill
        } else {
            &mut self.last_loss
        };
        *slot = (*slot).max(bias(d.time));
    }
    fn counters(&self) -> Counters {
        let mut c = Counters::default();
        for (a, i) in self.wide.iter().zip(WIDE) {
            c.0[i] = *a;
        }
        for (a, i) in self.narrow.iter().zip(NARROW) {
            c.0[i] = *a as i128;
        }
        c
    }
}

fn time(b: u64) -> Option<Micros> {
    (b != 0).then_some((b ^ (1 << 63)) as Micros)
}

/// Accumulators per table slot at most: linear probing stays short (a hit
/// probes ~2.5 slots, a miss ~8.5, all in one or two cache lines of keys).
const MAX_LOAD: (usize, usize) = (3, 4);

/// Bytes one accumulator costs (for sizing passes): its key and value. As
/// with the HashMap this replaced, a table also keeps free slots (it runs
/// between 3/8 and 3/4 full), which the sizing does not count.
pub const BYTES_PER_ENTRY: usize = std::mem::size_of::<Slot>() + std::mem::size_of::<Acc>();

/// Radix buckets: credits are first appended to the bucket of their entity,
/// then applied bucket by bucket, each to its own table (a smaller table
/// takes fewer TLB misses).
const RADIX_BITS: u32 = 8;
const RADIX: usize = 1 << RADIX_BITS;
/// Credits buffered before they are applied (bounds the batch's memory).
const BATCH: usize = 1 << 18;
/// Credits ahead of the one being applied whose slot, accumulator and delta
/// are prefetched. The tables are far larger than any cache, so each credit
/// takes a cache miss or three; prefetching overlaps them instead of waiting
/// for each in turn (what the applying loop spent most of its time on).
const PREFETCH: usize = 8;

/// A table slot's key: the entity and its period mask.
#[derive(Clone, Copy)]
struct Slot {
    key: EntityKey,
    mask: u8,
    used: bool,
}

const FREE: Slot = Slot {
    key: EntityKey {
        id: 0,
        kind: crate::stats::kinds::EntityKind::Character,
    },
    mask: 0,
    used: false,
};

/// An open-addressing (linear probing) table of accumulators, keys and
/// values in separate arrays so a probe reads only keys. Hand-rolled rather
/// than a HashMap because the applying loop needs a slot's address before
/// it gets there, to prefetch it.
struct Table {
    slots: Vec<Slot>,
    accs: Vec<Acc>,
    len: usize,
}

fn slot_hash(key: &EntityKey, mask: u8) -> u64 {
    // Unrelated to bucket_of's multiply: keys of one bucket share its top bits.
    let h = (key.id as u64) ^ ((key.kind.code() as u64) << 48) ^ ((mask as u64) << 56);
    let h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

impl Table {
    fn with_capacity(expected: usize) -> Table {
        let n = (expected * MAX_LOAD.1 / MAX_LOAD.0 + 1)
            .next_power_of_two()
            .max(16);
        Table {
            slots: vec![FREE; n],
            accs: Vec::new(),
            len: 0,
        }
    }

    fn home(&self, key: &EntityKey, mask: u8) -> usize {
        (slot_hash(key, mask) >> 32) as usize & (self.slots.len() - 1)
    }

    /// The accumulator of (key, mask), created empty if absent.
    fn get(&mut self, key: EntityKey, mask: u8) -> &mut Acc {
        if (self.len + 1) * MAX_LOAD.1 > self.slots.len() * MAX_LOAD.0 {
            self.grow();
        }
        if self.accs.is_empty() {
            // Allocated at first use: the memory is touched as it fills.
            self.accs = zeroed_accs(self.slots.len());
        }
        let m = self.slots.len() - 1;
        let mut i = self.home(&key, mask);
        loop {
            let s = &mut self.slots[i];
            if !s.used {
                *s = Slot {
                    key,
                    mask,
                    used: true,
                };
                self.len += 1;
                return &mut self.accs[i];
            }
            if s.key == key && s.mask == mask {
                return &mut self.accs[i];
            }
            i = (i + 1) & m;
        }
    }

    fn grow(&mut self) {
        let old_slots = std::mem::take(&mut self.slots);
        let old_accs = std::mem::take(&mut self.accs);
        self.slots = vec![FREE; (old_slots.len() * 2).max(16)];
        self.len = 0;
        for (s, a) in old_slots.iter().zip(old_accs) {
            if s.used {
                *self.get(s.key, s.mask) = a;
            }
        }
    }

    fn prefetch(&self, key: &EntityKey, mask: u8) {
        let i = self.home(key, mask);
        prefetch(&self.slots[i]);
        if let Some(a) = self.accs.get(i) {
            let p = a as *const Acc as *const u8;
            // An accumulator spans three cache lines.
            for off in [0, 64, 128] {
                prefetch(unsafe { &*p.wrapping_add(off) });
            }
        }
    }

    fn drain_into(&mut self, out: &mut Vec<((EntityKey, u8), Acc)>) {
        for (s, a) in self.slots.iter().zip(&self.accs) {
            if s.used {
                out.push(((s.key, s.mask), *a));
            }
        }
        self.slots = Vec::new();
        self.accs = Vec::new();
        self.len = 0;
    }
}

#[inline(always)]
fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            p as *const T as *const i8,
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

pub struct Rebuilder {
    mode: CreditMode,
    as_of: Micros,
    parts: u64,
    part: u64,
    tables: Vec<Table>,
    credits: Vec<Vec<Credit>>,
    deltas: Vec<Delta>,
    buffered: usize,
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

/// The radix bucket of an entity: top bits of a multiply.
fn bucket_of(key: &EntityKey) -> usize {
    let h =
        ((key.id as u64) ^ ((key.kind.code() as u64) << 56)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (h >> (64 - RADIX_BITS)) as usize
}

impl Rebuilder {
    pub fn new(mode: CreditMode, as_of: Micros, parts: u64, part: u64) -> Self {
        Self::with_capacity(mode, as_of, parts, part, 0)
    }

    /// `capacity`: expected accumulators; growing a table of millions moves
    /// every entry each time it doubles.
    pub fn with_capacity(
        mode: CreditMode,
        as_of: Micros,
        parts: u64,
        part: u64,
        capacity: usize,
    ) -> Self {
        Rebuilder {
            mode,
            as_of,
            parts: parts.max(1),
            part,
            tables: (0..RADIX)
                .map(|_| Table::with_capacity(capacity / RADIX))
                .collect(),
            credits: (0..RADIX).map(|_| Vec::new()).collect(),
            deltas: Vec::new(),
            buffered: 0,
        }
    }

    pub fn add(&mut self, k: &KillState) {
        let mask = mask_for(k.time, self.as_of).0;
        let (parts, part) = (self.parts, self.part);
        let (credits, deltas, buffered) = (&mut self.credits, &mut self.deltas, &mut self.buffered);
        let first = deltas.len();
        for_each_credit(k, self.mode, |key, c, is_kill| {
            if parts > 1 && partition_of(&key, parts) != part {
                return;
            }
            // Consecutive credits of a killmail mostly add the same (an
            // attacker's character, corporation, ship...; every victim entity).
            let d = Delta::new(c, k.time);
            if deltas.len() == first || deltas.last() != Some(&d) {
                deltas.push(d);
            }
            credits[bucket_of(&key)].push(Credit {
                key,
                delta: (deltas.len() - 1) as u32,
                mask,
                is_kill,
            });
            *buffered += 1;
        });
        if self.buffered >= BATCH {
            self.apply();
        }
    }

    fn apply(&mut self) {
        let deltas = &self.deltas;
        for (creds, table) in self.credits.iter_mut().zip(self.tables.iter_mut()) {
            for i in 0..creds.len() {
                if let Some(c) = creds.get(i + PREFETCH) {
                    table.prefetch(&c.key, c.mask);
                    prefetch(&deltas[c.delta as usize]);
                }
                let c = creds[i];
                table
                    .get(c.key, c.mask)
                    .add(&deltas[c.delta as usize], c.is_kill);
            }
            creds.clear();
        }
        self.deltas.clear();
        self.buffered = 0;
    }

    pub fn entries(&self) -> usize {
        self.tables.iter().map(|t| t.len).sum::<usize>() + self.buffered
    }

    /// Every non-empty record, each entity once; in key order within a
    /// table. (Merging the tables into one key order made the index build
    /// after a rebuild ~40% cheaper, but the merge cost the encoding thread
    /// more than that, and the encoding thread is the slower side of the
    /// writing phase.)
    pub fn finish(mut self, mut f: impl FnMut(EntityKey, &Record)) {
        self.apply();
        let mut entries: Vec<((EntityKey, u8), Acc)> = Vec::new();
        // One record, reset in place per entity: a Record is ~1.3 KB, not
        // worth moving in and out of an Option per entity.
        let mut rec = Record::default();
        for table in self.tables.iter_mut() {
            entries.clear();
            table.drain_into(&mut entries);
            entries.sort_unstable_by_key(|(k, _)| *k);
            let mut cur: Option<EntityKey> = None;
            for ((key, mask), a) in entries.drain(..) {
                if cur != Some(key) {
                    if let Some(k) = cur {
                        if !rec.is_empty() {
                            f(k, &rec);
                        }
                        rec = Record::default();
                    }
                    cur = Some(key);
                }
                let mask = PeriodMask(mask);
                let counters = a.counters();
                for p in ALL_PERIODS {
                    if mask.contains(p) {
                        rec.periods[p.index()].add(&counters);
                    }
                }
                rec.last_kill = rec.last_kill.max(time(a.last_kill));
                rec.last_loss = rec.last_loss.max(time(a.last_loss));
            }
            if let Some(k) = cur {
                if !rec.is_empty() {
                    f(k, &rec);
                }
                rec = Record::default();
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
    fn same_records_across_many_batches() {
        // Enough credits to fill several batches, attackers sharing
        // corporations with different damage, entities on both sides.
        let day = 86_400_000_000i64;
        let as_of = 400 * day;
        let kms: Vec<KillState> = (1..16_000)
            .map(|i| {
                let mut k = km(
                    i,
                    as_of - (i * 7919 % 400) * day / 3,
                    90000000 + i % 5003,
                    &[
                        (90000000 + i % 4001, true),
                        (90000000 + i % 3001, false),
                        (90000000 + i % 7, false),
                    ],
                );
                for (j, a) in k.attackers.iter_mut().enumerate() {
                    a.damage_done = (i * 31 + j as i64 * 17) % 977;
                    a.party.corporation_id = Some(98000000 + (i + j as i64) % 11);
                }
                k
            })
            .collect();
        let mut want = DeltaMap::new();
        for k in &kms {
            credit(
                k,
                CreditMode::Involved,
                mask_for(k.time, as_of),
                1,
                None,
                &mut want,
            );
        }
        let mut r = Rebuilder::new(CreditMode::Involved, as_of, 1, 0);
        for k in &kms {
            r.add(k);
        }
        assert!(kms.len() * 20 > BATCH, "the test must cross a batch");
        let mut got: Vec<(EntityKey, Record)> = Vec::new();
        r.finish(|k, rec| got.push((k, *rec)));
        got.sort_by_key(|(k, _)| *k);
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "each entity comes out once"
        );
        let mut w: Vec<(EntityKey, Record)> = want.iter().map(|(k, r)| (*k, *r)).collect();
        w.sort_by_key(|(k, _)| *k);
        assert_eq!(got, w);
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
