//! Reading one entity's record straight from the primary-key indexes, without
//! SPI. entity_stats is the hot read path: through SPI each call paid for an
//! executor start-up, a plan revalidation and a Materialize/Append plan around
//! three tiny lookups, several times the cost of the lookups themselves. Here a
//! call is one primary-key probe of stats (plus stats_delta when it has rows;
//! stats_state once per snapshot view) on the snapshot SPI would have used.
//!
//! The window advance reads and rewrites its rows here too (`stored_rows`,
//! `take_deltas`, `Rewriter`): it holds the window lock exclusively, so no
//! other transaction holds a row of the store, and per-row SQL cost more than
//! the writes. A bulk flush merges through the same `Rewriter`
//! (`merge_adds`), taking only rows it can lock at once.
//!
//! Relation and index OIDs are resolved once per backend and dropped by a
//! relcache invalidation of any of them (a dropped and re-created extension).

use std::cell::Cell;

use killboard_core::error::SqlState;
use killboard_core::stats::{CreditMode, DeltaMap, EntityKey, Record};
use killboard_core::{KillboardError, Result};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::pending;
use crate::heap::{
    attr, eq_key, open, plain_table, probe, relid, with_bytes, with_read_snapshot, Opened, Rel,
};

#[derive(Clone, Copy)]
struct Rels {
    stats: Rel,
    delta: Rel,
    state: Rel,
    /// Heap attribute numbers of stats.data / stats_delta.data / stats_state.as_of.
    stats_data: i16,
    delta_data: i16,
    state_as_of: i16,
    /// Heap attribute number of stats_state.kill_credit.
    state_mode: i16,
    /// Heap attribute numbers of entity_key in stats and stats_delta.
    stats_key: i16,
    delta_key: i16,
}

thread_local! {
    static RELS: Cell<Option<Rels>> = const { Cell::new(None) };
}

/// Relcache invalidation callback: forget the OIDs when one of ours (or
/// everything) is invalidated. Runs inside invalidation processing: no
/// catalog access here, the next read resolves again.
#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    RELS.with(|r| {
        if let Some(rels) = r.get() {
            let ours = [rels.stats, rels.delta, rels.state]
                .iter()
                .any(|x| x.heap == relid || x.index == relid);
            if relid == pg_sys::InvalidOid || ours {
                r.set(None);
                STATE.with(|c| *c.borrow_mut() = None);
            }
        }
    });
}

/// Register the invalidation callback; called once from `_PG_init`.
pub fn init() {
    // SAFETY: a static function pointer; _PG_init runs once per backend.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0))
    };
}

fn missing(what: &str) -> KillboardError {
    KillboardError::internal(format!(
        "{what} is missing: is the pg_killboard extension installed in this database?"
    ))
}

unsafe fn resolve() -> Result<Rels> {
    let nsp = pg_sys::get_namespace_oid(c"killboard".as_ptr(), true);
    if nsp == pg_sys::InvalidOid {
        return Err(missing("schema killboard"));
    }
    let rel = |name: &std::ffi::CStr| -> Result<pg_sys::Oid> {
        relid(nsp, name).ok_or_else(|| missing(&format!("killboard.{}", name.to_string_lossy())))
    };
    let att = |rel: pg_sys::Oid, name: &std::ffi::CStr| -> Result<i16> {
        let n = pg_sys::get_attnum(rel, name.as_ptr());
        if n <= 0 {
            Err(missing(&format!("column {}", name.to_string_lossy())))
        } else {
            Ok(n)
        }
    };
    let stats = Rel {
        heap: rel(c"stats")?,
        index: rel(c"stats_pkey")?,
    };
    // The new library on a database not yet updated: say what to do, rather
    // than fail on a missing column in the middle of a write.
    if pg_sys::get_attnum(stats.heap, c"entity_key".as_ptr()) <= 0
        && pg_sys::get_attnum(stats.heap, c"entity_id".as_ptr()) > 0
    {
        return Err(KillboardError::new(
            SqlState::ObjectNotInPrerequisiteState,
            "killboard.stats has the layout of pg_killboard 0.1.0, which this library cannot \
             read or write: run ALTER EXTENSION pg_killboard UPDATE",
        ));
    }
    let delta = Rel {
        heap: rel(c"stats_delta")?,
        index: rel(c"stats_delta_entity_idx")?,
    };
    let state = Rel {
        heap: rel(c"stats_state")?,
        index: rel(c"stats_state_pkey")?,
    };
    Ok(Rels {
        stats,
        delta,
        state,
        stats_data: att(stats.heap, c"data")?,
        delta_data: att(delta.heap, c"data")?,
        state_as_of: att(state.heap, c"as_of")?,
        state_mode: att(state.heap, c"kill_credit")?,
        stats_key: att(stats.heap, c"entity_key")?,
        delta_key: att(delta.heap, c"entity_key")?,
    })
}

/// Fails (55000) unless the stats store has the layout this library writes.
pub fn require_layout() -> Result<()> {
    if RELS.with(Cell::get).is_some() {
        return Ok(());
    }
    // SAFETY: catalog lookups only.
    let r = unsafe { resolve()? };
    RELS.with(|c| c.set(Some(r)));
    Ok(())
}

unsafe fn add_bytea(rec: &mut Record, d: pg_sys::Datum) -> Result<bool> {
    let decoded = with_bytes(d, Record::decode)?;
    rec.add(&decoded);
    Ok(true)
}

/// What a snapshot lets every later read under an equal snapshot reuse:
/// as_of and whether stats_delta has rows change only when a transaction
/// completes. Two MVCC snapshots with the same xmin, xmax and in-progress
/// lists see the same committed rows; used only while this transaction has
/// no xid, so it has no rows of its own.
struct StateCache {
    xmin: u32,
    xmax: u32,
    xip: Vec<u32>,
    subxip: Vec<u32>,
    flags: (bool, bool),
    as_of: Option<i64>,
    delta_empty: bool,
}

thread_local! {
    static STATE: std::cell::RefCell<Option<StateCache>> = const { std::cell::RefCell::new(None) };
}

unsafe fn snapshot_lists(s: pg_sys::Snapshot) -> (&'static [u32], &'static [u32]) {
    let list = |p: *mut pg_sys::TransactionId, n: usize| -> &'static [u32] {
        if p.is_null() || n == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(p as *const u32, n)
        }
    };
    (
        list((*s).xip, (*s).xcnt as usize),
        list((*s).subxip, (*s).subxcnt.max(0) as usize),
    )
}

unsafe fn cached_state(s: pg_sys::Snapshot) -> Option<(Option<i64>, bool)> {
    let (xip, subxip) = snapshot_lists(s);
    STATE.with(|c| {
        c.borrow().as_ref().and_then(|c| {
            (c.xmin == u32::from((*s).xmin)
                && c.xmax == u32::from((*s).xmax)
                && c.flags == ((*s).suboverflowed, (*s).takenDuringRecovery)
                && c.xip == xip
                && c.subxip == subxip)
                .then_some((c.as_of, c.delta_empty))
        })
    })
}

unsafe fn remember_state(s: pg_sys::Snapshot, as_of: Option<i64>, delta_empty: bool) {
    let (xip, subxip) = snapshot_lists(s);
    STATE.with(|c| {
        *c.borrow_mut() = Some(StateCache {
            xmin: u32::from((*s).xmin),
            xmax: u32::from((*s).xmax),
            xip: xip.to_vec(),
            subxip: subxip.to_vec(),
            flags: ((*s).suboverflowed, (*s).takenDuringRecovery),
            as_of,
            delta_empty,
        })
    });
}

/// Open one of ours, resolving the OIDs again once if a cached one is gone.
unsafe fn open_one(pick: impl Fn(&Rels) -> Rel) -> Result<(Rels, Opened)> {
    open_locked(pick, pg_sys::AccessShareLock as _)
}

unsafe fn open_locked(
    pick: impl Fn(&Rels) -> Rel,
    lock: pg_sys::LOCKMODE,
) -> Result<(Rels, Opened)> {
    for _ in 0..2 {
        let rels = match RELS.with(Cell::get) {
            Some(r) => r,
            None => {
                let r = resolve()?;
                RELS.with(|c| c.set(Some(r)));
                r
            }
        };
        if let Some(o) = open(pick(&rels), lock) {
            return Ok((rels, o));
        }
        RELS.with(|c| c.set(None));
    }
    Err(missing("the stats store"))
}

fn key_scan(stored: i64) -> [pg_sys::ScanKeyData; 1] {
    [eq_key(1, pg_sys::F_INT8EQ, pg_sys::Datum::from(stored))]
}

unsafe fn read_as_of(snapshot: pg_sys::Snapshot) -> Result<Option<i64>> {
    let (rels, state) = open_one(|r| r.state)?;
    let mut as_of = None;
    let mut keys = [eq_key(1, pg_sys::F_BOOLEQ, pg_sys::Datum::from(true))];
    probe(&state, snapshot, &mut keys, |slot| {
        as_of = attr(slot, rels.state_as_of).map(|d| d.value() as i64);
        Ok(false)
    })?;
    Ok(as_of)
}

/// stats_state's (as_of in Unix microseconds, kill credit mode) as last
/// committed, read straight from its primary key on a snapshot taken now, for
/// a writer that just took the window lock shared: whoever held it
/// exclusively (advance_windows, rebuild_stats) has committed by then, so a
/// new snapshot sees what it wrote, whatever the transaction's isolation
/// level. Through SPI this read cost an executor start-up and a plan
/// revalidation in every one-killmail transaction. None when SQL must read
/// it instead (stats_state is not a plain table, or the current user may not
/// read it: the SELECT then raises the proper error).
pub fn committed_window_state() -> Result<Option<(i64, CreditMode)>> {
    // SAFETY: as in `read`; the snapshot is registered for the scan and
    // released after it, the scan and slot are ended inside `probe`.
    unsafe {
        let (rels, state) = open_one(|r| r.state)?;
        if !plain_table(state.heap, &[pg_sys::ACL_SELECT]) {
            return Ok(None);
        }
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        let mut found: Option<(Option<i64>, Option<String>)> = None;
        let mut keys = [eq_key(1, pg_sys::F_BOOLEQ, pg_sys::Datum::from(true))];
        let r = probe(&state, snapshot, &mut keys, |slot| {
            let as_of = attr(slot, rels.state_as_of).map(|d| d.value() as i64);
            let mode = attr(slot, rels.state_mode)
                .map(|d| with_bytes(d, |b| String::from_utf8_lossy(b).into_owned()));
            found = Some((as_of, mode));
            Ok(false)
        });
        pg_sys::UnregisterSnapshot(snapshot);
        r?;
        let (as_of, mode) = found.unwrap_or_default();
        let as_of = as_of.ok_or_else(|| KillboardError::internal("stats_state is empty"))?;
        let mode = CreditMode::parse(&mode.unwrap_or_default())?;
        Ok(Some((as_of + super::PG_EPOCH_UNIX_MICROS, mode)))
    }
}

/// Whether stats_delta has no visible row (a key-less scan stops at the first).
unsafe fn delta_is_empty(snapshot: pg_sys::Snapshot) -> Result<bool> {
    let (_, delta) = open_one(|r| r.delta)?;
    let mut empty = true;
    probe(&delta, snapshot, &mut [], |_| {
        empty = false;
        Ok(false)
    })?;
    Ok(empty)
}

/// Stored record + appended deltas + this backend's unflushed delta (last
/// times settled), and the
/// raw stats_state.as_of (a TimestampTz).
///
/// The snapshot is the one a pgrx SPI read would use: the statement's while
/// the transaction has no xid; once it has one (it wrote, or flushed its
/// deltas earlier in this statement) a fresh one after a command counter
/// increment, so its own flushed rows are seen and not counted twice.
pub fn read(key: EntityKey) -> Result<(Record, Option<i64>)> {
    let mut rec = Record::default();
    let as_of;
    // An id no stats key can hold has no row: zeros, like any entity without activity.
    let stored = key.stored().ok();
    // SAFETY: plain backend calls on relations we lock; every scan and slot is
    // ended before returning, and an ERROR unwinds through the resource owner.
    unsafe {
        as_of = with_read_snapshot(|snapshot, pushed| -> Result<Option<i64>> {
            let mvcc = (*snapshot).snapshot_type == pg_sys::SnapshotType::SNAPSHOT_MVCC;
            let (as_of, delta_empty) = match (pushed || !mvcc, cached_state(snapshot)) {
                (false, Some(v)) => v,
                _ => {
                    let v = (read_as_of(snapshot)?, delta_is_empty(snapshot)?);
                    if !pushed && mvcc {
                        remember_state(snapshot, v.0, v.1);
                    } else {
                        STATE.with(|c| *c.borrow_mut() = None);
                    }
                    v
                }
            };
            let Some(stored) = stored else {
                return Ok(as_of);
            };
            let (rels, stats) = open_one(|r| r.stats)?;
            probe(&stats, snapshot, &mut key_scan(stored), |slot| {
                match attr(slot, rels.stats_data) {
                    Some(d) => add_bytea(&mut rec, d),
                    None => Ok(true),
                }
            })?;
            if !delta_empty {
                let (rels, delta) = open_one(|r| r.delta)?;
                probe(&delta, snapshot, &mut key_scan(stored), |slot| {
                    match attr(slot, rels.delta_data) {
                        Some(d) => add_bytea(&mut rec, d),
                        None => Ok(true),
                    }
                })?;
            }
            Ok(as_of)
        })?;
    }
    if let Some(p) = pending::pending_for(&key) {
        rec.add(&p);
    }
    super::settle_read(key, &mut rec)?;
    Ok((rec, as_of))
}

/// Each stored row of `keys` (with the key's index) and its ctid, in the
/// order of `keys`, read through one
/// primary-key scan rescanned per key, on a fresh snapshot that sees this
/// transaction's own writes (the window advance, which holds the window lock
/// exclusively and rewrites the rows by ctid right after).
pub fn stored_rows(
    keys: &[EntityKey],
    mut f: impl FnMut(usize, pg_sys::ItemPointerData, &[u8]) -> Result<()>,
) -> Result<()> {
    // SAFETY: as in `read`; the scan and slot are ended before returning.
    unsafe {
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let snapshot = pg_sys::GetActiveSnapshot();
        let r = (|| -> Result<()> {
            let (rels, stats) = open_one(|r| r.stats)?;
            let slot = pg_sys::table_slot_create(stats.heap, std::ptr::null_mut());
            let scan = pg_sys::index_beginscan(stats.heap, stats.index, snapshot, 1, 0);
            let mut out = Ok(());
            for (i, key) in keys.iter().enumerate() {
                let mut k = key_scan(key.stored()?);
                pg_sys::index_rescan(scan, k.as_mut_ptr(), 1, std::ptr::null_mut(), 0);
                if pg_sys::index_getnext_slot(
                    scan,
                    pg_sys::ScanDirection::ForwardScanDirection,
                    slot,
                ) {
                    if let Some(d) = attr(slot, rels.stats_data) {
                        let tid = (*slot).tts_tid;
                        out = with_bytes(d, |bytes| f(i, tid, bytes));
                    }
                    pg_sys::ExecClearTuple(slot);
                }
                if out.is_err() {
                    break;
                }
            }
            pg_sys::index_endscan(scan);
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            out
        })();
        pg_sys::PopActiveSnapshot();
        r
    }
}

/// Append rows to killboard.stats_delta without SPI: a heap insert and an
/// index insert each, which is all an INSERT of them does (the table has no
/// constraint or unique index), without an executor start-up and a
/// function scan around them; a one-killmail commit appends ~20. Returns
/// false, having written nothing, where the INSERT must decide instead (see
/// `plain_table`; a read-only transaction): it raises the proper error.
pub fn append_deltas(keys: &[EntityKey], data: &[Vec<u8>]) -> Result<bool> {
    // SAFETY: the relations are opened and locked like an INSERT would
    // (RowExclusiveLock, held to commit) and closed before returning; every
    // tuple and datum lives in the current memory context until then, and
    // each slot is dropped here.
    unsafe {
        if pg_sys::XactReadOnly || keys.is_empty() {
            return Ok(keys.is_empty());
        }
        let (rels, o) = open_locked(|r| r.delta, pg_sys::RowExclusiveLock as _)?;
        if !plain_table(o.heap, &[pg_sys::ACL_INSERT]) || !only_index(o.heap, rels.delta.index) {
            return Ok(false);
        }
        let desc = (*o.heap).rd_att;
        let natts = (*desc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0usize); natts];
        let mut nulls = vec![true; natts];
        let mut slots = Vec::with_capacity(keys.len());
        let stored = keys
            .iter()
            .map(|k| k.stored())
            .collect::<Result<Vec<i64>>>()?;
        for (key, bytes) in stored.iter().zip(data) {
            let atts = (rels.delta_key, rels.delta_data);
            let tuple = form_key_row(desc, atts, *key, bytes, &mut values, &mut nulls);
            let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsHeapTuple);
            pg_sys::ExecStoreHeapTuple(tuple, slot, true);
            slots.push(slot);
        }
        // One WAL record and one page lock per page, not per row: writers
        // appending at the same time meet on the table's last page.
        pg_sys::heap_multi_insert(
            o.heap,
            slots.as_mut_ptr(),
            slots.len() as i32,
            pg_sys::GetCurrentCommandId(true),
            0,
            std::ptr::null_mut(),
        );
        let info = pg_sys::BuildIndexInfo(o.index);
        for (slot, key) in slots.into_iter().zip(stored) {
            // The index is (entity_key), as key_scan probes it.
            let mut ivalues = [pg_sys::Datum::from(key)];
            let mut inulls = [false];
            pg_sys::index_insert(
                o.index,
                ivalues.as_mut_ptr(),
                inulls.as_mut_ptr(),
                &mut (*slot).tts_tid,
                o.heap,
                pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO,
                false,
                info,
            );
            pg_sys::ExecDropSingleTupleTableSlot(slot);
        }
        // As SPI does after a write: later reads of this transaction see the rows.
        pg_sys::CommandCounterIncrement();
        Ok(true)
    }
}

/// A row of stats or stats_delta (both are (entity_key, data)) as a heap
/// tuple in the current memory context. `atts` are the heap attribute
/// numbers of entity_key and data; `values` and `nulls` span the whole
/// descriptor (other attributes, dropped columns, stay NULL) and keep the
/// datums, the data bytea among them, for index entries and freeing.
pub(super) unsafe fn form_key_row(
    desc: pg_sys::TupleDesc,
    (key_att, data_att): (i16, i16),
    key: i64,
    data: &[u8],
    values: &mut [pg_sys::Datum],
    nulls: &mut [bool],
) -> pg_sys::HeapTuple {
    let len = data.len() + pg_sys::VARHDRSZ;
    let v = pg_sys::palloc(len) as *mut pg_sys::varlena;
    pgrx::varlena::set_varsize_4b(v, len as i32);
    std::ptr::copy_nonoverlapping(
        data.as_ptr(),
        pgrx::varlena::vardata_4b(v) as *mut u8,
        data.len(),
    );
    for (att, d) in [
        (key_att, pg_sys::Datum::from(key)),
        (data_att, pg_sys::Datum::from(v)),
    ] {
        values[(att - 1) as usize] = d;
        nulls[(att - 1) as usize] = false;
    }
    pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr())
}

/// Whether `index` is the only index of `heap` (an index added later would
/// be missed by a direct insert: the SQL path maintains it).
unsafe fn only_index(heap: pg_sys::Relation, index: pg_sys::Oid) -> bool {
    let list = pg_sys::RelationGetIndexList(heap);
    if list.is_null() {
        return false;
    }
    let ok = (*list).length == 1 && (*(*list).elements).oid_value == index;
    pg_sys::list_free(list);
    ok
}

/// Read and delete every appended delta (stored entity key, data) in one
/// ordered scan of stats_delta's index, on a fresh snapshot. For the window
/// advance only: it holds the window lock exclusively, and every appender
/// holds it shared until it commits, so no delta row is in flight. An index
/// scan, not a sequential one: the deltas the advances keep deleting leave
/// dead heap pages behind until vacuum, and a scan of those cost more than
/// the fold. Returns false (nothing read or deleted) when stats_delta is not
/// a plain table or the current user may not delete from it; the caller
/// then deletes through SQL.
pub fn take_deltas(mut f: impl FnMut(i64, &[u8]) -> Result<()>) -> Result<bool> {
    // SAFETY: as in `read`; the scan and slot are ended before returning, the
    // relations closed (their locks held to the end of the transaction).
    unsafe {
        let (rels, delta) = open_locked(|r| r.delta, pg_sys::RowExclusiveLock as _)?;
        if !plain_table(delta.heap, &[pg_sys::ACL_SELECT, pg_sys::ACL_DELETE]) {
            return Ok(false);
        }
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let snapshot = pg_sys::GetActiveSnapshot();
        let cid = pg_sys::GetCurrentCommandId(true);
        let slot = pg_sys::table_slot_create(delta.heap, std::ptr::null_mut());
        let scan = pg_sys::index_beginscan(delta.heap, delta.index, snapshot, 0, 0);
        pg_sys::index_rescan(scan, std::ptr::null_mut(), 0, std::ptr::null_mut(), 0);
        let mut out = Ok(());
        while pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            let key = attr(slot, rels.delta_key).map(|d| d.value() as i64);
            if let (Some(key), Some(d)) = (key, attr(slot, rels.delta_data)) {
                out = with_bytes(d, |bytes| f(key, bytes));
            }
            if out.is_err() {
                break;
            }
            let tid = (*slot).tts_tid;
            pg_sys::ExecClearTuple(slot);
            if let Err(e) = delete_row(delta.heap, tid, cid) {
                out = Err(e);
                break;
            }
        }
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::PopActiveSnapshot();
        pg_sys::CommandCounterIncrement();
        out.map(|_| true)
    }
}

/// A heap write that found its row changed by another transaction: only
/// possible when the advance's snapshot predates a commit it did not wait
/// for (REPEATABLE READ), answered like the executor answers it.
fn tm_check(r: pg_sys::TM_Result::Type) -> Result<()> {
    match r {
        pg_sys::TM_Result::TM_Ok => Ok(()),
        pg_sys::TM_Result::TM_Updated | pg_sys::TM_Result::TM_Deleted => {
            pgrx::ereport!(
                ERROR,
                pgrx::PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                "could not serialize access due to a concurrent change of the killboard stats"
            );
        }
        other => Err(KillboardError::internal(format!(
            "unexpected result {other} writing a stats row"
        ))),
    }
}

/// Delete the heap row at `tid` as command `cid`, like the executor's DELETE
/// (waiting for a concurrent change, which only a REPEATABLE READ snapshot
/// predating a commit can meet; see `tm_check`).
unsafe fn delete_row(
    heap: pg_sys::Relation,
    tid: pg_sys::ItemPointerData,
    cid: pg_sys::CommandId,
) -> Result<()> {
    let mut tid = tid;
    let mut tmfd = pg_sys::TM_FailureData::default();
    let r = pg_sys::heap_delete(
        heap,
        &mut tid,
        cid,
        std::ptr::null_mut(),
        true,
        &mut tmfd,
        false,
    );
    tm_check(r)
}

/// Writes straight to killboard.stats' heap and indexes, for the window
/// advance and a bulk flush (`merge_adds`). The advance holds the window
/// lock exclusively, so no other transaction holds or changes a stats row
/// meanwhile; a bulk flush rewrites only rows it has locked (`try_lock`).
/// Either way the rows to rewrite were just found by `stored_rows`, ctid
/// and all. Through SQL each rewrite found its
/// row again by ctid (a TID scan per row that also asked the kernel for the
/// table's size) and went through the executor's per-row machinery, more than
/// the write itself. Same effects as the executor's UPDATE/DELETE/INSERT on a
/// plain table: WAL, HOT when the new version fits the page, index entries
/// otherwise (uniqueness checked), statistics for autovacuum.
pub struct Rewriter {
    /// The heap and its primary key, open for writing.
    stats: Opened,
    /// Every index of the heap (the primary key among them), and its info.
    indexes: Vec<(pg_sys::Relation, *mut pg_sys::IndexInfo)>,
    cid: pg_sys::CommandId,
    /// Zero-based positions of entity_key and data in a heap tuple.
    pos: [usize; 2],
    /// Rows `insert_unless_present` wrote beside another transaction's row
    /// for the same key: deleted again by `finish`.
    retract: Vec<pg_sys::ItemPointerData>,
}

impl Drop for Rewriter {
    fn drop(&mut self) {
        // SAFETY: opened in `open`; the locks stay held to the end of the
        // transaction, like the executor's (`stats` closes itself).
        unsafe {
            for (index, _) in self.indexes.drain(..) {
                pg_sys::index_close(index, pg_sys::NoLock as _);
            }
        }
    }
}

impl Rewriter {
    /// None when killboard.stats is not the plain table this writes
    /// correctly (a trigger, a rule, row security, another column, an
    /// expression, partial or exclusion index) or the current user may not
    /// write it: the caller then writes through SQL.
    pub fn open() -> Result<Option<Rewriter>> {
        // SAFETY: relations opened with the executor's lock for a write and
        // closed by Drop; catalog data read from the open relcache entries.
        unsafe {
            let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
            let (rels, stats) = open_locked(|r| r.stats, lock)?;
            let heap = stats.heap;
            let mut w = Rewriter {
                stats,
                indexes: Vec::new(),
                cid: 0,
                pos: [rels.stats_key as usize - 1, rels.stats_data as usize - 1],
                retract: Vec::new(),
            };
            let desc = (*heap).rd_att;
            let types = [pg_sys::INT8OID, pg_sys::BYTEAOID];
            let attrs = (*desc).attrs.as_ptr();
            let modes = [
                pg_sys::ACL_SELECT,
                pg_sys::ACL_UPDATE,
                pg_sys::ACL_DELETE,
                pg_sys::ACL_INSERT,
            ];
            if !plain_table(heap, &modes)
                || (*desc).natts != 2
                || w.pos.iter().zip(types).any(|(p, t)| {
                    let a = &*attrs.add(*p);
                    a.attisdropped || a.atttypid != t
                })
            {
                return Ok(None);
            }
            let list = pg_sys::RelationGetIndexList(heap);
            let n = if list.is_null() {
                0
            } else {
                (*list).length as usize
            };
            let mut plain = true;
            for i in 0..n {
                let oid = (*(*list).elements.add(i)).oid_value;
                let index = pg_sys::index_open(oid, lock);
                let info = pg_sys::BuildIndexInfo(index);
                w.indexes.push((index, info));
                let idx = &*(*index).rd_index;
                plain &= (*info).ii_Expressions.is_null()
                    && (*info).ii_Predicate.is_null()
                    && (*info).ii_ExclusionOps.is_null()
                    && idx.indimmediate
                    && (0..(*info).ii_NumIndexAttrs as usize)
                        .all(|k| (*info).ii_IndexAttrNumbers[k] > 0);
            }
            if !list.is_null() {
                pg_sys::list_free(list);
            }
            if !plain {
                return Ok(None);
            }
            w.cid = pg_sys::GetCurrentCommandId(true);
            Ok(Some(w))
        }
    }

    unsafe fn form(
        &self,
        key: EntityKey,
        data: &[u8],
    ) -> Result<(pg_sys::HeapTuple, [pg_sys::Datum; 2])> {
        let mut values = [pg_sys::Datum::from(0usize); 2];
        let mut nulls = [false; 2];
        let atts = (self.pos[0] as i16 + 1, self.pos[1] as i16 + 1);
        let desc = (*self.stats.heap).rd_att;
        let tup = form_key_row(desc, atts, key.stored()?, data, &mut values, &mut nulls);
        Ok((tup, values))
    }

    /// Index entries for a new heap tuple (not for a HOT version, which the
    /// old entries reach). `check` applies to unique indexes; returns false
    /// when a partial check found another live or in-flight entry.
    unsafe fn index(
        &self,
        tup: pg_sys::HeapTuple,
        values: &[pg_sys::Datum; 2],
        unchanged: bool,
        check: pg_sys::IndexUniqueCheck::Type,
    ) -> bool {
        let mut unique_ok = true;
        for (index, info) in &self.indexes {
            if !(**info).ii_ReadyForInserts {
                continue;
            }
            let n = (**info).ii_NumIndexAttrs as usize;
            let mut iv = [pg_sys::Datum::from(0usize); pg_sys::INDEX_MAX_KEYS as usize];
            // Every indexed column is a NOT NULL column of ours.
            let mut inull = [false; pg_sys::INDEX_MAX_KEYS as usize];
            for k in 0..n {
                iv[k] = values[(**info).ii_IndexAttrNumbers[k] as usize - 1];
            }
            let unique = if (*(**index).rd_index).indisunique {
                check
            } else {
                pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO
            };
            unique_ok &= pg_sys::index_insert(
                *index,
                iv.as_mut_ptr(),
                inull.as_mut_ptr(),
                &mut (*tup).t_self,
                self.stats.heap,
                unique,
                unchanged,
                *info,
            );
        }
        unique_ok
    }

    unsafe fn release(tup: pg_sys::HeapTuple, values: &[pg_sys::Datum; 2], pos: usize) {
        pg_sys::heap_freetuple(tup);
        pg_sys::pfree(values[pos].cast_mut_ptr());
    }

    /// Replace the row at `tid` (the stored row of `key`) with `data`.
    pub fn update(
        &mut self,
        tid: pg_sys::ItemPointerData,
        key: EntityKey,
        data: &[u8],
    ) -> Result<()> {
        self.update_checked(tid, key, data, pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES)
    }

    /// `update` with the uniqueness check for a new index entry (a non-HOT
    /// version; the key never changes).
    fn update_checked(
        &mut self,
        tid: pg_sys::ItemPointerData,
        key: EntityKey,
        data: &[u8],
        check: pg_sys::IndexUniqueCheck::Type,
    ) -> Result<()> {
        // SAFETY: `tid` is a live row of this table found under the window
        // lock, or locked by this transaction (`try_lock`); the tuple and
        // datum are ours and freed here.
        unsafe {
            let (tup, values) = self.form(key, data)?;
            let mut otid = tid;
            let mut tmfd = pg_sys::TM_FailureData::default();
            let mut lockmode: pg_sys::LockTupleMode::Type = 0;
            let r = pg_sys::heap_update(
                self.stats.heap,
                &mut otid,
                tup,
                self.cid,
                std::ptr::null_mut(),
                true,
                &mut tmfd,
                &mut lockmode,
            );
            tm_check(r)?;
            if (*(*tup).t_data).t_infomask2 & pg_sys::HEAP_ONLY_TUPLE as u16 == 0 {
                // The key is unchanged: tell the index so (bottom-up deletion
                // of the versions this leaves behind).
                self.index(tup, &values, true, check);
            }
            Self::release(tup, &values, self.pos[1]);
        }
        Ok(())
    }

    /// Delete the row at `tid`.
    pub fn delete(&mut self, tid: pg_sys::ItemPointerData) -> Result<()> {
        // SAFETY: as in `update`.
        unsafe { delete_row(self.stats.heap, tid, self.cid) }
    }

    /// Insert a row for `key` (no stored row was found for it).
    pub fn insert(&mut self, key: EntityKey, data: &[u8]) -> Result<()> {
        // SAFETY: as in `update`.
        unsafe {
            let (tup, values) = self.form(key, data)?;
            pg_sys::heap_insert(self.stats.heap, tup, self.cid, 0, std::ptr::null_mut());
            self.index(
                tup,
                &values,
                false,
                pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES,
            );
            Self::release(tup, &values, self.pos[1]);
        }
        Ok(())
    }

    /// Whether the heap's one index is its primary key (what `merge_adds`
    /// maintains with a partial uniqueness check).
    fn only_primary_key(&self) -> bool {
        // SAFETY: index relations opened in `open`.
        self.indexes.len() == 1
            && unsafe { (*(*self.indexes[0].0).rd_index).indisunique }
            && unsafe { (*self.indexes[0].1).ii_NumIndexAttrs } == 1
            && unsafe { (*self.indexes[0].1).ii_IndexAttrNumbers[0] } as usize == self.pos[0] + 1
    }

    /// Lock the row at `tid` for an update unless another transaction holds
    /// or has changed it (SKIP LOCKED): true when this transaction now holds
    /// the row as found.
    fn try_lock(&mut self, tid: pg_sys::ItemPointerData) -> bool {
        // SAFETY: `tid` was just read from this heap; the pin heap_lock_tuple
        // leaves on the buffer is dropped here.
        unsafe {
            let mut tuple = pg_sys::HeapTupleData {
                t_self: tid,
                ..Default::default()
            };
            let mut buffer: pg_sys::Buffer = 0;
            let mut tmfd = pg_sys::TM_FailureData::default();
            let r = pg_sys::heap_lock_tuple(
                self.stats.heap,
                &mut tuple,
                self.cid,
                pg_sys::LockTupleMode::LockTupleNoKeyExclusive,
                pg_sys::LockWaitPolicy::LockWaitSkip,
                false,
                &mut buffer,
                &mut tmfd,
            );
            if buffer != 0 {
                pg_sys::ReleaseBuffer(buffer);
            }
            r == pg_sys::TM_Result::TM_Ok
        }
    }

    /// Insert a row for `key`, which had no visible row, unless another
    /// transaction has one too (committed since the snapshot, or in flight):
    /// then false, and `finish` takes this row back. Never waits.
    fn insert_unless_present(&mut self, key: EntityKey, data: &[u8]) -> Result<bool> {
        // SAFETY: as in `update`.
        unsafe {
            let (tup, values) = self.form(key, data)?;
            pg_sys::heap_insert(self.stats.heap, tup, self.cid, 0, std::ptr::null_mut());
            let alone = self.index(
                tup,
                &values,
                false,
                pg_sys::IndexUniqueCheck::UNIQUE_CHECK_PARTIAL,
            );
            if !alone {
                self.retract.push((*tup).t_self);
            }
            Self::release(tup, &values, self.pos[1]);
            Ok(alone)
        }
    }

    /// Make the writes visible to the rest of the transaction.
    pub fn finish(self) -> Result<()> {
        // SAFETY: plain backend calls; the retracted rows are our own inserts,
        // visible to the command after the increment.
        unsafe {
            pg_sys::CommandCounterIncrement();
            if self.retract.is_empty() {
                return Ok(());
            }
            let cid = pg_sys::GetCurrentCommandId(true);
            for tid in &self.retract {
                delete_row(self.stats.heap, *tid, cid)?;
            }
            pg_sys::CommandCounterIncrement();
        }
        Ok(())
    }
}

/// Merge a flush's deltas that only add (a bulk transaction's) into the
/// stats rows straight through the heap, never waiting for another writer:
/// a row this transaction can lock at once is rewritten in place, a new
/// entity inserted; a row another transaction holds or changed since the
/// snapshot, or a new entity another transaction inserted too, is returned
/// for an appended delta (readers add those, advance_windows folds them).
/// Through SQL each row cost an executor round, a probe for the conflict,
/// a speculative insertion or a fmgr merge call, and a writer waited in lock
/// order for rows other writers held. `keys` sorted. None when the SQL
/// upsert must do it (not the plain table this writes, a read-only
/// transaction, a user who may not write it directly).
pub fn merge_adds(keys: &[EntityKey], map: &DeltaMap) -> Result<Option<Vec<EntityKey>>> {
    // SAFETY: reads XactReadOnly, a plain backend global.
    if unsafe { pg_sys::XactReadOnly } {
        return Ok(None);
    }
    let Some(mut w) = Rewriter::open()? else {
        return Ok(None);
    };
    if !w.only_primary_key() {
        return Ok(None);
    }
    // Each found row's ctid and its merged encoding in `buf`.
    let mut found: Vec<Option<(pg_sys::ItemPointerData, usize, usize)>> = vec![None; keys.len()];
    let mut buf: Vec<u8> = Vec::with_capacity(keys.len() * 96);
    stored_rows(keys, |i, tid, data| {
        let mut r = Record::decode(data)?;
        r.add(&map[&keys[i]]);
        r.forget_removed();
        let a = buf.len();
        r.encode_into(&mut buf);
        found[i] = Some((tid, a, buf.len()));
        Ok(())
    })?;
    // Write as the command after the probe's increment: a row this
    // transaction wrote earlier is then visible to the lock and the update.
    // SAFETY: a plain backend call.
    w.cid = unsafe { pg_sys::GetCurrentCommandId(true) };
    let mut busy = Vec::new();
    let mut fresh: Vec<u8> = Vec::new();
    for (key, row) in keys.iter().zip(&found) {
        let placed = match row {
            Some((tid, a, b)) => {
                w.try_lock(*tid) && {
                    // Held now: heap_update finds the lock ours and never
                    // waits; a new index entry needs no check, the key stays.
                    let no_check = pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO;
                    w.update_checked(*tid, *key, &buf[*a..*b], no_check)?;
                    true
                }
            }
            None => {
                // Deltas that only add carry no removed times: stored as is.
                fresh.clear();
                map[key].encode_into(&mut fresh);
                w.insert_unless_present(*key, &fresh)?
            }
        };
        if !placed {
            busy.push(*key);
        }
    }
    w.finish()?;
    Ok(Some(busy))
}
