//! Entity kinds and periods: the text enums of the SQL API, parsed once here.

use crate::error::{KillboardError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i16)]
pub enum EntityKind {
    Character = 1,
    Corporation = 2,
    Alliance = 3,
    Faction = 4,
    ShipType = 5,
    ShipGroup = 6,
    SolarSystem = 7,
    Constellation = 8,
    Region = 9,
}

pub const ALL_KINDS: [EntityKind; 9] = [
    EntityKind::Character,
    EntityKind::Corporation,
    EntityKind::Alliance,
    EntityKind::Faction,
    EntityKind::ShipType,
    EntityKind::ShipGroup,
    EntityKind::SolarSystem,
    EntityKind::Constellation,
    EntityKind::Region,
];

impl EntityKind {
    pub fn name(self) -> &'static str {
        match self {
            EntityKind::Character => "character",
            EntityKind::Corporation => "corporation",
            EntityKind::Alliance => "alliance",
            EntityKind::Faction => "faction",
            EntityKind::ShipType => "ship_type",
            EntityKind::ShipGroup => "ship_group",
            EntityKind::SolarSystem => "solar_system",
            EntityKind::Constellation => "constellation",
            EntityKind::Region => "region",
        }
    }
    pub fn code(self) -> i16 {
        self as i16
    }

    /// Where a flush takes this kind's stats rows in its lock order: kinds
    /// with many rare entities first, kinds whose few entities almost every
    /// killmail touches (regions, ship groups, factions) last, so the rows
    /// concurrent writers queue on are held for the shortest time. Any fixed
    /// order keeps flushes free of lock cycles; this one also keeps them short.
    pub fn lock_rank(self) -> u8 {
        match self {
            EntityKind::Character => 0,
            EntityKind::Corporation => 1,
            EntityKind::SolarSystem => 2,
            EntityKind::ShipType => 3,
            EntityKind::Alliance => 4,
            EntityKind::Constellation => 5,
            EntityKind::ShipGroup => 6,
            EntityKind::Region => 7,
            EntityKind::Faction => 8,
        }
    }
    pub fn from_code(code: i16) -> Option<Self> {
        ALL_KINDS.iter().copied().find(|k| k.code() == code)
    }
    pub fn parse(text: &str) -> Result<Self> {
        ALL_KINDS
            .iter()
            .copied()
            .find(|k| k.name() == text)
            .ok_or_else(|| {
                KillboardError::invalid(
                    "entity_type",
                    format!(
                        "unknown entity_type \"{text}\" (expected one of: {})",
                        ALL_KINDS.map(|k| k.name()).join(", ")
                    ),
                )
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    All = 0,
    D90 = 1,
    D30 = 2,
    D14 = 3,
    D7 = 4,
    H24 = 5,
}

pub const ALL_PERIODS: [Period; 6] = [
    Period::All,
    Period::D90,
    Period::D30,
    Period::D14,
    Period::D7,
    Period::H24,
];

const MICROS_PER_HOUR: i64 = 3_600_000_000;

impl Period {
    pub fn name(self) -> &'static str {
        match self {
            Period::All => "all",
            Period::D90 => "90d",
            Period::D30 => "30d",
            Period::D14 => "14d",
            Period::D7 => "7d",
            Period::H24 => "24h",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
    /// Window length, `None` for all time.
    pub fn length_micros(self) -> Option<i64> {
        let hours = match self {
            Period::All => return None,
            Period::D90 => 90 * 24,
            Period::D30 => 30 * 24,
            Period::D14 => 14 * 24,
            Period::D7 => 7 * 24,
            Period::H24 => 24,
        };
        Some(hours * MICROS_PER_HOUR)
    }
    pub fn parse(text: &str) -> Result<Self> {
        ALL_PERIODS
            .iter()
            .copied()
            .find(|p| p.name() == text)
            .ok_or_else(|| {
                KillboardError::invalid(
                    "period",
                    format!(
                        "unknown period \"{text}\" (expected one of: all, 90d, 30d, 14d, 7d, 24h)"
                    ),
                )
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditMode {
    Involved,
    FinalBlow,
}

impl CreditMode {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "involved" => Ok(CreditMode::Involved),
            "final_blow" => Ok(CreditMode::FinalBlow),
            _ => Err(KillboardError::invalid(
                "killboard.kill_credit",
                format!("unknown credit mode \"{text}\" (expected involved or final_blow)"),
            )),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            CreditMode::Involved => "involved",
            CreditMode::FinalBlow => "final_blow",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_and_rejects_unknown() {
        for k in ALL_KINDS {
            assert_eq!(EntityKind::parse(k.name()).unwrap(), k);
            assert_eq!(EntityKind::from_code(k.code()), Some(k));
        }
        for p in ALL_PERIODS {
            assert_eq!(Period::parse(p.name()).unwrap(), p);
        }
        let e = EntityKind::parse("pilot").unwrap_err();
        assert_eq!(e.sqlstate(), "22023");
        assert_eq!(e.path.as_deref(), Some("entity_type"));
        assert_eq!(Period::parse("1y").unwrap_err().sqlstate(), "22023");
        assert!(CreditMode::parse("solo").is_err());
    }
}
