//! Stats glue: the window lock, crediting killmail changes, flushing merged
//! deltas in key order, and reading records back. The rules live in core.

pub mod load;
pub mod pending;

use std::collections::{BTreeMap, HashSet};

use killboard_core::model::KillState;
use killboard_core::stats::{credit, CreditMode, DeltaMap, EntityKey, EntityKind, Record};
use killboard_core::windows::{mask_for, PeriodMask};
use killboard_core::{KillboardError, Result, SqlState};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::gucs;

/// Advisory lock (classid, objid) shared by writers and taken exclusively by
/// advance_windows/rebuild_stats, so a window never moves under a writer.
pub const WINDOW_LOCK: (i32, i32) = (0x4B42, 1);

const WINDOW_STATE_SQL: &str = include_str!("../../sql/queries/window_state.sql");
const FLUSH_EXISTS_SQL: &str = include_str!("../../sql/queries/flush_exists.sql");
const FLUSH_LOCK_SQL: &str = include_str!("../../sql/queries/flush_lock.sql");
const FLUSH_UPDATE_SQL: &str = include_str!("../../sql/queries/flush_update.sql");
const FLUSH_DELETE_SQL: &str = include_str!("../../sql/queries/flush_delete.sql");
const FLUSH_INSERT_SQL: &str = include_str!("../../sql/queries/flush_insert.sql");
const FLUSH_APPEND_SQL: &str = include_str!("../../sql/queries/flush_append.sql");
const READ_ENTITY_SQL: &str = include_str!("../../sql/queries/read_entity.sql");
const ENTITY_KILLMAILS_SQL: &str = include_str!("../../sql/queries/entity_killmails.sql");

pub fn spi_err(e: pgrx::spi::SpiError) -> KillboardError {
    KillboardError::internal(format!("SPI: {e}"))
}

pub fn read_window_state(client: &SpiClient) -> Result<(i64, CreditMode)> {
    let row = client.select(WINDOW_STATE_SQL, Some(1), &[]).map_err(spi_err)?.first();
    let as_of = row.get::<i64>(1).map_err(spi_err)?.ok_or_else(|| KillboardError::internal("stats_state is empty"))?;
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
    client
        .select("SELECT pg_catalog.pg_advisory_xact_lock_shared($1, $2)", None, &[WINDOW_LOCK.0.into(), WINDOW_LOCK.1.into()])
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
    let mut map = DeltaMap::new();
    for k in before {
        credit(k, mode, mask_for(k.time, as_of), -1, None, &mut map);
    }
    for k in after {
        credit(k, mode, mask_for(k.time, as_of), 1, None, &mut map);
    }
    map.retain(|_, r| !(r.periods.iter().all(|c| c.is_zero()) && r.last_kill.is_none() && r.last_loss.is_none() && r.removed_kill.is_none() && r.removed_loss.is_none()));
    pending::add(map);
    Ok(())
}

fn mark_stale(client: &SpiClient) -> Result<()> {
    if pending::stale_marked() {
        return Ok(());
    }
    // Through a SECURITY DEFINER helper so writers need no UPDATE on stats_state.
    client.select("SELECT killboard._mark_stats_stale()", None, &[]).map_err(spi_err)?;
    pending::set_stale_marked();
    Ok(())
}

fn key_arrays(keys: &[EntityKey]) -> (Vec<i64>, Vec<i16>) {
    (keys.iter().map(|k| k.id).collect(), keys.iter().map(|k| k.kind.code()).collect())
}

/// Write this transaction's merged deltas, in key order, without waiting on
/// rows other writers hold. Returns how many entities were touched.
///
/// New keys are inserted first, in key order: an insert can wait for another
/// writer's insert of the same key, and doing every such wait before we lock
/// or update any existing row keeps the wait graph acyclic. Existing rows are
/// then locked with SKIP LOCKED; rows another writer holds get an
/// append-only delta instead of a wait.
pub fn flush(client: &mut SpiClient) -> Result<usize> {
    let Some(map) = pending::take_all() else { return Ok(0) };
    if map.is_empty() {
        return Ok(0);
    }
    let mut entries: Vec<(EntityKey, Record)> = map.into_iter().collect();
    entries.sort_by_key(|(k, _)| *k);
    let keys: Vec<EntityKey> = entries.iter().map(|(k, _)| *k).collect();
    let (ids, kinds) = key_arrays(&keys);

    // 1. New entities. A key that turns out to exist (or was just inserted by
    //    a writer we waited for) is left out of RETURNING and handled below.
    let mut existing: HashSet<(i64, i16)> = HashSet::new();
    for row in client.select(FLUSH_EXISTS_SQL, None, &[ids.into(), kinds.into()]).map_err(spi_err)? {
        existing.insert((row.get::<i64>(1).map_err(spi_err)?.unwrap_or(0), row.get::<i16>(2).map_err(spi_err)?.unwrap_or(0)));
    }
    let mut inserted: HashSet<(i64, i16)> = HashSet::new();
    let fresh: Vec<&(EntityKey, Record)> = entries.iter().filter(|(k, _)| !existing.contains(&(k.id, k.kind.code()))).collect();
    if !fresh.is_empty() {
        let (ids, kinds) = key_arrays(&fresh.iter().map(|(k, _)| *k).collect::<Vec<_>>());
        let data: Vec<Vec<u8>> = fresh.iter().map(|(_, r)| clean(r).encode()).collect();
        for row in client.update(FLUSH_INSERT_SQL, None, &[ids.into(), kinds.into(), data.into()]).map_err(spi_err)? {
            inserted.insert((
                row.get::<i64>(1).map_err(spi_err)?.unwrap_or(0),
                row.get::<i16>(2).map_err(spi_err)?.unwrap_or(0),
            ));
        }
    }
    let rest: Vec<(EntityKey, Record)> = entries.iter().filter(|(k, _)| !inserted.contains(&(k.id, k.kind.code()))).copied().collect();
    if rest.is_empty() {
        return Ok(entries.len());
    }

    // 2. Existing rows we can lock now.
    let (ids, kinds) = key_arrays(&rest.iter().map(|(k, _)| *k).collect::<Vec<_>>());
    let mut locked: BTreeMap<EntityKey, Record> = BTreeMap::new();
    for row in client.select(FLUSH_LOCK_SQL, None, &[ids.into(), kinds.into()]).map_err(spi_err)? {
        let id = row.get::<i64>(1).map_err(spi_err)?.unwrap_or(0);
        let kind = row.get::<i16>(2).map_err(spi_err)?.unwrap_or(0);
        let data = row.get::<Vec<u8>>(3).map_err(spi_err)?.unwrap_or_default();
        if let Some(kind) = EntityKind::from_code(kind) {
            locked.insert(EntityKey { id, kind }, Record::decode(&data)?);
        }
    }

    let mut upd: Vec<(EntityKey, Record)> = Vec::new();
    let mut del: Vec<EntityKey> = Vec::new();
    let mut held: Vec<(EntityKey, Record)> = Vec::new();
    let mut recompute: Vec<EntityKey> = Vec::new();
    for (key, delta) in &rest {
        match locked.get(key) {
            Some(stored) => {
                let mut merged = *stored;
                merged.add(delta);
                merged.removed_kill = None;
                merged.removed_loss = None;
                if delta.needs_last_time_recompute(&merged) {
                    recompute.push(*key);
                }
                if merged.is_empty() {
                    del.push(*key);
                } else {
                    upd.push((*key, merged));
                }
            }
            None => held.push((*key, *delta)),
        }
    }

    // 3. Last kill/loss times cannot be lowered by a delta: recompute them
    //    from the killmails for entities whose latest kill or loss went away.
    if !recompute.is_empty() {
        let (as_of, mode) = begin_credit(client)?;
        for key in &recompute {
            let live = live_record(client, *key, as_of, mode)?;
            if let Some((_, r)) = upd.iter_mut().find(|(k, _)| k == key) {
                r.last_kill = live.last_kill;
                r.last_loss = live.last_loss;
            }
        }
        upd.retain(|(k, r)| {
            let empty = r.is_empty();
            if empty {
                del.push(*k);
            }
            !empty
        });
    }

    if !upd.is_empty() {
        let (ids, kinds) = key_arrays(&upd.iter().map(|(k, _)| *k).collect::<Vec<_>>());
        let data: Vec<Vec<u8>> = upd.iter().map(|(_, r)| r.encode()).collect();
        client.update(FLUSH_UPDATE_SQL, None, &[ids.into(), kinds.into(), data.into()]).map_err(spi_err)?;
    }
    if !del.is_empty() {
        let (ids, kinds) = key_arrays(&del);
        client.update(FLUSH_DELETE_SQL, None, &[ids.into(), kinds.into()]).map_err(spi_err)?;
    }
    // 4. Append-only deltas for rows another writer holds: no waiting, no deadlock.
    if !held.is_empty() {
        let (ids, kinds) = key_arrays(&held.iter().map(|(k, _)| *k).collect::<Vec<_>>());
        let data: Vec<Vec<u8>> = held.iter().map(|(_, r)| clean(r).encode()).collect();
        client.update(FLUSH_APPEND_SQL, None, &[ids.into(), kinds.into(), data.into()]).map_err(spi_err)?;
    }
    Ok(entries.len())
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
    Spi::connect_mut(|c| flush(c)).map(|_| ())
}

/// Stored record + appended deltas + this backend's unflushed delta, and as_of.
pub fn read_record(client: &SpiClient, key: EntityKey) -> Result<(Record, i64)> {
    let mut rec = Record::default();
    let mut as_of = 0;
    for row in client.select(READ_ENTITY_SQL, None, &[key.id.into(), key.kind.code().into()]).map_err(spi_err)? {
        as_of = row.get::<i64>(1).map_err(spi_err)?.unwrap_or(0);
        if let Some(b) = row.get::<&[u8]>(2).map_err(spi_err)? {
            rec.add(&Record::decode(b)?);
        }
    }
    if let Some(p) = pending::pending_for(&key) {
        rec.add(&clean(&p));
    }
    Ok((rec, as_of))
}

/// An entity's record recomputed from its killmails (the oracle).
pub fn live_record(client: &SpiClient, key: EntityKey, as_of: i64, mode: CreditMode) -> Result<Record> {
    let mut ids: Vec<i64> = Vec::new();
    for row in client.select(ENTITY_KILLMAILS_SQL, None, &[key.id.into(), (key.kind.code() as i32).into()]).map_err(spi_err)? {
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

/// Every entity's record recomputed from all killmails, streamed in id order.
pub fn compute_all(client: &mut SpiClient, as_of: i64, mode: CreditMode) -> Result<(DeltaMap, i64)> {
    const BATCH: i64 = 20_000;
    let mut map = DeltaMap::new();
    let mut last_id: i64 = 0;
    let mut n: i64 = 0;
    // Keyset pages keep memory flat and use the primary key.
    loop {
        let ids: Vec<i64> = client
            .select(
                "SELECT killmail_id FROM killboard.killmails WHERE killmail_id > $1 ORDER BY killmail_id LIMIT $2",
                None,
                &[last_id.into(), BATCH.into()],
            )
            .map_err(spi_err)?
            .filter_map(|r| r.get::<i64>(1).ok().flatten())
            .collect();
        let Some(&max) = ids.last() else { break };
        for k in load::states(client, load::Filter::Ids(&ids))? {
            credit(&k, mode, mask_for(k.time, as_of), 1, None, &mut map);
            n += 1;
        }
        last_id = max;
    }
    for r in map.values_mut() {
        *r = clean(r);
    }
    map.retain(|_, r| !r.is_empty());
    Ok((map, n))
}

pub fn single_mask(p: killboard_core::stats::Period) -> PeriodMask {
    PeriodMask::only(p)
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
