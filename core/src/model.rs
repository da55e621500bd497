//! The killmail as the stats rules see it: resolved values and flags, the
//! entities on each side. Built the same way from parsed JSON (ingest) and
//! from table rows (triggers, rebuild, live), so both paths credit alike.

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// One side's identities. Ship group and category come from the SDE when known.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Party {
    pub character_id: Option<i64>,
    pub corporation_id: Option<i64>,
    pub alliance_id: Option<i64>,
    pub faction_id: Option<i64>,
    pub ship_type_id: Option<i64>,
    pub ship_group_id: Option<i64>,
    pub ship_category_id: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttackerState {
    pub party: Party,
    pub damage_done: i64,
    pub final_blow: bool,
}

/// Flags as stored: `None` means "derive by zKillboard's rules".
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoredFlags {
    pub npc: Option<bool>,
    pub solo: Option<bool>,
    pub awox: Option<bool>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Flags {
    pub npc: bool,
    pub solo: bool,
    pub awox: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct KillState {
    pub killmail_id: i64,
    pub time: Micros,
    pub solar_system_id: i64,
    pub constellation_id: Option<i64>,
    pub region_id: Option<i64>,
    /// ISK in cents (numeric(20,2) scaled by 100).
    pub value_cents: i128,
    pub points: i64,
    pub flags: Flags,
    pub victim: Party,
    pub victim_damage_taken: i64,
    pub attackers: Vec<AttackerState>,
}

impl KillState {
    /// Resolve stored flags: each one given wins, the others are derived.
    pub fn resolve_flags(&mut self, stored: StoredFlags) {
        let derived = crate::ingest::flags::derive(&self.victim, &self.attackers);
        self.flags = Flags {
            npc: stored.npc.unwrap_or(derived.npc),
            solo: stored.solo.unwrap_or(derived.solo),
            awox: stored.awox.unwrap_or(derived.awox),
        };
    }
}
