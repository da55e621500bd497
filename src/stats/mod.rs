//! Stats glue: the window lock, crediting killmail changes, flushing merged
//! deltas in key order, and reading records back. The rules live in core.

pub mod direct;
pub mod load;
pub mod pending;
pub mod plans;

use std::collections::{HashMap, HashSet};

use killboard_core::model::KillState;
use killboard_core::stats::rebuild::Rebuilder;
use killboard_core::stats::{credit, CreditMode, DeltaMap, EntityKey, EntityKind, Record};
use killboard_core::windows::mask_for;
use killboard_core::{KillboardError, Result, SqlState};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::gucs;

/// Advisory lock (classid, objid) shared by writers and taken exclusively by
/// advance_windows/rebuild_stats, so a window never moves under a writer.
pub const WINDOW_LOCK: (i32, i32) = (0x4B42, 1);

const WINDOW_STATE_SQL: &str = include_str!("../../sql/queries/window_state.sql");
const FLUSH_LOCK_SQL: &str = include_str!("../../sql/queries/flush_lock.sql");
const FLUSH_UPDATE_SQL: &str = include_str!("../../sql/queries/flush_update.sql");
const FLUSH_DELETE_SQL: &str = include_str!("../../sql/queries/flush_delete.sql");
const FLUSH_INSERT_SQL: &str = include_str!("../../sql/queries/flush_insert.sql");
const FLUSH_APPEND_SQL: &str = include_str!("../../sql/queries/flush_append.sql");
const ADVISORY_SHARED_SQL: &str = "SELECT pg_catalog.pg_advisory_xact_lock_shared($1, $2)";
const MARK_STALE_SQL: &str = "SELECT killboard._mark_stats_stale()";
const PAGE_IDS_SQL: &str = "SELECT killmail_id FROM killboard.killmails WHERE killmail_id > $1 ORDER BY killmail_id LIMIT $2";
const ENTITY_KILLMAILS_SQL: &str = include_str!("../../sql/queries/entity_killmails.sql");

pub fn spi_err(e: pgrx::spi::SpiError) -> KillboardError {
    KillboardError::internal(format!("SPI: {e}"))
}

pub fn read_window_state(client: &SpiClient) -> Result<(i64, CreditMode)> {
    let row = plans::select(client, WINDOW_STATE_SQL, Some(1), &[])
        .map_err(spi_err)?
        .first();
    let as_of = row
        .get::<i64>(1)
        .map_err(spi_err)?
        .ok_or_else(|| KillboardError::internal("stats_state is empty"))?;
    let mode = row.get::<String>(2).map_err(spi_err)?.unwrap_or_default();
    Ok((as_of, CreditMode::parse(&mode)?))
}

/// Make every later SPI query of this transaction take a fresh snapshot.
/// pgrx runs queries read-only (on the snapshot of the calling statement)
/// while the transaction has no xid; after waiting for the window lock that
/// snapshot predates the writers we waited for, so assign the xid now.
pub fn fresh_snapshots() {
    unsafe {
        pg_sys::GetCurrentTransactionId();
    }
}

/// The (as_of, mode) this transaction credits against; takes the shared window
/// lock on first use so advance_windows cannot move as_of until we commit.
pub fn begin_credit(client: &SpiClient) -> Result<(i64, CreditMode)> {
    if let Some(s) = pending::window_state() {
        return Ok(s);
    }
    plans::select(
        client,
        ADVISORY_SHARED_SQL,
        None,
        &[WINDOW_LOCK.0.into(), WINDOW_LOCK.1.into()],
    )
    .map_err(spi_err)?;
    fresh_snapshots();
    // A fresh snapshot after the lock: as_of as committed by the last advance.
    let (as_of, mode) = read_window_state(client)?;
    pending::set_window_state(as_of, mode);
    Ok((as_of, mode))
}

/// Credit the change of killmails from `before` to `after` (either may be empty).
pub fn credit_change(client: &SpiClient, before: &[KillState], after: &[KillState]) -> Result<()> {
    if before.is_empty() && after.is_empty() {
        return Ok(());
    }
    if !gucs::maintain_stats() {
        return mark_stale(client);
    }
    let (as_of, mode) = begin_credit(client)?;
    // Sized up front: growing a map of large records moves them all.
    let mut map = DeltaMap::with_capacity((before.len() + after.len()) * 8);
    let after_by_id: HashMap<i64, &KillState> = after.iter().map(|k| (k.killmail_id, k)).collect();
    let mut paired: HashSet<i64> = HashSet::new();
    let mut one = DeltaMap::new();
    for k in before {
        match after_by_id.get(&k.killmail_id) {
            // The same killmail before and after (attackers added, a re-price):
            // an entity credited on both sides at the same time keeps that
            // kill or loss, so its last time needs no recompute from the
            // killmails (which would otherwise run per entity at flush).
            Some(a) if a.time == k.time => {
                one.clear();
                credit(k, mode, mask_for(k.time, as_of), -1, None, &mut one);
                credit(a, mode, mask_for(a.time, as_of), 1, None, &mut one);
                for (key, mut r) in one.drain() {
                    if r.removed_kill.is_some() && r.removed_kill == r.last_kill {
                        r.removed_kill = None;
                    }
                    if r.removed_loss.is_some() && r.removed_loss == r.last_loss {
                        r.removed_loss = None;
                    }
                    // Credited the same on both sides: the times are already
                    // counted (stored or pending), nothing to write.
                    if r.removed_kill.is_none()
                        && r.removed_loss.is_none()
                        && r.periods.iter().all(|c| c.is_zero())
                    {
                        continue;
                    }
                    map.entry(key).or_default().add(&r);
                }
                paired.insert(k.killmail_id);
            }
            _ => credit(k, mode, mask_for(k.time, as_of), -1, None, &mut map),
        }
    }
    for k in after {
        if !paired.contains(&k.killmail_id) {
            credit(k, mode, mask_for(k.time, as_of), 1, None, &mut map);
        }
    }
    map.retain(|_, r| {
        !(r.periods.iter().all(|c| c.is_zero())
            && r.last_kill.is_none()
            && r.last_loss.is_none()
            && r.removed_kill.is_none()
            && r.removed_loss.is_none())
    });
    pending::add(map);
    Ok(())
}

pub fn mark_stale(client: &SpiClient) -> Result<()> {
    if pending::stale_marked() {
        return Ok(());
    }
    // Through a SECURITY DEFINER helper so writers need no UPDATE on stats_state.
    plans::select(client, MARK_STALE_SQL, None, &[]).map_err(spi_err)?;
    pending::set_stale_marked();
    Ok(())
}

fn key_arrays(keys: &[EntityKey]) -> (Vec<i64>, Vec<i16>) {
    (
        keys.iter().map(|k| k.id).collect(),
        keys.iter().map(|k| k.kind.code()).collect(),
    )
}

/// Write this transaction's merged deltas, in key order, without ever waiting
/// on a stats row another writer holds. Returns how many entities were touched.
///
/// Order matters for deadlock freedom: new entities are inserted first (the
/// only step that can wait, and only on another writer's insert of the same
/// key, in the same key order, or on a writer in step 2, which never waits);
/// then existing rows are locked with SKIP LOCKED and updated; rows held by
/// someone else get an append-only delta.
pub fn flush(client: &mut SpiClient) -> Result<usize> {
    let Some(map) = pending::take_all() else {
        return Ok(0);
    };
    if map.is_empty() {
        return Ok(0);
    }
    plans::with_index_plans(|| flush_map(client, map))
}

fn flush_map(client: &mut SpiClient, map: DeltaMap) -> Result<usize> {
    // Records are large (every period, i128 counters); a big flush moves only
    // keys and encoded bytes around, never copies of the records.
    let mut keys: Vec<EntityKey> = map.keys().copied().collect();
    keys.sort_unstable();

    // 1. Keys not in the table (as of now): insert. Visible rows are filtered
    //    out before the unique check, so a held row is never waited on.
    let mut inserted: HashSet<EntityKey> = HashSet::new();
    {
        let (ids, kinds) = key_arrays(&keys);
        let data: Vec<Vec<u8>> = keys.iter().map(|k| clean(&map[k]).encode()).collect();
        for row in plans::update(
            client,
            FLUSH_INSERT_SQL,
            &[ids.into(), kinds.into(), data.into()],
        )
        .map_err(spi_err)?
        {
            let id = row.get::<i64>(1).map_err(spi_err)?.unwrap_or(0);
            let kind = row.get::<i16>(2).map_err(spi_err)?.unwrap_or(0);
            if let Some(kind) = EntityKind::from_code(kind) {
                inserted.insert(EntityKey { id, kind });
            }
        }
    }
    let rest: Vec<EntityKey> = keys
        .iter()
        .filter(|k| !inserted.contains(k))
        .copied()
        .collect();
    if rest.is_empty() {
        return Ok(keys.len());
    }

    // 2. Existing rows we can lock now.
    let (ids, kinds) = key_arrays(&rest);
    let mut locked: HashMap<EntityKey, Vec<u8>> = HashMap::with_capacity(rest.len());
    for row in
        plans::update(client, FLUSH_LOCK_SQL, &[ids.into(), kinds.into()]).map_err(spi_err)?
    {
        let id = row.get::<i64>(1).map_err(spi_err)?.unwrap_or(0);
        let kind = row.get::<i16>(2).map_err(spi_err)?.unwrap_or(0);
        let data = row.get::<Vec<u8>>(3).map_err(spi_err)?.unwrap_or_default();
        if let Some(kind) = EntityKind::from_code(kind) {
            locked.insert(EntityKey { id, kind }, data);
        }
    }

    let mut upd: Vec<(EntityKey, Vec<u8>)> = Vec::new();
    let mut del: Vec<EntityKey> = Vec::new();
    let mut held: Vec<EntityKey> = Vec::new();
    let mut recompute: Vec<(EntityKey, Record)> = Vec::new();
    for key in &rest {
        let delta = &map[key];
        match locked.get(key) {
            Some(bytes) => {
                let mut merged = Record::decode(bytes)?;
                merged.add(delta);
                merged.removed_kill = None;
                merged.removed_loss = None;
                if delta.needs_last_time_recompute(&merged) {
                    recompute.push((*key, merged));
                } else if merged.is_empty() {
                    del.push(*key);
                } else {
                    upd.push((*key, merged.encode()));
                }
            }
            None => held.push(*key),
        }
    }

    // Last kill/loss times cannot be lowered by a delta: recompute them
    // from the killmails for entities whose latest kill or loss went away.
    if !recompute.is_empty() {
        let (as_of, mode) = begin_credit(client)?;
        for (key, mut r) in recompute {
            let live = live_record(client, key, as_of, mode)?;
            r.last_kill = live.last_kill;
            r.last_loss = live.last_loss;
            if r.is_empty() {
                del.push(key);
            } else {
                upd.push((key, r.encode()));
            }
        }
    }

    if !upd.is_empty() {
        let (ids, kinds) = key_arrays(&upd.iter().map(|(k, _)| *k).collect::<Vec<_>>());
        let data: Vec<Vec<u8>> = upd.into_iter().map(|(_, d)| d).collect();
        plans::update(
            client,
            FLUSH_UPDATE_SQL,
            &[ids.into(), kinds.into(), data.into()],
        )
        .map_err(spi_err)?;
    }
    if !del.is_empty() {
        let (ids, kinds) = key_arrays(&del);
        plans::update(client, FLUSH_DELETE_SQL, &[ids.into(), kinds.into()]).map_err(spi_err)?;
    }
    // 3. Append-only deltas for rows another writer holds: no waiting, no deadlock.
    if !held.is_empty() {
        let (ids, kinds) = key_arrays(&held);
        let data: Vec<Vec<u8>> = held.iter().map(|k| clean(&map[k]).encode()).collect();
        plans::update(
            client,
            FLUSH_APPEND_SQL,
            &[ids.into(), kinds.into(), data.into()],
        )
        .map_err(spi_err)?;
    }
    Ok(keys.len())
}

fn clean(r: &Record) -> Record {
    let mut r = *r;
    r.removed_kill = None;
    r.removed_loss = None;
    r
}

/// Flush if this backend has unflushed deltas and is at top level.
pub fn flush_pending() -> Result<()> {
    if !pending::has_pending() {
        return Ok(());
    }
    Spi::connect_mut(flush).map(|_| ())
}

/// An entity's record recomputed from its killmails (the oracle).
pub fn live_record(
    client: &SpiClient,
    key: EntityKey,
    as_of: i64,
    mode: CreditMode,
) -> Result<Record> {
    let mut ids: Vec<i64> = Vec::new();
    for row in client
        .select(
            ENTITY_KILLMAILS_SQL,
            None,
            &[key.id.into(), (key.kind.code() as i32).into()],
        )
        .map_err(spi_err)?
    {
        if let Some(id) = row.get::<i64>(1).map_err(spi_err)? {
            ids.push(id);
        }
    }
    let mut map = DeltaMap::new();
    for chunk in ids.chunks(5_000) {
        for k in load::states(client, load::Filter::Ids(chunk))? {
            credit(&k, mode, mask_for(k.time, as_of), 1, Some(key), &mut map);
        }
    }
    Ok(map.remove(&key).map(|r| clean(&r)).unwrap_or_default())
}

/// Every entity's record recomputed from all killmails (verify_stats).
pub fn compute_all(
    client: &mut SpiClient,
    as_of: i64,
    mode: CreditMode,
) -> Result<(DeltaMap, i64)> {
    let mut map = DeltaMap::new();
    let n = compute_each(client, as_of, mode, 1, |_, k, r| {
        map.insert(k, *r);
        Ok(())
    })?;
    Ok((map, n))
}

/// Recompute every entity's record from all killmails in `parts` passes (each
/// keeps one hash partition of the entities in memory) and hand each record
/// to `f`, in key order within a pass. Returns the number of killmails.
pub fn compute_each(
    client: &mut SpiClient,
    as_of: i64,
    mode: CreditMode,
    parts: u64,
    mut f: impl FnMut(&mut SpiClient, EntityKey, &Record) -> Result<()>,
) -> Result<i64> {
    const BATCH: i64 = 20_000;
    let mut n: i64 = 0;
    for part in 0..parts.max(1) {
        let mut builder = Rebuilder::new(mode, as_of, parts, part);
        let mut last_id: i64 = 0;
        n = 0;
        // Keyset pages keep memory flat and use the primary key.
        loop {
            let ids: Vec<i64> =
                plans::select(client, PAGE_IDS_SQL, None, &[last_id.into(), BATCH.into()])
                    .map_err(spi_err)?
                    .filter_map(|r| r.get::<i64>(1).ok().flatten())
                    .collect();
            let Some(&max) = ids.last() else { break };
            for k in load::states(client, load::Filter::Ids(&ids))? {
                builder.add(&k);
                n += 1;
            }
            last_id = max;
        }
        let mut err = None;
        builder.finish(|k, r| {
            if err.is_none() {
                if let Err(e) = f(client, k, r) {
                    err = Some(e);
                }
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
    }
    Ok(n)
}

pub fn require_top_level(what: &str) -> Result<()> {
    if unsafe { pg_sys::GetCurrentTransactionNestLevel() } > 1 && pending::has_pending() {
        return Err(KillboardError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!("{what} cannot run inside a savepoint that has unflushed killmail writes"),
        ));
    }
    Ok(())
}
