//! Per-backend caches of the profile matcher and their invalidation.
//!
//! | cache          | key        | bound (GUC)                    | cleared by                    |
//! |----------------|------------|--------------------------------|-------------------------------|
//! | `profiles`     | profile_id | `killboard.profile_cache_size` | profile change, SDE change    |
//! | `profile_index`| index key  | every enabled profile (ids)    | profile change, SDE change    |
//! | `sde_types`    | type_id    | `killboard.sde_cache_size`     | SDE change                    |
//! | `sde_systems`  | system_id  | `killboard.sde_cache_size`     | SDE change                    |
//! | `jump_graph`   | –          | one graph                      | SDE change                    |
//!
//! Each cache is a `thread_local!` `RefCell`: a backend is one thread, so no
//! lock is needed, and nothing is shared between backends. Cross-backend
//! invalidation: statement triggers on `killboard.profiles` and the SDE tables
//! send a relcache invalidation for a sentinel relation; it reaches other
//! backends through the shared invalidation queue at commit (and this backend
//! at the end of the statement). Our relcache callback only bumps a generation
//! counter; [`sync`] accepts pending messages and reports which generations
//! moved, and the owners rebuild before matching.

use lru::LruCache;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiResult, SpiTupleTable};
use pgrx::PgOid;
use std::cell::{Cell, RefCell};
use std::hash::Hash;
use std::mem::ManuallyDrop;
use std::num::NonZeroUsize;
use std::time::Instant;

thread_local! {
    /// Bumped by the relcache callback; a cache built at an older generation is stale.
    static PROFILES_GEN: Cell<u64> = const { Cell::new(1) };
    static SDE_GEN: Cell<u64> = const { Cell::new(1) };
    /// Sentinel relations; InvalidOid until the first rebuild resolves them.
    static PROFILES_OID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    static SDE_OID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// Owner of killboard.profiles: the caches read through its rights.
    static OWNER_OID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/// Counters reported by `killboard.cache_stats()`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub rebuilds: u64,
    pub last_rebuild_ms: f64,
}

impl Counters {
    pub fn rebuilt(&mut self, started: Instant) {
        self.rebuilds += 1;
        self.last_rebuild_ms = started.elapsed().as_secs_f64() * 1000.0;
    }
}

/// An LRU that counts what `cache_stats()` shows.
pub struct Counted<K: Hash + Eq, V> {
    lru: LruCache<K, V>,
    pub counters: Counters,
}

fn cap(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN)
}

impl<K: Hash + Eq + Copy, V: Clone> Counted<K, V> {
    pub fn new(capacity: usize) -> Self {
        Counted {
            lru: LruCache::new(cap(capacity)),
            counters: Counters::default(),
        }
    }

    pub fn get(&mut self, k: &K) -> Option<V> {
        match self.lru.get(k) {
            Some(v) => {
                self.counters.hits += 1;
                Some(v.clone())
            }
            None => {
                self.counters.misses += 1;
                None
            }
        }
    }

    pub fn put(&mut self, k: K, v: V) {
        if let Some((old, _)) = self.lru.push(k, v) {
            if old != k {
                self.counters.evictions += 1;
            }
        }
    }

    /// Follow the GUC; shrinking evicts (and counts) the least recent entries.
    pub fn resize(&mut self, capacity: usize) {
        let c = cap(capacity);
        if c != self.lru.cap() {
            let before = self.lru.len();
            self.lru.resize(c);
            self.counters.evictions += before.saturating_sub(self.lru.len()) as u64;
        }
    }

    pub fn clear(&mut self) {
        self.lru.clear();
    }

    pub fn len(&self) -> usize {
        self.lru.len()
    }

    pub fn capacity(&self) -> usize {
        self.lru.cap().get()
    }
}

/// A statement planned once per backend and kept (SPI_keepplan): the
/// matcher's queries run per killmail, and parsing and planning them each
/// time cost more than running them. The plan cache re-plans by itself when
/// a table it uses changes (or the extension is re-created).
pub struct KeptPlan {
    sql: &'static str,
    args: &'static [pg_sys::Oid],
    /// Never freed: it lives as long as the backend, and freeing it from a
    /// thread-local destructor at process exit would call into SPI too late.
    plan: RefCell<Option<ManuallyDrop<OwnedPreparedStatement>>>,
}

impl KeptPlan {
    pub const fn new(sql: &'static str, args: &'static [pg_sys::Oid]) -> Self {
        KeptPlan {
            sql,
            args,
            plan: RefCell::new(None),
        }
    }

    /// Run the statement read-only with `args`, preparing it on first use.
    pub fn select<'conn>(
        &self,
        client: &SpiClient<'conn>,
        limit: Option<std::ffi::c_long>,
        args: &[pgrx::datum::DatumWithOid],
    ) -> SpiResult<SpiTupleTable<'conn>> {
        let mut plan = self.plan.borrow_mut();
        let plan = match plan.as_mut() {
            Some(p) => p,
            None => {
                let oids: Vec<PgOid> = self.args.iter().map(|o| PgOid::from(*o)).collect();
                plan.insert(ManuallyDrop::new(client.prepare(self.sql, &oids)?.keep()))
            }
        };
        client.select(&**plan, limit, args)
    }

    /// Run a writing statement with `args`, preparing it on first use.
    pub fn update<'conn>(
        &self,
        client: &mut SpiClient<'conn>,
        args: &[pgrx::datum::DatumWithOid],
    ) -> SpiResult<SpiTupleTable<'conn>> {
        let mut plan = self.plan.borrow_mut();
        let plan = match plan.as_mut() {
            Some(p) => p,
            None => {
                let oids: Vec<PgOid> = self.args.iter().map(|o| PgOid::from(*o)).collect();
                plan.insert(ManuallyDrop::new(
                    client.prepare_mut(self.sql, &oids)?.keep(),
                ))
            }
        };
        client.update(&**plan, None, args)
    }
}

/// Relcache invalidation callback. Runs inside invalidation processing, where
/// catalog access and allocation are off limits: it only bumps counters.
#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let all = relid == pg_sys::InvalidOid;
    if all || relid == PROFILES_OID.with(Cell::get) {
        PROFILES_GEN.with(|g| g.set(g.get() + 1));
    }
    if all || relid == SDE_OID.with(Cell::get) {
        SDE_GEN.with(|g| g.set(g.get() + 1));
    }
}

/// Register the invalidation callback; called once from `_PG_init`.
pub fn init() {
    // SAFETY: registering a callback with a static function pointer; the slot
    // table is per backend and _PG_init runs once per backend.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0))
    };
}

/// Current generations (profiles, sde) after taking in pending invalidations.
pub fn sync() -> (u64, u64) {
    // SAFETY: plain backend call; processes the shared invalidation queue now,
    // so a profile committed by another backend after our transaction started
    // is seen even when we already hold the locks that would have triggered it.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    (PROFILES_GEN.with(Cell::get), SDE_GEN.with(Cell::get))
}

/// Resolve the sentinel relations and the owner; done on every rebuild so a
/// dropped and re-created extension is picked up.
pub fn resolve_relations() -> Result<(), pgrx::spi::SpiError> {
    // select, not Spi::get_three: pgrx's get_* assign an xid, which a hot standby refuses (XX000).
    let (p, s, o) = Spi::connect(|c| {
        c.select(
            include_str!("../../sql/queries/match_oids.sql"),
            Some(1),
            &[],
        )?
        .first()
        .get_three::<pg_sys::Oid, pg_sys::Oid, pg_sys::Oid>()
    })?;
    PROFILES_OID.with(|c| c.set(p.unwrap_or(pg_sys::InvalidOid)));
    SDE_OID.with(|c| c.set(s.unwrap_or(pg_sys::InvalidOid)));
    OWNER_OID.with(|c| c.set(o.unwrap_or(pg_sys::InvalidOid)));
    Ok(())
}

/// Restores the user id when dropped, including on unwinding from an ERROR.
struct UserGuard {
    uid: pg_sys::Oid,
    ctx: i32,
}

impl Drop for UserGuard {
    fn drop(&mut self) {
        // SAFETY: restores exactly what GetUserIdAndSecContext returned.
        unsafe { pg_sys::SetUserIdAndSecContext(self.uid, self.ctx) };
    }
}

/// Run `f` with the rights of the profiles table's owner, the way a SECURITY
/// DEFINER function would: the index must hold every user's profiles (row
/// security filters per user, the cache is per backend), and visibility is
/// applied afterwards by [`visible_to_current_user`].
pub fn as_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = OWNER_OID.with(Cell::get);
    if owner == pg_sys::InvalidOid {
        return f();
    }
    let mut uid = pg_sys::InvalidOid;
    let mut ctx = 0i32;
    // SAFETY: out-pointers to locals.
    unsafe { pg_sys::GetUserIdAndSecContext(&mut uid, &mut ctx) };
    let _guard = UserGuard { uid, ctx };
    // SAFETY: same switch as fmgr_security_definer; restored by the guard.
    unsafe {
        pg_sys::SetUserIdAndSecContext(owner, ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32)
    };
    f()
}

/// Who may see which profile: the owner, killboard_admin members, superusers
/// (the same rule as the row security policy on killboard.profiles).
pub struct Visibility {
    all: bool,
    user: String,
}

impl Visibility {
    pub fn current() -> Visibility {
        // SAFETY: plain catalog lookups for the current user; noerr variants.
        unsafe {
            let uid = pg_sys::GetUserId();
            let admin = pg_sys::get_role_oid(c"killboard_admin".as_ptr(), true);
            let all = pg_sys::superuser()
                || (admin != pg_sys::InvalidOid && pg_sys::has_privs_of_role(uid, admin));
            let name = pg_sys::GetUserNameFromId(uid, true);
            let user = if name.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(name)
                    .to_string_lossy()
                    .into_owned()
            };
            Visibility { all, user }
        }
    }

    pub fn sees(&self, owner: &str) -> bool {
        self.all || owner == self.user
    }

    pub fn sees_all(&self) -> bool {
        self.all
    }
}

/// One `cache_stats()` row (column names are spelled out on `cache_stats`).
pub type StatsRow = (String, i64, i64, i64, i64, Option<i64>, i64, Option<f64>);

pub fn stats_row(name: &str, c: &Counters, entries: usize, capacity: Option<usize>) -> StatsRow {
    let i = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    (
        name.to_string(),
        i(c.hits),
        i(c.misses),
        i(c.evictions),
        i(entries as u64),
        capacity.map(|c| i(c as u64)),
        i(c.rebuilds),
        (c.rebuilds > 0).then_some(c.last_rebuild_ms),
    )
}

/// Per cache of this backend: hits, misses, evictions, entries, capacity,
/// rebuilds and the duration of the last rebuild.
// pgrx reads the result columns' names from this signature: no type alias.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_restricted)]
fn cache_stats() -> TableIterator<
    'static,
    (
        name!(cache, String),
        name!(hits, i64),
        name!(misses, i64),
        name!(evictions, i64),
        name!(entries, i64),
        name!(capacity, Option<i64>),
        name!(rebuilds, i64),
        name!(last_rebuild_ms, Option<f64>),
    ),
> {
    let mut rows = crate::profiles::cache_rows();
    rows.extend(crate::sde::cache_rows());
    TableIterator::new(rows)
}

/// Send a relcache invalidation for `rel` (a cache sentinel) at the end of
/// the statement; called by the statement triggers in sql/profiles.sql.
#[pg_extern(volatile, strict, parallel_unsafe)]
pub fn _invalidate_relcache(rel: pg_sys::Oid) {
    // SAFETY: queues an invalidation message for the relation id; unknown ids are harmless.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(rel) };
}
