//! Window bounds: the one rule for which periods contain a killmail.
//!
//! A killmail is in period P when `killmail_time > as_of - P`, where `as_of` is
//! the time of the last `advance_windows()`, never the time of insert. Windows
//! are suffixes in time, so a killmail newer than `as_of` is in every window.

use crate::model::Micros;
use crate::stats::kinds::{Period, ALL_PERIODS};

/// Bit set of periods (bit i = `Period::index() == i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeriodMask(pub u8);

impl PeriodMask {
    pub const NONE: PeriodMask = PeriodMask(0);
    pub fn only(p: Period) -> Self {
        PeriodMask(1 << p.index())
    }
    pub fn contains(self, p: Period) -> bool {
        self.0 & (1 << p.index()) != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

pub fn in_window(period: Period, time: Micros, as_of: Micros) -> bool {
    match period.length_micros() {
        None => true,
        Some(len) => time > as_of - len,
    }
}

/// Every period containing a killmail at `time`.
pub fn mask_for(time: Micros, as_of: Micros) -> PeriodMask {
    let mut m = 0u8;
    for p in ALL_PERIODS {
        if in_window(p, time, as_of) {
            m |= 1 << p.index();
        }
    }
    PeriodMask(m)
}

/// Killmail times that leave `period` when as_of moves from `old` to `new`:
/// the half-open range `(old - len, new - len]`. `None` when nothing leaves.
pub fn leaving_range(period: Period, old: Micros, new: Micros) -> Option<(Micros, Micros)> {
    let len = period.length_micros()?;
    (new > old).then(|| (old - len, new - len))
}

#[cfg(test)]
mod tests {
    use super::*;
    const H: i64 = 3_600_000_000;
    const D: i64 = 24 * H;

    #[test]
    fn boundary_is_exclusive_of_the_window_start() {
        let as_of = 1_000 * D;
        assert!(in_window(Period::H24, as_of - D + 1_000_000, as_of));
        assert!(!in_window(Period::H24, as_of - D, as_of));
        assert!(in_window(Period::D30, as_of - 30 * D + 5_000_000, as_of));
        assert!(!in_window(Period::D30, as_of - 30 * D - 1, as_of));
        assert!(in_window(Period::All, 0, as_of));
    }

    #[test]
    fn future_killmails_are_in_every_window() {
        let as_of = 1_000 * D;
        assert_eq!(mask_for(as_of + 10, as_of), PeriodMask(0b11_1111));
    }

    #[test]
    fn mask_of_a_20_day_old_killmail() {
        let as_of = 1_000 * D;
        let m = mask_for(as_of - 20 * D, as_of);
        assert!(m.contains(Period::All) && m.contains(Period::D90) && m.contains(Period::D30));
        assert!(!m.contains(Period::D14) && !m.contains(Period::D7) && !m.contains(Period::H24));
    }

    #[test]
    fn leaving_range_matches_in_window_flip() {
        let old = 1_000 * D;
        let new = old + 60_000_000;
        let (lo, hi) = leaving_range(Period::D14, old, new).unwrap();
        for t in [lo, lo + 1, hi - 1, hi, hi + 1] {
            let left = in_window(Period::D14, t, old) && !in_window(Period::D14, t, new);
            assert_eq!(left, t > lo && t <= hi, "t={t}");
        }
        assert!(leaving_range(Period::All, old, new).is_none());
        assert!(leaving_range(Period::D7, new, old).is_none());
    }
}
