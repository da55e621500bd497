//! The per-entity stats record and its compact encoding (the `data` column of
//! killboard.stats). Only non-zero periods and non-zero counters are written,
//! as zigzag varints, so a long-tail character costs a few dozen bytes.
//!
//! Layout: `[version][mask]` where mask bits 0..6 are the periods present,
//! bit 6 = last kill time present, bit 7 = last loss time present; then the
//! times, then per present period a varint field mask and its non-zero fields.
//! Version 2 writes a field mask of 0 (impossible for a present period) for a
//! period equal to the previous present one: windows nest, so for most
//! entities several periods hold the same counters, and each repeat costs one
//! byte instead of a dozen. Version 1 records (no repeats) still decode.

use crate::error::{KillboardError, Result};
use crate::model::Micros;
use crate::stats::kinds::ALL_PERIODS;

pub const N_FIELDS: usize = 13;

/// Counter positions inside `Counters::0`.
pub mod field {
    pub const KILLS: usize = 0;
    pub const LOSSES: usize = 1;
    pub const ISK_DESTROYED: usize = 2; // cents
    pub const ISK_LOST: usize = 3; // cents
    pub const SOLO_KILLS: usize = 4;
    pub const SOLO_LOSSES: usize = 5;
    pub const NPC_KILLS: usize = 6;
    pub const NPC_LOSSES: usize = 7;
    pub const FINAL_BLOWS: usize = 8;
    pub const POINTS: usize = 9;
    pub const DAMAGE_DEALT: usize = 10;
    pub const DAMAGE_TAKEN: usize = 11;
    /// Sum of attacker counts over kills; avg_attackers = this / kills.
    pub const ATTACKERS_SUM: usize = 12;
}

pub const FIELD_NAMES: [&str; N_FIELDS] = [
    "kills",
    "losses",
    "isk_destroyed",
    "isk_lost",
    "solo_kills",
    "solo_losses",
    "npc_kills",
    "npc_losses",
    "final_blows",
    "points",
    "damage_dealt",
    "damage_taken",
    "attackers_sum",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters(pub [i128; N_FIELDS]);

impl Counters {
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|v| *v == 0)
    }
    pub fn add(&mut self, other: &Counters) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += *b;
        }
    }
    pub fn scaled(&self, sign: i128) -> Counters {
        let mut c = *self;
        for v in c.0.iter_mut() {
            *v *= sign;
        }
        c
    }
}

/// Stats of one entity for every period, plus last kill/loss times (all time).
///
/// Last times are maxima, so a delta can raise them but never lower them; a
/// delta that removes a kill records its time in `removed_*` so the writer can
/// recompute the maximum from the killmails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Record {
    pub periods: [Counters; 6],
    pub last_kill: Option<Micros>,
    pub last_loss: Option<Micros>,
    pub removed_kill: Option<Micros>,
    pub removed_loss: Option<Micros>,
}

fn max_opt(a: Option<Micros>, b: Option<Micros>) -> Option<Micros> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl Record {
    pub fn add(&mut self, other: &Record) {
        for (a, b) in self.periods.iter_mut().zip(other.periods.iter()) {
            a.add(b);
        }
        self.last_kill = max_opt(self.last_kill, other.last_kill);
        self.last_loss = max_opt(self.last_loss, other.last_loss);
        self.removed_kill = max_opt(self.removed_kill, other.removed_kill);
        self.removed_loss = max_opt(self.removed_loss, other.removed_loss);
    }

    /// Drop the removed kill/loss times: they only travel with a delta to
    /// tell the flush a last time may need recomputing; a stored record never
    /// keeps them.
    pub fn forget_removed(&mut self) {
        self.removed_kill = None;
        self.removed_loss = None;
    }

    /// True when nothing is counted: the row can be dropped.
    pub fn is_empty(&self) -> bool {
        self.periods.iter().all(|c| c.is_zero())
            && self.last_kill.is_none()
            && self.last_loss.is_none()
    }

    /// Whether the stored last times may be stale after this delta was added.
    pub fn needs_last_time_recompute(&self, stored: &Record) -> bool {
        let k = matches!((self.removed_kill, stored.last_kill), (Some(r), Some(l)) if r >= l);
        let l = matches!((self.removed_loss, stored.last_loss), (Some(r), Some(l)) if r >= l);
        k || l
            || (stored.last_kill.is_some() && stored.periods[0].0[field::KILLS] <= 0)
            || (stored.last_loss.is_some() && stored.periods[0].0[field::LOSSES] <= 0)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        self.encode_into(&mut out);
        out
    }

    /// `encode`, appended to `out` (a bulk writer reuses one buffer).
    ///
    /// Version 2 is every stored row. Version 3 adds the removed kill/loss
    /// times after the mask: only an appended delta (stats_delta) carries
    /// them, so whoever folds or reads it knows a last time may be stale.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        // Each period's field mask once (non-zero fields; 0 = empty period):
        // the window advance encodes thousands of records a minute.
        let mut fmasks = [0u16; 6];
        for (m, c) in fmasks.iter_mut().zip(self.periods.iter()) {
            for (i, v) in c.0.iter().enumerate() {
                *m |= ((*v != 0) as u16) << i;
            }
        }
        let removed = [self.removed_kill, self.removed_loss];
        let has_removed = removed.iter().any(Option::is_some);
        out.push(if has_removed { 3u8 } else { 2u8 });
        let mut mask = 0u8;
        for p in ALL_PERIODS {
            if fmasks[p.index()] != 0 {
                mask |= 1 << p.index();
            }
        }
        if self.last_kill.is_some() {
            mask |= 1 << 6;
        }
        if self.last_loss.is_some() {
            mask |= 1 << 7;
        }
        out.push(mask);
        if has_removed {
            out.push(u8::from(removed[0].is_some()) | u8::from(removed[1].is_some()) << 1);
            for t in removed.into_iter().flatten() {
                put_time(out, t);
            }
        }
        for t in [self.last_kill, self.last_loss].into_iter().flatten() {
            put_time(out, t);
        }
        let mut previous: Option<usize> = None;
        for p in ALL_PERIODS {
            let (i, fmask) = (p.index(), fmasks[p.index()]);
            if fmask == 0 {
                continue;
            }
            let c = &self.periods[i];
            if previous.is_some_and(|j| fmasks[j] == fmask && self.periods[j] == *c) {
                out.push(0);
                continue;
            }
            previous = Some(i);
            put_uvarint(out, fmask as u128);
            for v in c.0.iter().filter(|v| **v != 0) {
                put_uvarint(out, zigzag(*v));
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Record> {
        let mut r = Record::default();
        r.decode_impl::<false>(bytes)?;
        Ok(r)
    }

    /// `self.add(&Record::decode(bytes)?)` without the decoded copy (1.3 kB
    /// to zero and add back): the window advance folds hundreds of appended
    /// deltas into the rows it rewrites. On error `self` is partly added to.
    pub fn add_encoded(&mut self, bytes: &[u8]) -> Result<()> {
        self.decode_impl::<true>(bytes)
    }

    /// Decode into `self`: overwrite (a default `self`) or, with ADD, add
    /// the counters and keep the latest times.
    fn decode_impl<const ADD: bool>(&mut self, bytes: &[u8]) -> Result<()> {
        let bad =
            || KillboardError::internal("corrupt stats record (run killboard.rebuild_stats())");
        let r = self;
        let time = |slot: &mut Option<Micros>, t: Micros| {
            *slot = if ADD {
                max_opt(*slot, Some(t))
            } else {
                Some(t)
            };
        };
        let (&version, rest) = bytes.split_first().ok_or_else(bad)?;
        if !(1..=3).contains(&version) {
            return Err(bad());
        }
        let (&mask, mut rest) = rest.split_first().ok_or_else(bad)?;
        if version == 3 {
            let (&rmask, after) = rest.split_first().ok_or_else(bad)?;
            rest = after;
            if rmask == 0 || rmask >> 2 != 0 {
                return Err(bad());
            }
            if rmask & 1 != 0 {
                time(&mut r.removed_kill, get_time(&mut rest).ok_or_else(bad)?);
            }
            if rmask & 2 != 0 {
                time(&mut r.removed_loss, get_time(&mut rest).ok_or_else(bad)?);
            }
        }
        if mask & (1 << 6) != 0 {
            time(&mut r.last_kill, get_time(&mut rest).ok_or_else(bad)?);
        }
        if mask & (1 << 7) != 0 {
            time(&mut r.last_loss, get_time(&mut rest).ok_or_else(bad)?);
        }
        // The previous present period's (encoded) fields, for a repeat.
        let mut previous: Option<(u128, [i128; N_FIELDS])> = None;
        for p in ALL_PERIODS {
            if mask & (1 << p.index()) == 0 {
                continue;
            }
            let fmask = get_uvarint(&mut rest).ok_or_else(bad)?;
            let (fmask, vals) = if fmask == 0 {
                // A repeat of the previous present period (version 2 on).
                previous.filter(|_| version >= 2).ok_or_else(bad)?
            } else {
                if fmask >> N_FIELDS != 0 {
                    return Err(bad());
                }
                let mut vals = [0i128; N_FIELDS];
                for (i, v) in vals.iter_mut().enumerate() {
                    if fmask & (1 << i) != 0 {
                        *v = unzigzag(get_uvarint(&mut rest).ok_or_else(bad)?);
                    }
                }
                previous = Some((fmask, vals));
                (fmask, vals)
            };
            let c = &mut r.periods[p.index()].0;
            for i in 0..N_FIELDS {
                if fmask & (1 << i) != 0 {
                    if ADD {
                        c[i] += vals[i];
                    } else {
                        c[i] = vals[i];
                    }
                }
            }
        }
        if !rest.is_empty() {
            return Err(bad());
        }
        Ok(())
    }
}

fn zigzag(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}
fn unzigzag(u: u128) -> i128 {
    ((u >> 1) as i128) ^ -((u & 1) as i128)
}
fn put_uvarint(out: &mut Vec<u8>, mut u: u128) {
    // Nearly every value fits 64 bits, where the loop is cheaper (the same bytes).
    if let Ok(mut v) = u64::try_from(u) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
        return;
    }
    while u >= 0x80 {
        out.push((u as u8) | 0x80);
        u >>= 7;
    }
    out.push(u as u8);
}
fn get_uvarint(buf: &mut &[u8]) -> Option<u128> {
    // Nearly every value fits 63 bits (9 bytes): shift a u64, not a u128.
    let mut v: u64 = 0;
    for (i, &b) in buf.iter().take(9).enumerate() {
        v |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(v as u128);
        }
    }
    get_uvarint_wide(buf)
}
fn get_uvarint_wide(buf: &mut &[u8]) -> Option<u128> {
    let mut u: u128 = 0;
    let mut shift = 0u32;
    loop {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        if shift > 126 {
            return None;
        }
        u |= ((b & 0x7f) as u128) << shift;
        if b & 0x80 == 0 {
            return Some(u);
        }
        shift += 7;
    }
}
// Times are whole seconds in practice: store seconds when exact (tag 0), else micros (tag 1).
fn put_time(out: &mut Vec<u8>, t: Micros) {
    let v = if t % 1_000_000 == 0 {
        zigzag((t / 1_000_000) as i128) << 1
    } else {
        (zigzag(t as i128) << 1) | 1
    };
    put_uvarint(out, v);
}
fn get_time(buf: &mut &[u8]) -> Option<Micros> {
    let v = get_uvarint(buf)?;
    let x = unzigzag(v >> 1);
    let t = if v & 1 == 0 {
        x.checked_mul(1_000_000)?
    } else {
        x
    };
    i64::try_from(t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_compact() {
        let mut r = Record::default();
        r.periods[0].0[field::KILLS] = 1;
        r.periods[0].0[field::ISK_DESTROYED] = 12_345_678_90;
        r.periods[0].0[field::ATTACKERS_SUM] = 3;
        r.last_kill = Some(1_700_000_000_000_000);
        let bytes = r.encode();
        assert!(bytes.len() < 20, "{} bytes", bytes.len());
        assert_eq!(Record::decode(&bytes).unwrap(), r);

        r.periods[5].0[field::LOSSES] = -4;
        r.periods[3].0[field::ISK_LOST] = i128::MAX / 4;
        r.last_loss = Some(-123_456_789);
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        assert_eq!(
            Record::decode(&Record::default().encode()).unwrap(),
            Record::default()
        );
    }

    #[test]
    fn nested_windows_repeat_in_one_byte() {
        // One recent kill: every period holds the same counters.
        let mut r = Record::default();
        for p in 0..6 {
            r.periods[p].0[field::KILLS] = 1;
            r.periods[p].0[field::ISK_DESTROYED] = 150_000_000_00;
            r.periods[p].0[field::DAMAGE_DEALT] = 2_500;
            r.periods[p].0[field::ATTACKERS_SUM] = 7;
        }
        r.last_kill = Some(1_790_000_000_000_000);
        let once = {
            let mut one = r;
            for p in 1..6 {
                one.periods[p] = Counters::default();
            }
            one.encode().len()
        };
        let bytes = r.encode();
        assert_eq!(bytes.len(), once + 5, "each repeated period costs one byte");
        assert_eq!(Record::decode(&bytes).unwrap(), r);

        // A gap (zero 14d) and a change (24h differs) between repeats.
        r.periods[3] = Counters::default();
        r.periods[4] = r.periods[2];
        r.periods[5].0[field::KILLS] = 2;
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn version_1_records_still_decode() {
        // [v1][periods all+90d][fmask kills][1][fmask kills][1]
        let r = Record::decode(&[1, 0b11, 1, 2, 1, 2]).unwrap();
        assert_eq!(r.periods[0].0[field::KILLS], 1);
        assert_eq!(r.periods[1].0[field::KILLS], 1);
        // A repeat marker is not version 1, and never the first period.
        assert!(Record::decode(&[1, 0b11, 1, 2, 0]).is_err());
        assert!(Record::decode(&[2, 0b1, 0]).is_err());
    }

    #[test]
    fn corrupt_bytes_are_an_error_not_a_panic() {
        assert!(Record::decode(&[]).is_err());
        assert!(Record::decode(&[3, 0]).is_err());
        assert!(Record::decode(&[1, 1]).is_err());
        assert!(Record::decode(&[1, 1, 0xff, 0xff, 0xff]).is_err());
        assert!(Record::decode(&[1, 0, 7]).is_err());
    }

    #[test]
    fn removed_times_travel_only_in_version_3() {
        let mut r = Record::default();
        r.periods[0].0[field::LOSSES] = -1;
        r.removed_loss = Some(1_790_000_000_000_000);
        let bytes = r.encode();
        assert_eq!(bytes[0], 3);
        assert_eq!(Record::decode(&bytes).unwrap(), r);
        r.removed_kill = Some(-5);
        r.last_kill = Some(7);
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        r.forget_removed();
        assert_eq!(r.encode()[0], 2, "a stored record stays version 2");
        // An empty or unknown removed mask is corrupt.
        assert!(Record::decode(&[3, 0, 0]).is_err());
        assert!(Record::decode(&[3, 0, 4, 2]).is_err());
        assert!(Record::decode(&[3, 0, 1]).is_err());
    }

    #[test]
    fn add_encoded_is_add_of_decoded() {
        let mut a = Record::default();
        for p in 0..6 {
            a.periods[p].0[field::KILLS] = 3;
            a.periods[p].0[field::ISK_DESTROYED] = i128::MAX / 8;
        }
        a.periods[5].0[field::LOSSES] = -2;
        a.last_kill = Some(1_790_000_000_000_000);
        let mut d = Record::default();
        for p in 0..4 {
            d.periods[p].0[field::KILLS] = -1;
            d.periods[p].0[field::POINTS] = 7;
        }
        d.periods[5].0[field::DAMAGE_DEALT] = 1 << 70;
        d.last_kill = Some(1_700_000_000_000_000);
        d.last_loss = Some(5);
        d.removed_kill = Some(1_790_000_000_000_000);
        let mut want = a;
        want.add(&d);
        let mut got = a;
        got.add_encoded(&d.encode()).unwrap();
        assert_eq!(got, want);
        assert!(got.add_encoded(&[1, 0b11, 1, 2, 0]).is_err());
    }

    #[test]
    fn varints_of_every_width_round_trip() {
        for v in [
            0u128,
            1,
            127,
            128,
            (1 << 63) - 1,
            1 << 63,
            u64::MAX as u128,
            1 << 100,
            u128::MAX,
        ] {
            let mut out = Vec::new();
            put_uvarint(&mut out, v);
            let mut s = out.as_slice();
            assert_eq!(get_uvarint(&mut s), Some(v));
            assert!(s.is_empty());
            assert_eq!(get_uvarint(&mut &out[..out.len() - 1]), None, "truncated");
        }
    }

    #[test]
    fn add_sums_and_keeps_max_times() {
        let mut a = Record::default();
        a.periods[0].0[0] = 2;
        a.last_kill = Some(10);
        let mut b = Record::default();
        b.periods[0].0[0] = -1;
        b.last_kill = Some(5);
        a.add(&b);
        assert_eq!(a.periods[0].0[0], 1);
        assert_eq!(a.last_kill, Some(10));
    }
}
