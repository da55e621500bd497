//! What `entity_stats` returns for one period: counters plus derived ratios.

use crate::model::Micros;
use crate::stats::kinds::Period;
use crate::stats::record::{field, Record};

#[derive(Debug, Clone, PartialEq)]
pub struct StatsView {
    pub kills: i64,
    pub losses: i64,
    pub isk_destroyed_cents: i128,
    pub isk_lost_cents: i128,
    pub efficiency: f64,
    pub isk_efficiency: f64,
    pub kill_loss_ratio: f64,
    pub solo_kills: i64,
    pub solo_losses: i64,
    pub npc_kills: i64,
    pub npc_losses: i64,
    pub last_kill_time: Option<Micros>,
    pub last_loss_time: Option<Micros>,
    pub final_blows: i64,
    pub points: i64,
    pub damage_dealt: i64,
    pub damage_taken: i64,
    pub avg_attackers: f64,
}

fn pct(a: f64, b: f64) -> f64 {
    if a + b == 0.0 {
        0.0
    } else {
        a / (a + b) * 100.0
    }
}

fn clamp64(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

impl StatsView {
    pub fn of(r: &Record, period: Period) -> StatsView {
        let c = &r.periods[period.index()].0;
        let kills = clamp64(c[field::KILLS]);
        let losses = clamp64(c[field::LOSSES]);
        StatsView {
            kills,
            losses,
            isk_destroyed_cents: c[field::ISK_DESTROYED],
            isk_lost_cents: c[field::ISK_LOST],
            efficiency: pct(kills as f64, losses as f64),
            isk_efficiency: pct(c[field::ISK_DESTROYED] as f64, c[field::ISK_LOST] as f64),
            kill_loss_ratio: if losses == 0 {
                kills as f64
            } else {
                kills as f64 / losses as f64
            },
            solo_kills: clamp64(c[field::SOLO_KILLS]),
            solo_losses: clamp64(c[field::SOLO_LOSSES]),
            npc_kills: clamp64(c[field::NPC_KILLS]),
            npc_losses: clamp64(c[field::NPC_LOSSES]),
            // Windows are suffixes in time: the latest kill is in a window iff it has any kill.
            last_kill_time: if kills > 0 { r.last_kill } else { None },
            last_loss_time: if losses > 0 { r.last_loss } else { None },
            final_blows: clamp64(c[field::FINAL_BLOWS]),
            points: clamp64(c[field::POINTS]),
            damage_dealt: clamp64(c[field::DAMAGE_DEALT]),
            damage_taken: clamp64(c[field::DAMAGE_TAKEN]),
            avg_attackers: if kills == 0 {
                0.0
            } else {
                c[field::ATTACKERS_SUM] as f64 / kills as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_follow_the_contract() {
        let mut r = Record::default();
        let c = &mut r.periods[0].0;
        c[field::KILLS] = 3;
        c[field::LOSSES] = 1;
        c[field::ISK_DESTROYED] = 300;
        c[field::ISK_LOST] = 100;
        c[field::ATTACKERS_SUM] = 9;
        r.last_kill = Some(5);
        let v = StatsView::of(&r, Period::All);
        assert_eq!(v.efficiency, 75.0);
        assert_eq!(v.isk_efficiency, 75.0);
        assert_eq!(v.kill_loss_ratio, 3.0);
        assert_eq!(v.avg_attackers, 3.0);
        assert_eq!(v.last_kill_time, Some(5));
        let empty = StatsView::of(&r, Period::H24);
        assert_eq!(
            (
                empty.kills,
                empty.efficiency,
                empty.kill_loss_ratio,
                empty.last_kill_time
            ),
            (0, 0.0, 0.0, None)
        );
    }
}
