//! Stats glue: the window lock, crediting killmail changes, flushing merged
//! deltas in key order, and reading records back. The rules live in core.

pub mod bulk;
pub mod direct;
pub mod load;
pub mod pending;
pub mod plans;

use std::collections::{HashMap, HashSet};

use killboard_core::model::KillState;
use killboard_core::stats::rebuild::Rebuilder;
use killboard_core::stats::{credit, CreditMode, DeltaMap, EntityKey, Record};
use killboard_core::windows::mask_for;
use killboard_core::{KillboardError, Result, SqlState};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiHeapTupleData};

use crate::gucs;

/// Advisory lock (classid, objid) shared by writers and taken exclusively by
/// advance_windows/rebuild_stats, so a window never moves under a writer.
pub const WINDOW_LOCK: (i32, i32) = (0x4B42, 1);

/// PostgreSQL timestamps count microseconds from 2000-01-01; ours (killmail
/// times, as_of) from 1970.
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

const WINDOW_STATE_SQL: &str = include_str!("../../sql/queries/window_state.sql");
const FLUSH_LOCK_SQL: &str = include_str!("../../sql/queries/flush_lock.sql");
const FLUSH_UPSERT_SQL: &str = include_str!("../../sql/queries/flush_upsert.sql");
const FLUSH_REPLACE_SQL: &str = include_str!("../../sql/queries/flush_replace.sql");
const FLUSH_DELETE_SQL: &str = include_str!("../../sql/queries/flush_delete.sql");
const FLUSH_APPEND_SQL: &str = include_str!("../../sql/queries/flush_append.sql");
const FLUSH_FOLD_DELTAS_SQL: &str = include_str!("../../sql/queries/flush_fold_deltas.sql");
const ADVISORY_SHARED_SQL: &str = "SELECT pg_catalog.pg_advisory_xact_lock_shared($1, $2)";
const MARK_STALE_SQL: &str = "SELECT killboard._mark_stats_stale()";
const STALE_SQL: &str = "SELECT stale_since IS NOT NULL FROM killboard.stats_state";
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
    if !lock_window_shared() {
        plans::select(
            client,
            ADVISORY_SHARED_SQL,
            None,
            &[WINDOW_LOCK.0.into(), WINDOW_LOCK.1.into()],
        )
        .map_err(spi_err)?;
    }
    fresh_snapshots();
    // As committed by the last advance, which committed before we got the lock.
    let (as_of, mode) = match direct::committed_window_state()? {
        Some(s) => s,
        None => read_window_state(client)?,
    };
    pending::set_window_state(as_of, mode);
    Ok((as_of, mode))
}

/// pg_advisory_xact_lock_shared(WINDOW_LOCK) without a query around it: the
/// same lock tag, mode and transaction scope (so advance_windows' exclusive
/// lock through SQL conflicts with it, and the deadlock detector sees it
/// alike). False where the SQL function must decide (a parallel operation:
/// it raises the proper error).
fn lock_window_shared() -> bool {
    // SAFETY: plain lock manager call, as the SQL function makes it; the
    // lock belongs to the current resource owner like the function's.
    unsafe {
        if pg_sys::IsInParallelMode() {
            return false;
        }
        let tag = pg_sys::LOCKTAG {
            locktag_field1: u32::from(pg_sys::MyDatabaseId),
            locktag_field2: WINDOW_LOCK.0 as u32,
            locktag_field3: WINDOW_LOCK.1 as u32,
            // SET_LOCKTAG_INT32: the (int4, int4) form of the advisory functions.
            locktag_field4: 2,
            locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
            locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
        };
        pg_sys::LockAcquire(&tag, pg_sys::ShareLock as pg_sys::LOCKMODE, false, false);
    }
    true
}

/// Credit the change of killmails from `before` to `after` (either may be empty).
pub fn credit_change(client: &SpiClient, before: &[KillState], after: &[KillState]) -> Result<()> {
    if before.is_empty() && after.is_empty() {
        return Ok(());
    }
    if !gucs::maintain_stats() {
        return mark_stale(client);
    }
    for k in before.iter().chain(after) {
        credit::check_ids(k)?;
    }
    let (as_of, mode) = begin_credit(client)?;
    // Sized up front: growing a map of large records moves them all. A
    // killmail credits at most its 9 victim and location entities plus 6 per
    // attacker, most attackers sharing their corporation, alliance and ship
    // group: ~4 each covers a typical one without over-allocating. Many
    // killmails share most entities (systems, regions, big alliances): a
    // batch reserves ~8 a killmail, as every untouched bucket of 1.3 kB
    // records is still memory to map.
    let n = before.len() + after.len();
    let estimate: usize = if n > 16 {
        n * 8
    } else {
        before
            .iter()
            .chain(after)
            .map(|k| 9 + 4 * k.attackers.len())
            .sum()
    };
    let mut map = DeltaMap::with_capacity(estimate.min(1 << 14));
    if before.is_empty() {
        // Only new killmails (every ingest): nothing to pair.
        for k in after {
            credit(k, mode, mask_for(k.time, as_of), 1, None, &mut map);
        }
        pending::add(map);
        return Ok(());
    }
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
    // Once marked, the store stays stale until a rebuild: a cached read
    // instead of the helper's SQL-function call (planned on every call) in
    // every stats-off transaction.
    if !plans::select_bool(client, STALE_SQL, &[]).map_err(spi_err)? {
        // Through a SECURITY DEFINER helper so writers need no UPDATE on stats_state.
        plans::select(client, MARK_STALE_SQL, None, &[]).map_err(spi_err)?;
    }
    pending::set_stale_marked();
    Ok(())
}

/// The entity of the stored key in column 1 (entity_key) of a row; None
/// for a kind code this version does not know.
pub fn row_key(row: &SpiHeapTupleData) -> Result<Option<EntityKey>> {
    let key = row.get::<i64>(1).map_err(spi_err)?.unwrap_or(0);
    Ok(EntityKey::from_stored(key))
}

fn stored_keys(keys: &[EntityKey]) -> Result<Vec<i64>> {
    keys.iter().map(|k| k.stored()).collect()
}

/// Write this transaction's merged deltas. Returns how many entities were touched.
///
/// Deltas that only add (every new killmail) are merged into the stored
/// records in place without waiting (direct::merge_adds), or where that
/// cannot be done through one upsert in a fixed lock order
/// (EntityKind::lock_rank, then id), which may wait on a row another writer
/// holds, in that same order: no cycle. Deltas that removed a kill or loss
/// may need the entity's last times recomputed from its killmails: those
/// rows are locked without waiting afterwards, merged here, and written
/// back. Rows held by someone else get an append-only delta either way, so
/// the fallback upsert is the one step of a flush that ever waits.
pub fn flush(client: &mut SpiClient) -> Result<usize> {
    let Some(map) = pending::take_all() else {
        return Ok(0);
    };
    if map.is_empty() {
        return Ok(0);
    }
    direct::require_layout()?;
    if append_small(client, &map)? {
        return Ok(map.len());
    }
    plans::with_index_plans(|| flush_map(client, map))
}

/// A small transaction that only adds (one killmail credits ~20 entities)
/// appends its deltas: an insert per entity, no row to find, lock or wait
/// for. Merging in place costs ~9 us a row and queues writers on hot
/// entities; advance_windows() folds the appended rows in one pass.
/// Removals keep the merge path: an appended row cannot lower a last time.
fn append_small(client: &mut SpiClient, map: &DeltaMap) -> Result<bool> {
    if map.len() > gucs::stats_append_max_entities()
        || map
            .values()
            .any(|r| r.removed_kill.is_some() || r.removed_loss.is_some())
    {
        return Ok(false);
    }
    let mut keys: Vec<EntityKey> = map.keys().copied().collect();
    keys.sort_unstable();
    append(client, &keys, map)?;
    Ok(true)
}

/// Append `keys`' deltas from `map` to stats_delta (directly, or through SQL
/// where the direct insert must not).
fn append(client: &mut SpiClient, keys: &[EntityKey], map: &DeltaMap) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let data: Vec<Vec<u8>> = keys.iter().map(|k| map[k].encode()).collect();
    if direct::append_deltas(keys, &data)? {
        return Ok(());
    }
    plans::update(
        client,
        FLUSH_APPEND_SQL,
        &[stored_keys(keys)?.into(), data.into()],
    )
    .map_err(spi_err)?;
    Ok(())
}

fn flush_map(client: &mut SpiClient, map: DeltaMap) -> Result<usize> {
    // Records are large (every period, i128 counters); a big flush moves only
    // keys and encoded bytes around, never copies of the records.
    let mut keys: Vec<EntityKey> = map.keys().copied().collect();
    keys.sort_unstable();

    let (adds, removals): (Vec<EntityKey>, Vec<EntityKey>) = keys
        .iter()
        .partition(|k| map[*k].removed_kill.is_none() && map[*k].removed_loss.is_none());

    // 1. Additions: merged in place straight through the heap, never
    //    waiting (rows another writer holds get appended deltas); through
    //    SQL where that cannot be done, as one upsert in lock order.
    if !adds.is_empty() {
        match direct::merge_adds(&adds, &map)? {
            Some(busy) => append(client, &busy, &map)?,
            None => {
                let mut adds = adds;
                adds.sort_unstable_by_key(|k| (k.kind.lock_rank(), k.id));
                let data: Vec<Vec<u8>> = adds.iter().map(|k| map[k].encode()).collect();
                plans::update(
                    client,
                    FLUSH_UPSERT_SQL,
                    &[stored_keys(&adds)?.into(), data.into()],
                )
                .map_err(spi_err)?;
            }
        }
    }
    if removals.is_empty() {
        return Ok(keys.len());
    }

    // 2. Removals: the rows we can lock now.
    // Each locked row's ctid: we hold the lock, so it stays put until commit.
    let mut locked: HashMap<EntityKey, (Vec<u8>, pg_sys::ItemPointerData)> =
        HashMap::with_capacity(removals.len());
    for row in
        plans::update(client, FLUSH_LOCK_SQL, &[stored_keys(&removals)?.into()]).map_err(spi_err)?
    {
        let data = row.get::<Vec<u8>>(2).map_err(spi_err)?.unwrap_or_default();
        let tid = row
            .get::<pg_sys::ItemPointerData>(3)
            .map_err(spi_err)?
            .ok_or_else(|| KillboardError::internal("locked stats row without ctid"))?;
        if let Some(key) = row_key(&row)? {
            locked.insert(key, (data, tid));
        }
    }

    // The locked rows' appended deltas go into the rows with this removal.
    let mut appended = DeltaMap::new();
    if !locked.is_empty() {
        let mut lk: Vec<EntityKey> = locked.keys().copied().collect();
        lk.sort_unstable();
        for row in plans::update(client, FLUSH_FOLD_DELTAS_SQL, &[stored_keys(&lk)?.into()])
            .map_err(spi_err)?
        {
            let data = row.get::<&[u8]>(2).map_err(spi_err)?.unwrap_or_default();
            if let Some(key) = row_key(&row)? {
                appended.entry(key).or_default().add(&Record::decode(data)?);
            }
        }
    }

    let mut upd: Vec<(EntityKey, Vec<u8>)> = Vec::with_capacity(locked.len());
    let mut del: Vec<pg_sys::ItemPointerData> = Vec::new();
    let mut held: Vec<EntityKey> = Vec::new();
    let mut recompute: Vec<(EntityKey, Record, pg_sys::ItemPointerData)> = Vec::new();
    for key in &removals {
        let mut delta = map[key];
        if let Some(a) = appended.get(key) {
            delta.add(a);
        }
        match locked.remove(key) {
            Some((bytes, tid)) => {
                let mut merged = Record::decode(&bytes)?;
                merged.add(&delta);
                merged.forget_removed();
                if delta.needs_last_time_recompute(&merged) {
                    recompute.push((*key, merged, tid));
                } else if merged.is_empty() {
                    del.push(tid);
                } else {
                    upd.push((*key, merged.encode()));
                }
            }
            // Held by another writer, or (a removal whose additions were
            // appended earlier) not in the table at all.
            None => held.push(*key),
        }
    }

    // Last kill/loss times cannot be lowered by a delta: recompute them
    // from the killmails for entities whose latest kill or loss went away.
    if !recompute.is_empty() {
        let (as_of, mode) = begin_credit(client)?;
        for (key, mut r, tid) in recompute {
            recompute_last_times(client, key, as_of, mode, &mut r)?;
            if r.is_empty() {
                del.push(tid);
            } else {
                upd.push((key, r.encode()));
            }
        }
    }

    // Rows we hold: writing them back never waits.
    if !upd.is_empty() {
        upd.sort_unstable_by_key(|(k, _)| *k);
        let keys = stored_keys(&upd.iter().map(|(k, _)| *k).collect::<Vec<_>>())?;
        let data: Vec<Vec<u8>> = upd.into_iter().map(|(_, d)| d).collect();
        plans::update(client, FLUSH_REPLACE_SQL, &[keys.into(), data.into()]).map_err(spi_err)?;
    }
    if !del.is_empty() {
        plans::update(client, FLUSH_DELETE_SQL, &[del.into()]).map_err(spi_err)?;
    }
    // 3. Append-only deltas for rows another writer holds (or that live only
    //    in stats_delta so far): no waiting. A removal keeps its removed
    //    times, so readers and the fold know a last time may need recomputing.
    append(client, &held, &map)?;
    Ok(keys.len())
}

/// The stored record plus a delta that only adds, for the flush's upsert
/// (sql/queries/flush_upsert.sql). It runs no SQL, which is why it alone has
/// no pinned search_path (sql/security.sql): a SET clause per row would cost
/// more than the merge.
#[pg_extern(immutable, strict, parallel_safe)]
pub fn _stats_merge(stored: &[u8], delta: &[u8]) -> Vec<u8> {
    use crate::error::OrRaise;
    let mut r = Record::decode(stored).or_raise();
    r.add(&Record::decode(delta).or_raise());
    r.forget_removed();
    r.encode()
}

fn clean(r: &Record) -> Record {
    let mut r = *r;
    r.forget_removed();
    r
}

/// Flush if this backend has unflushed deltas and is at top level.
pub fn flush_pending() -> Result<()> {
    // Every reader and maintenance call starts here: a store this library
    // cannot read is reported before any SQL names its columns.
    direct::require_layout()?;
    if !pending::has_pending() {
        return Ok(());
    }
    Spi::connect_mut(flush).map(|_| ())
}

/// Finish a record read as stored row + appended deltas (+ own pending
/// delta): when one of them removed the latest kill or loss, the sum cannot
/// know the new last time, so it is recomputed from the killmails (rare: a
/// delete or a downward update not yet folded). The removed times go.
pub fn settle_last_times(client: &SpiClient, key: EntityKey, r: &mut Record) -> Result<()> {
    if r.needs_last_time_recompute(r) {
        let (as_of, mode) = read_window_state(client)?;
        recompute_last_times(client, key, as_of, mode, r)?;
    }
    r.forget_removed();
    Ok(())
}

/// `settle_last_times` for a read outside SPI: connects only when needed.
/// entity_stats and entity_stats_many, which read through here, have no
/// pinned search_path (sql/security.sql): their SQL runs under the path
/// every other function pins, set here for just that.
pub fn settle_read(key: EntityKey, r: &mut Record) -> Result<()> {
    if r.needs_last_time_recompute(r) {
        plans::with_pinned_path(|| Spi::connect(|c| settle_last_times(c, key, r)))
    } else {
        r.forget_removed();
        Ok(())
    }
}

/// Set `r`'s last kill/loss times from the entity's killmails: a delta can
/// raise them but never lower them when the latest kill or loss goes away.
pub fn recompute_last_times(
    client: &SpiClient,
    key: EntityKey,
    as_of: i64,
    mode: CreditMode,
    r: &mut Record,
) -> Result<()> {
    let live = live_record(client, key, as_of, mode)?;
    r.last_kill = live.last_kill;
    r.last_loss = live.last_loss;
    Ok(())
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
    let n = compute_each(client, as_of, mode, 1, 0, |_, k, r| {
        map.insert(k, *r);
        Ok(())
    })?;
    Ok((map, n))
}

/// CPU time of the calling thread in ms (the rebuild's debug log tells the
/// reading, crediting and writing threads apart on a shared machine).
pub fn thread_cpu_ms() -> u128 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u128 * 1000 + ts.tv_nsec as u128 / 1_000_000
}

/// Killmails handed from the reading backend to the crediting thread at a time.
const PIPE_BATCH: usize = 2_000;

/// Read every killmail (this thread: SPI) and credit it (a worker thread:
/// pure Rust, it never calls into PostgreSQL), so reading and crediting use
/// two cores. Batches of states go over a bounded channel and come back
/// to be refilled, so memory stays at a few batches.
fn credit_all(
    sde: &bulk::SdeMaps,
    new_builder: impl FnOnce() -> Rebuilder + Send,
) -> Result<(i64, Rebuilder)> {
    use std::sync::mpsc;
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel::<Vec<KillState>>(2);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<KillState>>();
        let cpu0 = thread_cpu_ms();
        let worker = scope.spawn(move || {
            block_signals();
            let mut builder = new_builder();
            for batch in full_rx {
                for k in &batch {
                    builder.add(k);
                }
                // The reader is gone only when it failed: drop the batch.
                let _ = empty_tx.send(batch);
            }
            (builder, thread_cpu_ms())
        });
        let mut batch: Vec<KillState> = Vec::with_capacity(PIPE_BATCH);
        let mut spare: Vec<KillState> = Vec::new();
        let read = bulk::for_each_killmail(sde, |k| {
            // Hand over the state; refill from a returned one (its attacker
            // vector keeps its capacity).
            batch.push(std::mem::replace(k, spare.pop().unwrap_or_default()));
            if batch.len() == PIPE_BATCH {
                let mut next = empty_rx.try_recv().unwrap_or_default();
                spare.append(&mut next);
                full_tx
                    .send(std::mem::replace(&mut batch, next))
                    .map_err(|_| {
                        KillboardError::internal("rebuild: the crediting thread stopped")
                    })?;
            }
            Ok(())
        });
        if read.is_ok() && !batch.is_empty() {
            let _ = full_tx.send(batch);
        }
        drop(full_tx);
        let read_cpu = thread_cpu_ms() - cpu0;
        let (builder, credit_cpu) = worker
            .join()
            .map_err(|_| KillboardError::internal("rebuild: the crediting thread panicked"))?;
        pgrx::debug1!("killboard: reading cpu {read_cpu} ms, crediting cpu {credit_cpu} ms");
        Ok((read?, builder))
    })
}

/// Recompute every entity's record from all killmails in `parts` passes (each
/// keeps one hash partition of the entities in memory, `capacity`
/// accumulators expected) and hand each record to `f`, in key order within a
/// pass. Returns the number of killmails.
pub fn compute_each(
    client: &mut SpiClient,
    as_of: i64,
    mode: CreditMode,
    parts: u64,
    capacity: usize,
    mut f: impl FnMut(&mut SpiClient, EntityKey, &Record) -> Result<()>,
) -> Result<i64> {
    let sde = bulk::SdeMaps::load(client)?;
    let mut n: i64 = 0;
    for part in 0..parts.max(1) {
        let started = std::time::Instant::now();
        let (read, builder) = credit_all(&sde, || {
            Rebuilder::with_capacity(mode, as_of, parts, part, capacity)
        })?;
        n = read;
        pgrx::debug1!(
            "killboard: pass {}/{}: {n} killmails read and credited in {} ms, {} accumulators",
            part + 1,
            parts.max(1),
            started.elapsed().as_millis(),
            builder.entries()
        );
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

/// Encoded records handed from the encoding thread to the writer at a time.
const ENCODED_BATCH: usize = 4_096;

#[derive(Default)]
struct Encoded {
    keys: Vec<EntityKey>,
    ends: Vec<usize>,
    bytes: Vec<u8>,
}

/// `compute_each` for rebuild_stats(): each pass's records are assembled,
/// sorted and encoded on a worker thread while this one writes them, and
/// `f` gets every record's encoding.
pub fn compute_encoded(
    client: &mut SpiClient,
    as_of: i64,
    mode: CreditMode,
    parts: u64,
    capacity: usize,
    mut f: impl FnMut(&mut SpiClient, EntityKey, &[u8]) -> Result<()>,
) -> Result<i64> {
    use std::sync::mpsc;
    let started = std::time::Instant::now();
    let sde = bulk::SdeMaps::load(client)?;
    pgrx::debug1!(
        "killboard: SDE maps loaded in {} ms",
        started.elapsed().as_millis()
    );
    let mut n: i64 = 0;
    for part in 0..parts.max(1) {
        let started = std::time::Instant::now();
        let (read, builder) = credit_all(&sde, || {
            Rebuilder::with_capacity(mode, as_of, parts, part, capacity)
        })?;
        n = read;
        pgrx::debug1!(
            "killboard: pass {}/{}: {n} killmails read and credited in {} ms, {} accumulators",
            part + 1,
            parts.max(1),
            started.elapsed().as_millis(),
            builder.entries()
        );
        let (started, cpu0) = (std::time::Instant::now(), thread_cpu_ms());
        let encode_cpu = std::thread::scope(|scope| -> Result<u128> {
            let (full_tx, full_rx) = mpsc::sync_channel::<Encoded>(2);
            let (empty_tx, empty_rx) = mpsc::channel::<Encoded>();
            let encoder = scope.spawn(move || {
                block_signals();
                let mut batch = Encoded::default();
                let mut stopped = false;
                builder.finish(|k, r| {
                    if stopped {
                        return;
                    }
                    batch.keys.push(k);
                    r.encode_into(&mut batch.bytes);
                    batch.ends.push(batch.bytes.len());
                    if batch.keys.len() == ENCODED_BATCH {
                        let mut next = empty_rx.try_recv().unwrap_or_default();
                        next.keys.clear();
                        next.ends.clear();
                        next.bytes.clear();
                        // The writer is gone only when it failed: stop encoding.
                        stopped = full_tx.send(std::mem::replace(&mut batch, next)).is_err();
                    }
                });
                if !stopped && !batch.keys.is_empty() {
                    let _ = full_tx.send(batch);
                }
                thread_cpu_ms()
            });
            for batch in full_rx {
                let mut start = 0;
                for (k, end) in batch.keys.iter().zip(&batch.ends) {
                    f(client, *k, &batch.bytes[start..*end])?;
                    start = *end;
                }
                let _ = empty_tx.send(batch);
            }
            encoder
                .join()
                .map_err(|_| KillboardError::internal("rebuild: the encoding thread panicked"))
        })?;
        pgrx::debug1!(
            "killboard: pass {}/{}: written in {} ms, writing cpu {} ms, encoding cpu {encode_cpu} ms",
            part + 1,
            parts.max(1),
            started.elapsed().as_millis(),
            thread_cpu_ms() - cpu0
        );
    }
    Ok(n)
}

/// Signals are PostgreSQL's business: a worker thread blocks them all so
/// they reach the backend's own thread.
fn block_signals() {
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
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
