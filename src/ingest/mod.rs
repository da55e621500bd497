//! `killboard.ingest` / `ingest_many`: parse, store the rows in bulk, and credit
//! the new killmails straight from memory (the row triggers stand down while
//! ingest writes). Re-deliveries go through a plain UPDATE so the triggers
//! move the stats by exactly the difference.

use std::collections::{BTreeMap, HashMap, HashSet};

use killboard_core::ingest::{parse::parse_any, Killmail};
use killboard_core::model::{AttackerState, KillState, Party, StoredFlags};
use killboard_core::profiles::{JsonKillmail, KillmailView, PartyView};
use killboard_core::sde::ItemRef;
use killboard_core::{KillboardError, Result};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::Value;

use crate::error::OrRaise;
use crate::stats::{self, pending, plans, spi_err};

const INSERT_KILLMAILS_SQL: &str = include_str!("../../sql/queries/insert_killmails.sql");
const INSERT_ATTACKERS_SQL: &str = include_str!("../../sql/queries/insert_attackers.sql");
const INSERT_ITEMS_SQL: &str = include_str!("../../sql/queries/insert_items.sql");
const EXISTING_ZKB_SQL: &str = include_str!("../../sql/queries/existing_zkb.sql");
const UPDATE_ZKB_SQL: &str = include_str!("../../sql/queries/update_zkb.sql");
const SDE_SYSTEMS_SQL: &str = include_str!("../../sql/queries/sde_systems.sql");
const SDE_SHIP_TYPES_SQL: &str = include_str!("../../sql/queries/sde_ship_types.sql");
const PRICE_VALUES_SQL: &str = include_str!("../../sql/queries/price_values.sql");

/// Ingest one killmail (ESI, zKillboard API element, R2Z2 or RedisQ package); returns its id.
/// Not STRICT: a NULL killmail is a caller's bug, reported rather than silently returning NULL.
#[pg_extern(volatile, parallel_unsafe)]
fn ingest(km: Option<crate::json::Json>) -> i64 {
    let km = km.unwrap_or_else(|| crate::error::raise(KillboardError::missing("km")));
    crate::error::require_writable("killboard.ingest()");
    let parsed = parse_any(&km.0, "$").or_raise();
    let id = parsed.killmail_id;
    ingest_batch(vec![parsed]).or_raise();
    id
}

/// Ingest a JSON array of killmails; returns how many were new or changed.
/// One bad element fails the whole call (nothing is stored).
#[pg_extern(volatile, parallel_unsafe)]
fn ingest_many(kms: Option<crate::json::Json>) -> i64 {
    let kms = kms.unwrap_or_else(|| crate::error::raise(KillboardError::missing("kms")));
    crate::error::require_writable("killboard.ingest_many()");
    let Value::Array(items) = &kms.0 else {
        crate::error::raise(KillboardError::invalid(
            "$",
            "ingest_many expects a JSON array of killmails",
        ));
    };
    let mut parsed = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        parsed.push(parse_any(v, &format!("$[{i}]")).or_raise());
    }
    ingest_batch(parsed).or_raise()
}

/// A system's constellation, region and security status.
type SystemFacts = (Option<i64>, Option<i64>, Option<f64>);

struct SdeFacts {
    systems: HashMap<i64, SystemFacts>,
    types: HashMap<i64, (Option<i64>, Option<i64>)>,
}

fn sde_facts(client: &SpiClient, kms: &[Killmail]) -> Result<SdeFacts> {
    let mut sys: Vec<i64> = kms.iter().map(|k| k.solar_system_id).collect();
    sys.sort_unstable();
    sys.dedup();
    let mut types: Vec<i64> = kms
        .iter()
        .flat_map(|k| {
            std::iter::once(k.victim.ship_type_id)
                .chain(k.attackers.iter().filter_map(|a| a.ship_type_id))
        })
        .collect();
    types.sort_unstable();
    types.dedup();
    let mut facts = SdeFacts {
        systems: HashMap::new(),
        types: HashMap::new(),
    };
    for row in plans::select(client, SDE_SYSTEMS_SQL, None, &[sys.into()]).map_err(spi_err)? {
        let id = row.get::<i64>(1).map_err(spi_err)?.unwrap_or(0);
        facts.systems.insert(
            id,
            (
                row.get::<i64>(2).map_err(spi_err)?,
                row.get::<i64>(3).map_err(spi_err)?,
                row.get::<f64>(4).map_err(spi_err)?,
            ),
        );
    }
    for row in plans::select(client, SDE_SHIP_TYPES_SQL, None, &[types.into()]).map_err(spi_err)? {
        let id = row.get::<i64>(1).map_err(spi_err)?.unwrap_or(0);
        facts.types.insert(
            id,
            (
                row.get::<i64>(2).map_err(spi_err)?,
                row.get::<i64>(3).map_err(spi_err)?,
            ),
        );
    }
    Ok(facts)
}

/// The killmail as the stats rules see it, with SDE facts and a value.
fn kill_state(k: &Killmail, sde: &SdeFacts, value_cents: i128) -> KillState {
    let ship = |t: Option<i64>| {
        t.and_then(|t| sde.types.get(&t).copied())
            .unwrap_or((None, None))
    };
    let (vg, vc) = ship(Some(k.victim.ship_type_id));
    let (con, reg, _) = sde
        .systems
        .get(&k.solar_system_id)
        .copied()
        .unwrap_or((None, None, None));
    let z = k.zkb.clone().unwrap_or_default();
    let mut s = KillState {
        killmail_id: k.killmail_id,
        time: k.time,
        solar_system_id: k.solar_system_id,
        constellation_id: con,
        region_id: reg,
        value_cents,
        points: z.points.unwrap_or(0),
        victim: Party {
            character_id: k.victim.character_id,
            corporation_id: k.victim.corporation_id,
            alliance_id: k.victim.alliance_id,
            faction_id: k.victim.faction_id,
            ship_type_id: Some(k.victim.ship_type_id),
            ship_group_id: vg,
            ship_category_id: vc,
        },
        victim_damage_taken: k.victim.damage_taken,
        attackers: k
            .attackers
            .iter()
            .map(|a| {
                let (g, c) = ship(a.ship_type_id);
                AttackerState {
                    party: Party {
                        character_id: a.character_id,
                        corporation_id: a.corporation_id,
                        alliance_id: a.alliance_id,
                        faction_id: a.faction_id,
                        ship_type_id: a.ship_type_id,
                        ship_group_id: g,
                        ship_category_id: c,
                    },
                    damage_done: a.damage_done,
                    final_blow: a.final_blow,
                }
            })
            .collect(),
        ..Default::default()
    };
    s.resolve_flags(StoredFlags {
        npc: z.npc,
        solo: z.solo,
        awox: z.awox,
    });
    s
}

fn cents(v: Option<i128>) -> Option<i64> {
    v.map(|c| c as i64)
}

fn labels_json(l: &Option<Vec<String>>) -> Option<pgrx::JsonB> {
    l.as_ref().map(|v| pgrx::JsonB(Value::from(v.clone())))
}

pub fn ingest_batch(batch: Vec<Killmail>) -> Result<i64> {
    // Later deliveries of the same id in one call win.
    let mut by_id: BTreeMap<i64, Killmail> = BTreeMap::new();
    for k in batch {
        by_id.insert(k.killmail_id, k);
    }
    if by_id.is_empty() {
        return Ok(0);
    }
    let mut fresh = Vec::new();
    let changed = Spi::connect_mut(|c| {
        let ids: Vec<i64> = by_id.keys().copied().collect();
        let mut existing = stored_zkb(c, ids)?;
        let new: Vec<&Killmail> = by_id
            .values()
            .filter(|k| !existing.contains_key(&k.killmail_id))
            .collect();
        if new.is_empty() {
            return redeliver(c, &by_id, &existing);
        }
        let owned: Vec<Killmail> = new.iter().map(|k| (*k).clone()).collect();
        let sde = plans::with_index_plans(|| plans::with_generic_plans(|| sde_facts(c, &owned)))?;
        let states: Vec<KillState> = owned
            .iter()
            .map(|k| {
                kill_state(
                    k,
                    &sde,
                    k.zkb
                        .as_ref()
                        .and_then(|z| z.total_value_cents)
                        .unwrap_or(0),
                )
            })
            .collect();
        let mut states_by_id: HashMap<i64, KillState> =
            states.into_iter().map(|s| (s.killmail_id, s)).collect();

        let lost = pending::with_triggers_suppressed(|| -> Result<Vec<i64>> {
            let inserted = insert_rows(c, &owned, &sde, &states_by_id)?;
            let lost: Vec<i64> = owned
                .iter()
                .map(|k| k.killmail_id)
                .filter(|id| !inserted.contains(id))
                .collect();
            states_by_id.retain(|id, _| inserted.contains(id));
            let stored: Vec<&Killmail> = owned
                .iter()
                .filter(|k| inserted.contains(&k.killmail_id))
                .collect();
            insert_children(c, &stored, &states_by_id)?;
            // Killmails without zkb: value from the price cache, by the one rule in SQL.
            let unpriced: Vec<i64> = stored
                .iter()
                .filter(|k| k.zkb.as_ref().and_then(|z| z.total_value_cents).is_none())
                .map(|k| k.killmail_id)
                .collect();
            if !unpriced.is_empty() {
                for row in
                    plans::update(c, PRICE_VALUES_SQL, &[unpriced.into()]).map_err(spi_err)?
                {
                    let id = row.get::<i64>(1).map_err(spi_err)?.unwrap_or(0);
                    let v = row.get::<i64>(2).map_err(spi_err)?.unwrap_or(0);
                    if let Some(s) = states_by_id.get_mut(&id) {
                        s.value_cents = v as i128;
                    }
                }
            }
            Ok(lost)
        })?;
        if crate::gucs::match_on_ingest() {
            for k in &owned {
                if let Some(s) = states_by_id.get(&k.killmail_id) {
                    fresh.push(match_input(k, s, &sde));
                }
            }
        }
        let after: Vec<KillState> = states_by_id.into_values().collect();
        stats::credit_change(c, &[], &after)?;
        // Re-deliveries last: every row lock they take comes after the inserts
        // that may have waited, and in id order, so writers cannot deadlock.
        if !lost.is_empty() {
            existing.extend(stored_zkb(c, lost)?);
        }
        Ok(redeliver(c, &by_id, &existing)? + after.len() as i64)
    })?;
    crate::profiles::match_ingested(fresh);
    Ok(changed)
}

/// A killmail just stored, as the matcher reads it back from the tables
/// (profiles::load_view): the same ids, stored ship groups, flags and value.
fn match_input(k: &Killmail, s: &KillState, sde: &SdeFacts) -> crate::profiles::Fresh {
    let i32of = |v: Option<i64>| v.and_then(|x| i32::try_from(x).ok());
    let victim = PartyView {
        character_id: k.victim.character_id,
        corporation_id: k.victim.corporation_id,
        alliance_id: k.victim.alliance_id,
        faction_id: k.victim.faction_id,
        ship_type_id: i32of(Some(k.victim.ship_type_id)),
        ship_group_id: i32of(s.victim.ship_group_id),
        ship_category_id: None,
    };
    let attackers: Vec<PartyView> = k
        .attackers
        .iter()
        .zip(s.attackers.iter())
        .map(|(a, st)| PartyView {
            character_id: a.character_id,
            corporation_id: a.corporation_id,
            alliance_id: a.alliance_id,
            faction_id: a.faction_id,
            ship_type_id: i32of(a.ship_type_id),
            ship_group_id: i32of(st.party.ship_group_id),
            ship_category_id: None,
        })
        .collect();
    let items = k
        .items
        .iter()
        .filter_map(|i| {
            Some(ItemRef {
                type_id: i32::try_from(i.type_id).ok()?,
                flag: i32::try_from(i.flag).ok()?,
                top_level: i.parent_index.is_none(),
            })
        })
        .collect();
    let (con, reg, sec) = sde
        .systems
        .get(&k.solar_system_id)
        .copied()
        .unwrap_or((None, None, None));
    let view = KillmailView {
        killmail_id: k.killmail_id,
        solar_system_id: i32of(Some(k.solar_system_id)).unwrap_or(0),
        attacker_count: attackers.len() as u32,
        victim,
        attackers,
        total_value: value_of_cents(s.value_cents),
        ..KillmailView::default()
    };
    crate::profiles::Fresh {
        km: JsonKillmail {
            view,
            items,
            flags: StoredFlags {
                npc: Some(s.flags.npc),
                solo: Some(s.flags.solo),
                awox: Some(s.flags.awox),
            },
            final_blow: k.attackers.iter().map(|a| a.final_blow).collect(),
        },
        location: (i32of(con), i32of(reg), sec),
    }
}

/// The stored numeric(20,2) read as float8, bit for bit: through its decimal
/// text, as PostgreSQL converts it (cents beyond 2^53 would round otherwise).
fn value_of_cents(cents: i128) -> f64 {
    let c = cents.max(0);
    format!("{}.{:02}", c / 100, c % 100).parse().unwrap_or(0.0)
}

/// The stored zKillboard values of the killmails among `ids` that exist.
fn stored_zkb(c: &SpiClient, ids: Vec<i64>) -> Result<BTreeMap<i64, StoredZkb>> {
    let mut existing: BTreeMap<i64, StoredZkb> = BTreeMap::new();
    let rows = plans::with_index_plans(|| {
        plans::with_generic_plans(|| plans::select(c, EXISTING_ZKB_SQL, None, &[ids.into()]))
    });
    for row in rows.map_err(spi_err)? {
        let g = |i: usize| row.get::<i64>(i).map_err(spi_err);
        let b = |i: usize| row.get::<bool>(i).map_err(spi_err);
        let id = g(1)?.unwrap_or(0);
        existing.insert(
            id,
            StoredZkb {
                values: [g(2)?, g(3)?, g(4)?, g(5)?, g(6)?, g(10)?],
                flags: [b(7)?, b(8)?, b(9)?],
                labels: row
                    .get::<String>(11)
                    .map_err(spi_err)?
                    .and_then(|t| serde_json::from_str(&t).ok()),
                from_zkb: row.get::<String>(12).map_err(spi_err)?.as_deref() == Some("zkb"),
            },
        );
    }
    Ok(existing)
}

/// Re-deliveries: only zKillboard values can change; UPDATE (in id order) and
/// let the trigger diff. Returns how many changed.
fn redeliver(
    c: &mut SpiClient,
    by_id: &BTreeMap<i64, Killmail>,
    existing: &BTreeMap<i64, StoredZkb>,
) -> Result<i64> {
    let mut changed: i64 = 0;
    for (id, old) in existing {
        let k = &by_id[id];
        // Without zkb nothing that could change came with this delivery.
        let Some(z) = &k.zkb else { continue };
        if !old.differs_from(z) {
            continue;
        }
        plans::update(
            c,
            UPDATE_ZKB_SQL,
            &[
                (*id).into(),
                cents(z.total_value_cents)
                    .or(old.values[0])
                    .unwrap_or(0)
                    .into(),
                cents(z.fitted_value_cents).or(old.values[1]).into(),
                cents(z.destroyed_value_cents).or(old.values[2]).into(),
                cents(z.dropped_value_cents).or(old.values[3]).into(),
                z.points
                    .or(old.values[4])
                    .map(|p| p.clamp(0, i32::MAX as i64) as i32)
                    .into(),
                z.npc.or(old.flags[0]).into(),
                z.solo.or(old.flags[1]).into(),
                z.awox.or(old.flags[2]).into(),
                z.location_id.or(old.values[5]).into(),
                labels_json(&z.labels).into(),
            ],
        )
        .map_err(spi_err)?;
        changed += 1;
    }
    Ok(changed)
}

/// zKillboard values as stored, to tell a real re-price from a plain re-delivery.
struct StoredZkb {
    /// total, fitted, destroyed, dropped (cents), points, location_id
    values: [Option<i64>; 6],
    /// npc, solo, awox
    flags: [Option<bool>; 3],
    labels: Option<Vec<String>>,
    from_zkb: bool,
}

impl StoredZkb {
    /// A field absent from the new delivery keeps its stored value.
    fn differs_from(&self, z: &killboard_core::ingest::Zkb) -> bool {
        let values = [
            cents(z.total_value_cents),
            cents(z.fitted_value_cents),
            cents(z.destroyed_value_cents),
            cents(z.dropped_value_cents),
            z.points,
            z.location_id,
        ];
        let flags = [z.npc, z.solo, z.awox];
        (!self.from_zkb && z.total_value_cents.is_some())
            || values
                .iter()
                .zip(self.values.iter())
                .any(|(n, o)| n.is_some() && n != o)
            || flags
                .iter()
                .zip(self.flags.iter())
                .any(|(n, o)| n.is_some() && n != o)
            || (z.labels.is_some() && z.labels != self.labels)
    }
}

fn insert_rows(
    c: &mut SpiClient,
    kms: &[Killmail],
    sde: &SdeFacts,
    states: &HashMap<i64, KillState>,
) -> Result<HashSet<i64>> {
    let n = kms.len();
    let mut a_id = Vec::with_capacity(n);
    let mut a_hash = Vec::with_capacity(n);
    let mut a_t = Vec::with_capacity(n);
    let mut a_sys = Vec::with_capacity(n);
    let mut a_con: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut a_reg: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut a_sec: Vec<Option<f32>> = Vec::with_capacity(n);
    let mut a_moon: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut a_war: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut px: Vec<Option<f64>> = vec![];
    let mut py: Vec<Option<f64>> = vec![];
    let mut pz: Vec<Option<f64>> = vec![];
    let (mut vch, mut vco, mut val, mut vfa) = (vec![], vec![], vec![], vec![]);
    let mut vst: Vec<i32> = vec![];
    let mut vsg: Vec<Option<i32>> = vec![];
    let mut dmg: Vec<i64> = vec![];
    let mut natt: Vec<i32> = vec![];
    let mut total: Vec<Option<i64>> = vec![];
    let mut fitted: Vec<Option<i64>> = vec![];
    let mut destroyed: Vec<Option<i64>> = vec![];
    let mut dropped: Vec<Option<i64>> = vec![];
    let mut points: Vec<Option<i32>> = vec![];
    let mut npc: Vec<Option<bool>> = vec![];
    let mut solo: Vec<Option<bool>> = vec![];
    let mut awox: Vec<Option<bool>> = vec![];
    let mut loc: Vec<Option<i64>> = vec![];
    let mut labels: Vec<Option<pgrx::JsonB>> = vec![];
    let mut vsrc: Vec<String> = vec![];
    let mut seq: Vec<Option<i64>> = vec![];

    let to_i32 = |v: i64, what: &str| -> Result<i32> {
        i32::try_from(v).map_err(|_| {
            KillboardError::invalid(what, format!("{v} is out of range for an EVE id"))
        })
    };
    for k in kms {
        let s = &states[&k.killmail_id];
        let z = k.zkb.clone().unwrap_or_default();
        let (_, _, sec) = sde
            .systems
            .get(&k.solar_system_id)
            .copied()
            .unwrap_or((None, None, None));
        a_id.push(k.killmail_id);
        a_hash.push(k.hash.clone().or(z.hash.clone()));
        a_t.push(k.time);
        a_sys.push(to_i32(k.solar_system_id, "$.solar_system_id")?);
        a_con.push(s.constellation_id.map(|v| v as i32));
        a_reg.push(s.region_id.map(|v| v as i32));
        a_sec.push(sec.map(|v| v as f32));
        a_moon.push(k.moon_id.map(|v| v as i32));
        a_war.push(k.war_id.map(|v| v as i32));
        px.push(k.victim.position.map(|p| p[0]));
        py.push(k.victim.position.map(|p| p[1]));
        pz.push(k.victim.position.map(|p| p[2]));
        vch.push(k.victim.character_id);
        vco.push(k.victim.corporation_id);
        val.push(k.victim.alliance_id);
        vfa.push(k.victim.faction_id);
        vst.push(to_i32(k.victim.ship_type_id, "$.victim.ship_type_id")?);
        vsg.push(s.victim.ship_group_id.map(|v| v as i32));
        dmg.push(k.victim.damage_taken);
        natt.push(k.attackers.len() as i32);
        total.push(cents(z.total_value_cents));
        fitted.push(cents(z.fitted_value_cents));
        destroyed.push(cents(z.destroyed_value_cents));
        dropped.push(cents(z.dropped_value_cents));
        points.push(
            z.points
                .map(|p| p.clamp(i32::MIN as i64, i32::MAX as i64) as i32),
        );
        // Derived flags are stored, so later reads never depend on a changed SDE.
        npc.push(Some(s.flags.npc));
        solo.push(Some(s.flags.solo));
        awox.push(Some(s.flags.awox));
        loc.push(z.location_id);
        labels.push(labels_json(&z.labels));
        vsrc.push(if z.total_value_cents.is_some() {
            "zkb".to_string()
        } else {
            "unknown".to_string()
        });
        seq.push(k.sequence_id);
    }
    // A killmail another writer stored first (we waited for it) is left out:
    // the caller treats it as a re-delivery instead of failing on the key.
    let mut inserted: HashSet<i64> = HashSet::with_capacity(n);
    for row in plans::update(
        c,
        INSERT_KILLMAILS_SQL,
        &[
            a_id.into(),
            a_hash.into(),
            a_t.into(),
            a_sys.into(),
            a_con.into(),
            a_reg.into(),
            a_sec.into(),
            a_moon.into(),
            a_war.into(),
            px.into(),
            py.into(),
            pz.into(),
            vch.into(),
            vco.into(),
            val.into(),
            vfa.into(),
            vst.into(),
            vsg.into(),
            dmg.into(),
            natt.into(),
            total.into(),
            fitted.into(),
            destroyed.into(),
            dropped.into(),
            points.into(),
            npc.into(),
            solo.into(),
            awox.into(),
            loc.into(),
            labels.into(),
            vsrc.into(),
            seq.into(),
        ],
    )
    .map_err(spi_err)?
    {
        inserted.insert(row.get::<i64>(1).map_err(spi_err)?.unwrap_or(0));
    }
    Ok(inserted)
}

fn insert_children(
    c: &mut SpiClient,
    kms: &[&Killmail],
    states: &HashMap<i64, KillState>,
) -> Result<()> {
    let (mut at_id, mut at_idx, mut at_ch, mut at_co, mut at_al, mut at_fa) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut at_st: Vec<Option<i32>> = vec![];
    let mut at_sg: Vec<Option<i32>> = vec![];
    let mut at_wt: Vec<Option<i32>> = vec![];
    let mut at_dmg: Vec<i64> = vec![];
    let mut at_fb: Vec<bool> = vec![];
    let mut at_sec: Vec<Option<f32>> = vec![];
    let mut it_id: Vec<i64> = vec![];
    let mut it_idx: Vec<i32> = vec![];
    let mut it_par: Vec<Option<i32>> = vec![];
    let mut it_ty: Vec<i32> = vec![];
    let mut it_fl: Vec<i32> = vec![];
    let mut it_si: Vec<i32> = vec![];
    let mut it_qd: Vec<i64> = vec![];
    let mut it_qr: Vec<i64> = vec![];

    let to_i32 = |v: i64, what: &str| -> Result<i32> {
        i32::try_from(v).map_err(|_| {
            KillboardError::invalid(what, format!("{v} is out of range for an EVE id"))
        })
    };
    for k in kms {
        let s = &states[&k.killmail_id];
        for (i, (a, st)) in k.attackers.iter().zip(s.attackers.iter()).enumerate() {
            at_id.push(k.killmail_id);
            at_idx.push(i as i32);
            at_ch.push(a.character_id);
            at_co.push(a.corporation_id);
            at_al.push(a.alliance_id);
            at_fa.push(a.faction_id);
            at_st.push(
                a.ship_type_id
                    .map(|v| to_i32(v, "$.attackers[].ship_type_id"))
                    .transpose()?,
            );
            at_sg.push(st.party.ship_group_id.map(|v| v as i32));
            at_wt.push(
                a.weapon_type_id
                    .map(|v| to_i32(v, "$.attackers[].weapon_type_id"))
                    .transpose()?,
            );
            at_dmg.push(a.damage_done);
            at_fb.push(a.final_blow);
            at_sec.push(a.security_status.map(|v| v as f32));
        }
        for it in &k.items {
            it_id.push(k.killmail_id);
            it_idx.push(it.index);
            it_par.push(it.parent_index);
            it_ty.push(to_i32(it.type_id, "$.victim.items[].item_type_id")?);
            it_fl.push(to_i32(it.flag, "$.victim.items[].flag")?);
            it_si.push(to_i32(it.singleton, "$.victim.items[].singleton")?);
            it_qd.push(it.quantity_destroyed);
            it_qr.push(it.quantity_dropped);
        }
    }
    plans::update(
        c,
        INSERT_ATTACKERS_SQL,
        &[
            at_id.into(),
            at_idx.into(),
            at_ch.into(),
            at_co.into(),
            at_al.into(),
            at_fa.into(),
            at_st.into(),
            at_sg.into(),
            at_wt.into(),
            at_dmg.into(),
            at_fb.into(),
            at_sec.into(),
        ],
    )
    .map_err(spi_err)?;
    if !it_id.is_empty() {
        plans::update(
            c,
            INSERT_ITEMS_SQL,
            &[
                it_id.into(),
                it_idx.into(),
                it_par.into(),
                it_ty.into(),
                it_fl.into(),
                it_si.into(),
                it_qd.into(),
                it_qr.into(),
            ],
        )
        .map_err(spi_err)?;
    }
    Ok(())
}
