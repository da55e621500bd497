//! Straight heap and index access, without SPI, for the hot paths that read
//! or write a few rows by key (entity_stats, the window advance, the bulk
//! merge, loading a killmail for matching). Through SPI each of those paid for
//! an executor start-up and a plan revalidation, several times the cost of
//! the lookups themselves.

use pgrx::pg_sys;

use killboard_core::Result;

/// A table and the index it is read through.
#[derive(Clone, Copy)]
pub struct Rel {
    pub heap: pg_sys::Oid,
    pub index: pg_sys::Oid,
}

/// The heap and index of one of ours, locked like the executor would
/// (AccessShareLock, held to the end of the transaction).
pub struct Opened {
    pub heap: pg_sys::Relation,
    pub index: pg_sys::Relation,
}

impl Drop for Opened {
    fn drop(&mut self) {
        // SAFETY: both were opened by `open` below; the locks stay held.
        unsafe {
            pg_sys::relation_close(self.index, pg_sys::NoLock as _);
            pg_sys::relation_close(self.heap, pg_sys::NoLock as _);
        }
    }
}

pub unsafe fn open(r: Rel, lock: pg_sys::LOCKMODE) -> Option<Opened> {
    let heap = pg_sys::try_relation_open(r.heap, lock);
    if heap.is_null() {
        return None;
    }
    let index = pg_sys::try_relation_open(r.index, lock);
    if index.is_null() {
        pg_sys::relation_close(heap, pg_sys::NoLock as _);
        return None;
    }
    Some(Opened { heap, index })
}

/// Call `f` with each visible heap tuple (as a slot) whose index key equals
/// `keys`, until it returns false.
pub unsafe fn probe(
    rel: &Opened,
    snapshot: pg_sys::Snapshot,
    keys: &mut [pg_sys::ScanKeyData],
    mut f: impl FnMut(*mut pg_sys::TupleTableSlot) -> Result<bool>,
) -> Result<()> {
    let slot = pg_sys::table_slot_create(rel.heap, std::ptr::null_mut());
    let scan = pg_sys::index_beginscan(rel.heap, rel.index, snapshot, keys.len() as _, 0);
    pg_sys::index_rescan(
        scan,
        keys.as_mut_ptr(),
        keys.len() as _,
        std::ptr::null_mut(),
        0,
    );
    let mut out = Ok(true);
    while matches!(out, Ok(true))
        && pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot)
    {
        out = f(slot);
    }
    pg_sys::index_endscan(scan);
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    out.map(|_| ())
}

/// Attribute `attno` of the slot's tuple (None when NULL).
pub unsafe fn attr(slot: *mut pg_sys::TupleTableSlot, attno: i16) -> Option<pg_sys::Datum> {
    if (*slot).tts_nvalid < attno {
        pg_sys::slot_getsomeattrs_int(slot, attno as _);
    }
    let i = (attno - 1) as usize;
    if *(*slot).tts_isnull.add(i) {
        None
    } else {
        Some(*(*slot).tts_values.add(i))
    }
}

/// `f` of the bytes of a varlena datum (bytea, text) from a tuple, detoasted
/// if need be; a detoasted copy is freed afterwards.
pub unsafe fn with_bytes<R>(d: pg_sys::Datum, f: impl FnOnce(&[u8]) -> R) -> R {
    let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
    let bytes = std::slice::from_raw_parts(
        pgrx::varlena::vardata_any(v) as *const u8,
        pgrx::varlena::varsize_any_exhdr(v),
    );
    let r = f(bytes);
    if v != d.cast_mut_ptr() {
        pg_sys::pfree(v as _);
    }
    r
}

pub fn eq_key(attno: i16, proc_: u32, arg: pg_sys::Datum) -> pg_sys::ScanKeyData {
    let mut k = pg_sys::ScanKeyData::default();
    // SAFETY: ScanKeyInit only fills the struct it is given.
    unsafe {
        pg_sys::ScanKeyInit(
            &mut k,
            attno,
            pg_sys::BTEqualStrategyNumber as _,
            pg_sys::Oid::from(proc_),
            arg,
        )
    };
    k
}

/// Whether plain heap writes to `heap` do everything the executor's would:
/// an ordinary table without triggers, rules or row security (the
/// extension's own tables have none; anything added later goes through SQL),
/// which the current user may write as the SQL it replaces would (`modes`,
/// each an ACL_* bit; the statement's own check then raises the error).
pub unsafe fn plain_table(heap: pg_sys::Relation, modes: &[u32]) -> bool {
    let c = &*(*heap).rd_rel;
    let user = pg_sys::GetUserId();
    c.relkind == pg_sys::RELKIND_RELATION as std::ffi::c_char
        && !c.relhastriggers
        && !c.relhasrules
        && !c.relrowsecurity
        && modes.iter().all(|m| {
            pg_sys::pg_class_aclcheck((*heap).rd_id, user, *m as pg_sys::AclMode)
                == pg_sys::AclResult::ACLCHECK_OK
        })
}

/// Whether reading `heap` straight gives what a SELECT by the current user
/// would: an ordinary table without row security, which the user may read
/// (otherwise SQL reads it, and raises the proper error). Triggers and rules
/// on writes do not matter to a read.
pub unsafe fn readable_table(heap: pg_sys::Relation) -> bool {
    let c = &*(*heap).rd_rel;
    c.relkind == pg_sys::RELKIND_RELATION as std::ffi::c_char
        && !c.relrowsecurity
        && pg_sys::pg_class_aclcheck(
            (*heap).rd_id,
            pg_sys::GetUserId(),
            pg_sys::ACL_SELECT as pg_sys::AclMode,
        ) == pg_sys::AclResult::ACLCHECK_OK
}

/// `f` on the snapshot a pgrx SPI read would use: the statement's while the
/// transaction has no xid; once it has one (it wrote) a fresh one after a
/// command counter increment, so its own rows are seen. The bool says
/// whether the snapshot is that fresh one.
pub unsafe fn with_read_snapshot<R>(f: impl FnOnce(pg_sys::Snapshot, bool) -> R) -> R {
    let pushed = pg_sys::GetCurrentTransactionIdIfAny() != pg_sys::InvalidTransactionId
        || !pg_sys::ActiveSnapshotSet();
    if pushed {
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let r = f(pg_sys::GetActiveSnapshot(), pushed);
    if pushed {
        pg_sys::PopActiveSnapshot();
    }
    r
}

/// The relation `name` in namespace `nsp` (None when it does not exist).
pub unsafe fn relid(nsp: pg_sys::Oid, name: &std::ffi::CStr) -> Option<pg_sys::Oid> {
    let oid = pg_sys::get_relname_relid(name.as_ptr(), nsp);
    (oid != pg_sys::InvalidOid).then_some(oid)
}
