//! This backend's unflushed stats deltas for the current transaction.
//!
//! Deltas are merged in memory per (sub)transaction level and written once,
//! in sorted key order, by the deferred flush trigger at commit (or earlier,
//! by a reader at top level). A rolled-back savepoint drops its level; the
//! shared window lock taken with the first delta is tracked the same way.
//! Thread-local is enough: a backend is one thread and never shares this.

use std::cell::RefCell;

use killboard_core::stats::{CreditMode, DeltaMap, EntityKey, Record};
use pgrx::pg_sys;

#[derive(Default)]
struct TxnDeltas {
    /// (transaction nest level, deltas made at that level), innermost last.
    levels: Vec<(i32, DeltaMap)>,
    /// Nest level at which this transaction took the shared window lock.
    lock_level: Option<i32>,
    as_of: i64,
    mode: Option<CreditMode>,
    /// Ingest writes rows itself and credits them directly; the row triggers stand down.
    suppress_triggers: u32,
    /// Nest level at which maintain_stats=off writes marked the store stale.
    stale_marked: bool,
}

thread_local! {
    static TXN: RefCell<TxnDeltas> = RefCell::new(TxnDeltas::default());
}

fn nest_level() -> i32 {
    unsafe { pg_sys::GetCurrentTransactionNestLevel() }
}

/// The window state this transaction credits against, if the lock is held.
pub fn window_state() -> Option<(i64, CreditMode)> {
    TXN.with(|t| {
        let t = t.borrow();
        t.lock_level.and(t.mode).map(|m| (t.as_of, m))
    })
}

pub fn set_window_state(as_of: i64, mode: CreditMode) {
    TXN.with(|t| {
        let mut t = t.borrow_mut();
        t.lock_level = Some(nest_level());
        t.as_of = as_of;
        t.mode = Some(mode);
    })
}

pub fn add(deltas: DeltaMap) {
    if deltas.is_empty() {
        return;
    }
    let level = nest_level();
    TXN.with(|t| {
        let mut t = t.borrow_mut();
        match t.levels.last_mut() {
            Some((l, map)) if *l == level => merge(map, deltas),
            _ => t.levels.push((level, deltas)),
        }
    })
}

fn merge(into: &mut DeltaMap, mut from: DeltaMap) {
    // Merge the smaller map into the larger one.
    if from.len() > into.len() {
        std::mem::swap(into, &mut from);
    }
    for (k, r) in from {
        into.entry(k).or_default().add(&r);
    }
}

pub fn has_pending() -> bool {
    TXN.with(|t| t.borrow().levels.iter().any(|(_, m)| !m.is_empty()))
}

/// Take every level's deltas, merged. Only at top level: a flush inside a
/// savepoint could be rolled back after the deltas left memory.
pub fn take_all() -> Option<DeltaMap> {
    if nest_level() > 1 {
        return None;
    }
    TXN.with(|t| {
        let mut t = t.borrow_mut();
        let mut levels = t.levels.drain(..);
        // The usual case is one level: hand it over without copying records.
        let mut out = levels.next().map(|(_, m)| m).unwrap_or_default();
        for (_, m) in levels {
            merge(&mut out, m);
        }
        Some(out)
    })
}

/// This backend's unflushed delta for one entity (read-your-writes).
pub fn pending_for(key: &EntityKey) -> Option<Record> {
    TXN.with(|t| {
        let t = t.borrow();
        let mut acc: Option<Record> = None;
        for (_, m) in &t.levels {
            if let Some(r) = m.get(key) {
                acc.get_or_insert_with(Record::default).add(r);
            }
        }
        acc
    })
}

pub fn triggers_suppressed() -> bool {
    TXN.with(|t| t.borrow().suppress_triggers > 0)
}

/// Run `f` with the row triggers standing down (ingest credits directly).
pub fn with_triggers_suppressed<R>(f: impl FnOnce() -> R) -> R {
    struct Guard;
    impl Drop for Guard {
        fn drop(&mut self) {
            TXN.with(|t| t.borrow_mut().suppress_triggers -= 1);
        }
    }
    TXN.with(|t| t.borrow_mut().suppress_triggers += 1);
    let _g = Guard;
    f()
}

pub fn stale_marked() -> bool {
    TXN.with(|t| t.borrow().stale_marked)
}
pub fn set_stale_marked() {
    TXN.with(|t| t.borrow_mut().stale_marked = true)
}

/// Forget everything (rebuild, truncate).
pub fn discard_all() {
    TXN.with(|t| {
        let mut t = t.borrow_mut();
        t.levels.clear();
    })
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PREPARE
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
    ) {
        TXN.with(|t| {
            let mut t = t.borrow_mut();
            if event == XACT_EVENT_COMMIT && t.levels.iter().any(|(_, m)| !m.is_empty()) {
                // Cannot happen while the deferred flush triggers exist; say so loudly if it does.
                pgrx::warning!(
                    "pg_killboard: unflushed stats deltas at commit; run killboard.verify_stats()"
                );
            }
            *t = TxnDeltas::default();
        });
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    let level = nest_level();
    TXN.with(|t| {
        let mut t = t.borrow_mut();
        match event {
            SUBXACT_EVENT_ABORT_SUB => {
                t.levels.retain(|(l, _)| *l < level);
                if t.lock_level.is_some_and(|l| l >= level) {
                    // The lock went with the subtransaction's resource owner.
                    t.lock_level = None;
                    t.mode = None;
                }
            }
            SUBXACT_EVENT_COMMIT_SUB => {
                if let Some(pos) = t.levels.iter().position(|(l, _)| *l >= level) {
                    let moved: Vec<(i32, DeltaMap)> = t.levels.drain(pos..).collect();
                    let mut merged = DeltaMap::new();
                    for (_, m) in moved {
                        merge(&mut merged, m);
                    }
                    match t.levels.last_mut() {
                        Some((l, map)) if *l == level - 1 => merge(map, merged),
                        _ => t.levels.push((level - 1, merged)),
                    }
                }
                if t.lock_level.is_some_and(|l| l >= level) {
                    t.lock_level = Some(level - 1);
                }
            }
            _ => {}
        }
    })
}

pub fn init() {
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}
