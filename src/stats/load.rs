//! Reading killmails back as `KillState`s, from the tables or from a
//! trigger's transition tables, for the trigger path, windows, rebuild and live.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use killboard_core::model::{AttackerState, KillState, Party, StoredFlags};
use killboard_core::{KillboardError, Result};
use pgrx::spi::{SpiClient, SpiTupleTable};

const KILLMAILS_SQL: &str = include_str!("../../sql/queries/load_killmails.sql");
const ATTACKERS_SQL: &str = include_str!("../../sql/queries/load_attackers.sql");

/// Where rows come from. Only these fixed names are ever spliced into SQL.
#[derive(Clone, Copy)]
pub enum Source {
    Tables,
    OldRows,
    NewRows,
}

impl Source {
    fn killmails(self) -> &'static str {
        match self {
            Source::Tables => "killboard.killmails",
            Source::OldRows => "old_rows",
            Source::NewRows => "new_rows",
        }
    }
    fn attackers(self) -> &'static str {
        match self {
            Source::Tables => "killboard.attackers",
            Source::OldRows => "old_rows",
            Source::NewRows => "new_rows",
        }
    }
}

/// Which rows: fixed filters with `$n` parameters.
#[derive(Clone, Copy)]
pub enum Filter<'a> {
    Ids(&'a [i64]),
}

fn spi_err(e: pgrx::spi::SpiError) -> KillboardError {
    KillboardError::internal(format!("SPI: {e}"))
}

fn run<'c>(
    client: &SpiClient<'c>,
    template: &str,
    table_key: &str,
    table: &str,
    filter: Filter,
    alias: &str,
) -> Result<SpiTupleTable<'c>> {
    let Filter::Ids(ids) = filter;
    let (cond, args): (String, Vec<pgrx::datum::DatumWithOid>) = (
        format!("{alias}.killmail_id = ANY($1)"),
        vec![ids.to_vec().into()],
    );
    let sql = template
        .replace(table_key, table)
        .replace("{filter}", &cond);
    // Planned per call with the real ids (sizes vary from one to a rebuild
    // page), on index probes: a table may have looked empty when last analyzed.
    super::plans::with_index_plans(|| client.select(sql.as_str(), None, &args)).map_err(spi_err)
}

/// A killmail row without its attackers, flags still as stored.
pub struct KillRow {
    pub state: KillState,
    pub stored: StoredFlags,
}

pub fn killmail_rows(
    client: &SpiClient,
    src: Source,
    filter: Filter,
) -> Result<BTreeMap<i64, KillRow>> {
    parse_killmails(run(
        client,
        KILLMAILS_SQL,
        "{killmails}",
        src.killmails(),
        filter,
        "k",
    )?)
}

fn parse_killmails(rows: SpiTupleTable) -> Result<BTreeMap<i64, KillRow>> {
    let mut out = BTreeMap::new();
    for row in rows {
        let g = |i: usize| row.get::<i64>(i).map_err(spi_err);
        let b = |i: usize| row.get::<bool>(i).map_err(spi_err);
        let id = g(1)?.ok_or_else(|| KillboardError::internal("killmail without id"))?;
        let state = KillState {
            killmail_id: id,
            time: g(2)?.unwrap_or(0),
            solar_system_id: g(3)?.unwrap_or(0),
            constellation_id: g(4)?,
            region_id: g(5)?,
            value_cents: g(6)?.unwrap_or(0) as i128,
            points: g(7)?.unwrap_or(0),
            victim: Party {
                character_id: g(11)?,
                corporation_id: g(12)?,
                alliance_id: g(13)?,
                faction_id: g(14)?,
                ship_type_id: g(15)?,
                ship_group_id: g(16)?,
                ship_category_id: g(17)?,
            },
            victim_damage_taken: g(18)?.unwrap_or(0),
            ..Default::default()
        };
        let stored = StoredFlags {
            npc: b(8)?,
            solo: b(9)?,
            awox: b(10)?,
        };
        out.insert(id, KillRow { state, stored });
    }
    Ok(out)
}

pub type AttackerRows = BTreeMap<i64, BTreeMap<i32, AttackerState>>;

pub fn attacker_rows(client: &SpiClient, src: Source, filter: Filter) -> Result<AttackerRows> {
    parse_attackers(run(
        client,
        ATTACKERS_SQL,
        "{attackers}",
        src.attackers(),
        filter,
        "a",
    )?)
}

fn parse_attackers(rows: SpiTupleTable) -> Result<AttackerRows> {
    let mut out: AttackerRows = BTreeMap::new();
    for row in rows {
        let g = |i: usize| row.get::<i64>(i).map_err(spi_err);
        let id = g(1)?.unwrap_or(0);
        let idx = row.get::<i32>(2).map_err(spi_err)?.unwrap_or(0);
        let a = AttackerState {
            party: Party {
                character_id: g(3)?,
                corporation_id: g(4)?,
                alliance_id: g(5)?,
                faction_id: g(6)?,
                ship_type_id: g(7)?,
                ship_group_id: g(8)?,
                ship_category_id: g(9)?,
            },
            damage_done: g(10)?.unwrap_or(0),
            final_blow: row.get::<bool>(11).map_err(spi_err)?.unwrap_or(false),
        };
        out.entry(id).or_default().insert(idx, a);
    }
    Ok(out)
}

/// Put a killmail row and its attackers together and resolve its flags.
pub fn assemble(row: &KillRow, attackers: Option<&BTreeMap<i32, AttackerState>>) -> KillState {
    let mut k = row.state.clone();
    k.attackers = attackers
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    k.resolve_flags(row.stored);
    k
}

/// Full states of the given killmails as they are in the tables now.
pub fn states(client: &SpiClient, filter: Filter) -> Result<Vec<KillState>> {
    let rows = killmail_rows(client, Source::Tables, filter)?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // Attackers by the ids found: a time filter on attackers would need a
    // join through killmails that the planner may turn into a full scan.
    let ids: Vec<i64> = rows.keys().copied().collect();
    let att = attacker_rows(client, Source::Tables, Filter::Ids(&ids))?;
    Ok(rows
        .iter()
        .map(|(id, r)| assemble(r, att.get(id)))
        .collect())
}

/// The window advance's statements: fixed text, so their plans are cached
/// (planning them on every advance cost as much as running them).
static LEAVING_KILLMAILS_SQL: LazyLock<String> = LazyLock::new(|| {
    let range = |i: usize| {
        format!(
            "(k.killmail_time > to_timestamp(${}::float8 / 1e6) AND k.killmail_time <= to_timestamp(${}::float8 / 1e6))",
            2 * i + 1,
            2 * i + 2
        )
    };
    let cond = (0..LEAVING_RANGES)
        .map(range)
        .collect::<Vec<_>>()
        .join(" OR ");
    KILLMAILS_SQL
        .replace("{killmails}", "killboard.killmails")
        .replace("{filter}", &cond)
});
static ATTACKERS_BY_ID_SQL: LazyLock<String> = LazyLock::new(|| {
    ATTACKERS_SQL
        .replace("{attackers}", "killboard.attackers")
        .replace("{filter}", "a.killmail_id = ANY($1)")
});

/// How many time ranges `states_in_ranges` takes: one per rolling window.
pub const LEAVING_RANGES: usize = 5;

/// Full states of the killmails whose time is in any of the ranges (lo, hi]
/// (micros since the Unix epoch), in two statements with cached plans.
pub fn states_in_ranges(
    client: &SpiClient,
    ranges: &[(i64, i64); LEAVING_RANGES],
) -> Result<Vec<KillState>> {
    let args: Vec<pgrx::datum::DatumWithOid> = ranges
        .iter()
        .flat_map(|(lo, hi)| [(*lo).into(), (*hi).into()])
        .collect();
    // Generic plans: an index probe whatever the ranges or ids, and a
    // custom plan per call cost as much as the execution.
    let rows = super::plans::with_index_plans(|| {
        super::plans::with_generic_plans(|| {
            super::plans::select(client, LEAVING_KILLMAILS_SQL.as_str(), None, &args)
        })
    })
    .map_err(spi_err)?;
    let rows = parse_killmails(rows)?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = rows.keys().copied().collect();
    let att = super::plans::with_index_plans(|| {
        super::plans::with_generic_plans(|| {
            super::plans::select(client, ATTACKERS_BY_ID_SQL.as_str(), None, &[ids.into()])
        })
    })
    .map_err(spi_err)?;
    let att = parse_attackers(att)?;
    Ok(rows
        .iter()
        .map(|(id, r)| assemble(r, att.get(id)))
        .collect())
}
