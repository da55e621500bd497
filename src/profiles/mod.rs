//! Filter profiles in the backend: validation on write, the inverted index and
//! compiled-profile cache, and matching (on ingest and on demand).
//! Rules live in `killboard_core::profiles`; this module feeds them rows.

mod stored;

use crate::cache::{self, Counted, Counters, KeptPlan, Visibility};
use crate::error::OrRaise;
use crate::sde::CachedSde;
use killboard_core::model::StoredFlags;
use killboard_core::profiles::{
    self, view_from_json, Compiled, Filter, KillmailView, Leaf, PartyView, ProfileIndex,
};
use killboard_core::sde::{ItemRef, JumpGraph};
use pgrx::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

struct ProfileState {
    /// Ids only, covering every enabled profile; rebuilt on any profile or SDE change.
    index: Rc<ProfileIndex>,
    /// Owner per index slot.
    owners: Rc<Vec<Rc<str>>>,
    index_counters: Counters,
    /// Compiled predicates by index slot, when every profile fits in
    /// killboard.profile_cache_size: no eviction can happen then, and a slot
    /// lookup is much cheaper than an LRU lookup per candidate.
    dense: Option<Rc<Vec<Compiled>>>,
    /// Otherwise compiled predicates bounded by killboard.profile_cache_size;
    /// a miss reads and compiles the one profile again.
    compiled: Counted<i64, Rc<Compiled>>,
    /// (profiles, sde) generations and cache size the index was built at.
    built: (u64, u64, usize),
}

thread_local! {
    static STATE: RefCell<ProfileState> = RefCell::new(ProfileState {
        index: Rc::new(ProfileIndex::new()),
        owners: Rc::new(Vec::new()),
        index_counters: Counters::default(),
        dense: None,
        compiled: Counted::new(crate::gucs::profile_cache_size()),
        built: (0, 0, 0),
    });
    static KILLMAIL_PLAN: KeptPlan =
        const { KeptPlan::new(include_str!("../../sql/queries/match_killmail.sql"), &[pg_sys::INT8OID]) };
    static PROFILE_PLAN: KeptPlan =
        const { KeptPlan::new(include_str!("../../sql/queries/match_profile_one.sql"), &[pg_sys::INT8OID]) };
}

fn uses_jumps(f: &Filter) -> bool {
    match f {
        Filter::All(v) | Filter::Any(v) => v.iter().any(uses_jumps),
        Filter::Not(x) => uses_jumps(x),
        Filter::Leaf(Leaf::WithinJumps { .. }) => true,
        Filter::Leaf(_) => false,
    }
}

fn compile(filter: &Filter) -> Compiled {
    if uses_jumps(filter) {
        profiles::compile(filter, &crate::sde::jump_graph())
    } else {
        profiles::compile(filter, &JumpGraph::default())
    }
}

/// Bring the index up to date with committed profile and SDE changes.
fn ensure_fresh() {
    let (pgen, sgen) = cache::sync();
    crate::sde::sync(sgen);
    let size = crate::gucs::profile_cache_size();
    let built = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.compiled.resize(size);
        s.built
    });
    if built != (pgen, sgen, size) {
        rebuild((pgen, sgen, size));
    }
}

fn rebuild(built: (u64, u64, usize)) {
    let started = Instant::now();
    cache::resolve_relations().or_raise();
    let rows: Vec<(i64, String, String)> = cache::as_owner(|| {
        Spi::connect(|c| {
            let mut out = Vec::new();
            for row in c.select(
                include_str!("../../sql/queries/match_profiles_all.sql"),
                None,
                &[],
            )? {
                if let (Some(id), Some(owner), Some(filter)) = (
                    row.get::<i64>(1)?,
                    row.get::<String>(2)?,
                    row.get::<String>(3)?,
                ) {
                    out.push((id, owner, filter));
                }
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        })
    })
    .or_raise();
    let size = built.2;
    let mut index = ProfileIndex::new();
    let mut owners = Vec::with_capacity(rows.len());
    let mut compiled = Vec::with_capacity(rows.len());
    let mut owner_names: FxHashMap<String, Rc<str>> = FxHashMap::default();
    for (id, owner, text) in rows {
        // Filters are validated on write; one that no longer parses (written
        // before a validator change) is left out rather than failing every match.
        let filter = match serde_json::from_str(&text)
            .map_err(|e| e.to_string())
            .and_then(|doc| profiles::parse_filter(&doc).map_err(|e| e.message))
        {
            Ok(f) => f,
            Err(e) => {
                pgrx::warning!("killboard: profile {id} skipped: {e}");
                continue;
            }
        };
        let c = compile(&filter);
        index.insert(id, c.keys.as_deref());
        let owner = match owner_names.get(&owner) {
            Some(o) => o.clone(),
            None => {
                let o: Rc<str> = Rc::from(owner.as_str());
                owner_names.insert(owner, o.clone());
                o
            }
        };
        owners.push(owner);
        compiled.push((id, c));
    }
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.compiled.clear();
        if compiled.len() <= size {
            s.dense = Some(Rc::new(compiled.into_iter().map(|(_, c)| c).collect()));
        } else {
            s.dense = None;
            for (id, c) in compiled {
                s.compiled.put(id, Rc::new(c));
            }
        }
        s.index = Rc::new(index);
        s.owners = Rc::new(owners);
        s.built = built;
        s.index_counters.rebuilt(started);
    });
}

fn compiled_for(id: i64) -> Option<Rc<Compiled>> {
    if let Some(c) = STATE.with(|s| s.borrow_mut().compiled.get(&id)) {
        return Some(c);
    }
    let text = cache::as_owner(|| {
        Spi::connect(|c| {
            let row = PROFILE_PLAN
                .with(|p| p.select(c, Some(1), &[id.into()]))?
                .first();
            if row.is_empty() {
                return Ok(None);
            }
            row.get::<String>(1)
        })
    })
    .or_raise()?;
    let doc = serde_json::from_str(&text).ok()?;
    let filter = profiles::parse_filter(&doc).ok()?;
    let c = Rc::new(compile(&filter));
    STATE.with(|s| s.borrow_mut().compiled.put(id, c.clone()));
    Some(c)
}

/// Matching profile ids, sorted; `vis` limits them to the caller's profiles.
fn match_view(km: &KillmailView, vis: Option<&Visibility>) -> Vec<i64> {
    let (index, owners, dense) = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.index_counters.hits += 1;
        (s.index.clone(), s.owners.clone(), s.dense.clone())
    });
    let vis = vis.filter(|v| !v.sees_all());
    let mut out = Vec::new();
    let mut evaluated = 0u64;
    index.for_each_candidate(km, |slot| {
        if let Some(vis) = vis {
            if !vis.sees(&owners[slot as usize]) {
                return;
            }
        }
        let id = index.profile_id(slot);
        let hit = match &dense {
            Some(d) => {
                evaluated += 1;
                d[slot as usize].matches(km)
            }
            None => compiled_for(id).is_some_and(|c| c.matches(km)),
        };
        if hit {
            out.push(id);
        }
    });
    if evaluated > 0 {
        STATE.with(|s| s.borrow_mut().compiled.counters.hits += evaluated);
    }
    // Slots are in id order after a rebuild; sorting keeps the promise regardless.
    out.sort_unstable();
    out.dedup();
    out
}

/// Columns per row of match_killmail.sql's attackers and items arrays.
const ATTACKER_FIELDS: usize = 7;
const ITEM_FIELDS: usize = 3;

fn ids<T: Copy>(v: Option<Vec<Option<T>>>) -> Vec<Option<T>> {
    v.unwrap_or_default()
}

/// Read a stored killmail into the matcher's view. Location comes from the SDE
/// when it knows the system (exact security), else from the killmail's columns.
fn load_view(killmail_id: i64) -> Option<KillmailView> {
    let loaded = match stored::load(killmail_id).or_raise() {
        Some(direct) => direct,
        None => load_sql(killmail_id),
    };
    let (mut km, items, (con, reg, sec), stored, final_blows) = loaded?;
    km.resolve(&items, &mut CachedSde);
    km.resolve_flags(stored, &final_blows);
    if km.region_id.is_none() {
        km.constellation_id = con;
        km.region_id = reg;
        km.security = sec;
    }
    Some(km)
}

/// The SQL read of a stored killmail, when the tables cannot be read straight.
fn load_sql(killmail_id: i64) -> Option<stored::Loaded> {
    Spi::connect(|c| {
        let table = KILLMAIL_PLAN.with(|p| p.select(c, Some(1), &[killmail_id.into()]))?;
        if table.is_empty() {
            return Ok(None);
        }
        let r = table.first();
        let i64c = |n: usize| r.get::<i64>(n);
        let i32c = |n: usize| r.get::<i32>(n);
        let victim = PartyView {
            character_id: i64c(5)?,
            corporation_id: i64c(6)?,
            alliance_id: i64c(7)?,
            faction_id: i64c(8)?,
            ship_type_id: i32c(9)?,
            ship_group_id: i32c(10)?,
            ship_category_id: None,
        };
        // Row-major: ATTACKER_FIELDS per attacker, ITEM_FIELDS per item.
        let att = ids(r.get::<Vec<Option<i64>>>(16)?);
        let i32of = |v: Option<i64>| v.and_then(|x| i32::try_from(x).ok());
        let attackers: Vec<PartyView> = att
            .chunks_exact(ATTACKER_FIELDS)
            .map(|a| PartyView {
                character_id: a[0],
                corporation_id: a[1],
                alliance_id: a[2],
                faction_id: a[3],
                ship_type_id: i32of(a[4]),
                ship_group_id: i32of(a[5]),
                ship_category_id: None,
            })
            .collect();
        let final_blows: Vec<bool> = att
            .chunks_exact(ATTACKER_FIELDS)
            .map(|a| a[6] == Some(1))
            .collect();
        let items = ids(r.get::<Vec<Option<i32>>>(17)?)
            .chunks_exact(ITEM_FIELDS)
            .filter_map(|i| {
                Some(ItemRef {
                    type_id: i[0]?,
                    flag: i[1]?,
                    top_level: i[2] != Some(0),
                })
            })
            .collect();
        let attacker_count = if attackers.is_empty() {
            r.get::<i32>(15)?.unwrap_or(0).max(0) as u32
        } else {
            attackers.len() as u32
        };
        let stored = StoredFlags {
            npc: r.get::<bool>(12)?,
            solo: r.get::<bool>(13)?,
            awox: r.get::<bool>(14)?,
        };
        let km = KillmailView {
            killmail_id,
            solar_system_id: i32c(1)?.unwrap_or(0),
            victim,
            attackers,
            attacker_count,
            total_value: r.get::<f64>(11)?.unwrap_or(0.0),
            ..KillmailView::default()
        };
        Ok::<_, pgrx::spi::SpiError>(Some((
            km,
            items,
            (i32c(2)?, i32c(3)?, r.get::<f64>(4)?),
            stored,
            final_blows,
        )))
    })
    .or_raise()
}

fn view_of_json(doc: &serde_json::Value) -> KillmailView {
    view_from_json(doc).or_raise().resolve(&mut CachedSde)
}

/// Check a filter document: true, or ERROR 22023 with the JSON path in the
/// message and DETAIL. Used by the profiles trigger; callable by anyone.
#[pg_extern(immutable, strict, parallel_safe)]
pub fn validate_filter(filter: crate::json::Json) -> bool {
    profiles::validate(&filter.0).or_raise();
    true
}

// match_profiles(killmail_id) and match_profiles(jsonb) return their set in
// materialize mode, all rows from one call. pgrx's SetOfIterator returns one
// row per call, and every call of a function with a pinned search_path goes
// through fmgr_security_definer: a GUC nest level, a search_path parse and, in
// PostgreSQL 15, an AtEOXact_GUC walk over every GUC. At ~40 matches that was
// about half of a match's time. The SQL is what pgrx generated for the
// SetOfIterator versions, symbols included, so the catalog does not change.
pgrx::extension_sql!(
    r#"
CREATE FUNCTION killboard."match_profiles"(
	"killmail_id" bigint /* i64 */
) RETURNS SETOF bigint /* i64 */
STRICT STABLE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'match_profiles_wrapper';
CREATE FUNCTION killboard."match_profiles"(
	"km" jsonb /* crate :: json :: Json */
) RETURNS SETOF bigint /* i64 */
STRICT STABLE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'match_profiles_jsonb_wrapper';
"#,
    name = "match_profiles",
    requires = ["schema"]
);

/// Check that the caller takes a materialized set, before any work.
///
/// # Safety
/// `fcinfo` is the call's.
unsafe fn materialize_allowed(fcinfo: pg_sys::FunctionCallInfo) -> *mut pg_sys::ReturnSetInfo {
    let rsinfo = unsafe { (*fcinfo).resultinfo } as *mut pg_sys::ReturnSetInfo;
    let ok = !rsinfo.is_null()
        && unsafe { (*rsinfo).type_ } == pg_sys::NodeTag::T_ReturnSetInfo
        && unsafe { (*rsinfo).allowedModes }
            & pg_sys::SetFunctionReturnMode::SFRM_Materialize as i32
            != 0;
    if !ok {
        pgrx::ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "set-valued function called in context that cannot accept a set"
        );
    }
    rsinfo
}

/// Hand `ids` back as a one-column set (bigint) in a tuplestore.
///
/// # Safety
/// `rsinfo` comes from [`materialize_allowed`] for this call.
unsafe fn return_ids(rsinfo: *mut pg_sys::ReturnSetInfo, ids: &[i64]) -> pg_sys::Datum {
    unsafe {
        let per_query = (*(*rsinfo).econtext).ecxt_per_query_memory;
        let old = pg_sys::MemoryContextSwitchTo(per_query);
        let desc = pg_sys::CreateTemplateTupleDesc(1);
        pg_sys::TupleDescInitEntry(desc, 1, c"match_profiles".as_ptr(), pg_sys::INT8OID, -1, 0);
        let random = (*rsinfo).allowedModes
            & pg_sys::SetFunctionReturnMode::SFRM_Materialize_Random as i32
            != 0;
        let store = pg_sys::tuplestore_begin_heap(random, false, pg_sys::work_mem);
        (*rsinfo).returnMode = pg_sys::SetFunctionReturnMode::SFRM_Materialize;
        (*rsinfo).setResult = store;
        (*rsinfo).setDesc = desc;
        pg_sys::MemoryContextSwitchTo(old);
        let mut nulls = [false];
        for &id in ids {
            let mut values = [pg_sys::Datum::from(id)];
            pg_sys::tuplestore_putvalues(store, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        }
    }
    pg_sys::Datum::from(0usize)
}

#[doc(hidden)]
#[unsafe(no_mangle)]
pub extern "C" fn pg_finfo_match_profiles_wrapper() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `killboard.match_profiles(killmail_id bigint) RETURNS SETOF bigint`:
/// profiles (visible to the caller) matching a stored killmail; empty when
/// the killmail does not exist.
///
/// # Safety
/// Called by the function manager with the declared (STRICT) arguments.
#[doc(hidden)]
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn match_profiles_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let rsinfo = unsafe { materialize_allowed(fcinfo) };
    let killmail_id = unsafe { pgrx::pg_getarg::<i64>(fcinfo, 0) }.unwrap_or_default();
    ensure_fresh();
    let vis = Visibility::current();
    let out = load_view(killmail_id)
        .map(|km| match_view(&km, Some(&vis)))
        .unwrap_or_default();
    unsafe { return_ids(rsinfo, &out) }
}

#[doc(hidden)]
#[unsafe(no_mangle)]
pub extern "C" fn pg_finfo_match_profiles_jsonb_wrapper() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `killboard.match_profiles(km jsonb) RETURNS SETOF bigint`: profiles
/// (visible to the caller) matching a killmail document that is not stored:
/// ESI, zKillboard API, R2Z2 or RedisQ shape; value and flags from zkb.
///
/// # Safety
/// Called by the function manager with the declared (STRICT) arguments.
#[doc(hidden)]
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn match_profiles_jsonb_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let rsinfo = unsafe { materialize_allowed(fcinfo) };
    let Some(km) = (unsafe { pgrx::pg_getarg::<crate::json::Json>(fcinfo, 0) }) else {
        return unsafe { return_ids(rsinfo, &[]) };
    };
    ensure_fresh();
    let vis = Visibility::current();
    let view = view_of_json(&km.0);
    let out = match_view(&view, Some(&vis));
    unsafe { return_ids(rsinfo, &out) }
}

/// All profiles matching a stored killmail, for the deferred ingest trigger;
/// empty when killboard.match_on_ingest is off or when ingest() matched the
/// killmail itself in this transaction.
#[pg_extern(volatile, strict, parallel_unsafe)]
pub fn _match_for_ingest(killmail_id: i64) -> Vec<i64> {
    if !crate::gucs::match_on_ingest() || ingested(killmail_id) {
        return Vec::new();
    }
    ensure_fresh();
    load_view(killmail_id)
        .map(|km| match_view(&km, None))
        .unwrap_or_default()
}

// -----------------------------------------------------------------------------
// Matching in ingest
// -----------------------------------------------------------------------------
// ingest() has each new killmail in memory: it matches it there and writes the
// matches of the whole call in one statement, instead of the deferred trigger
// reading every killmail back through SQL and inserting its matches row by
// row at commit. The trigger stays for plain INSERT/UPDATE/COPY; it skips the
// killmails listed here. A later write in the same transaction that could
// change a listed killmail's matches (UPDATE or DELETE of it, a write to its
// attackers, TRUNCATE) takes it off the list, so the trigger matches it again
// at commit as it always did.

/// Killmails matched by ingest in this transaction, by subtransaction nest
/// level: a rolled-back savepoint takes its killmails back (their rows and
/// trigger events are gone, and the ids may be written again).
#[derive(Default)]
struct Ingested {
    levels: Vec<(i32, Vec<i64>)>,
    ids: FxHashSet<i64>,
}

thread_local! {
    static INGESTED: RefCell<Ingested> = RefCell::new(Ingested::default());
    static INSERT_MATCHES: KeptPlan = const {
        KeptPlan::new(
            include_str!("../../sql/queries/insert_matches.sql"),
            &[pg_sys::INT8ARRAYOID, pg_sys::INT8ARRAYOID],
        )
    };
    static INSERT_NEW_MATCHES: KeptPlan = const {
        KeptPlan::new(
            include_str!("../../sql/queries/insert_matches_new.sql"),
            &[pg_sys::INT8ARRAYOID, pg_sys::INT8ARRAYOID],
        )
    };
    static NOTIFY_MATCHES: KeptPlan = const {
        KeptPlan::new(
            include_str!("../../sql/queries/notify_matches.sql"),
            &[pg_sys::TEXTARRAYOID],
        )
    };
    static HAS_MATCHES: KeptPlan = const {
        KeptPlan::new(
            include_str!("../../sql/queries/ingest_has_matches.sql"),
            &[pg_sys::INT8ARRAYOID],
        )
    };
}

fn nest_level() -> i32 {
    // SAFETY: plain backend call.
    unsafe { pg_sys::GetCurrentTransactionNestLevel() }
}

fn ingested(killmail_id: i64) -> bool {
    INGESTED.with(|i| i.borrow().ids.contains(&killmail_id))
}

/// Whether ingest matched any killmail in this transaction (a cheap test for
/// the triggers that would otherwise read their transition tables).
pub fn any_ingested() -> bool {
    INGESTED.with(|i| !i.borrow().ids.is_empty())
}

/// These killmails changed after ingest matched them: the deferred trigger
/// matches them again at commit.
pub fn forget_ingested(ids: &[i64]) {
    INGESTED.with(|i| {
        let mut i = i.borrow_mut();
        for id in ids {
            i.ids.remove(id);
        }
    })
}

/// TRUNCATE: nothing ingest matched is left.
pub fn forget_all_ingested() {
    INGESTED.with(|i| *i.borrow_mut() = Ingested::default())
}

#[pg_guard]
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
        forget_all_ingested();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    let level = nest_level();
    INGESTED.with(|i| {
        let mut i = i.borrow_mut();
        match event {
            SUBXACT_EVENT_ABORT_SUB => {
                while i.levels.last().is_some_and(|(l, _)| *l >= level) {
                    let (_, gone) = i.levels.pop().unwrap_or_default();
                    for id in gone {
                        i.ids.remove(&id);
                    }
                }
            }
            SUBXACT_EVENT_COMMIT_SUB => {
                let mut moved = Vec::new();
                while i.levels.last().is_some_and(|(l, _)| *l >= level) {
                    moved.extend(i.levels.pop().map(|(_, v)| v).unwrap_or_default());
                }
                if !moved.is_empty() {
                    match i.levels.last_mut() {
                        Some((l, v)) if *l == level - 1 => v.extend(moved),
                        _ => i.levels.push((level - 1, moved)),
                    }
                }
            }
            _ => {}
        }
    })
}

/// Register the transaction callbacks; called once from `_PG_init`.
pub fn init() {
    // SAFETY: plain registration of static callbacks.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
    stored::init();
}

/// A killmail just stored by ingest, as `load_view` would read it back:
/// `km` before the SDE is consulted, and the stored location for a system the
/// SDE does not know.
pub struct Fresh {
    pub km: profiles::JsonKillmail,
    pub location: (Option<i32>, Option<i32>, Option<f64>),
}

/// Match killmails ingest has just stored, record the matches in one
/// statement and NOTIFY them as the trigger does; the deferred trigger then
/// skips these killmails. Does nothing when killboard.match_on_ingest is off
/// (the trigger decides at commit, as for any write).
pub fn match_ingested(fresh: Vec<Fresh>) {
    if fresh.is_empty() || !crate::gucs::match_on_ingest() {
        return;
    }
    ensure_fresh();
    let mut profile_ids: Vec<i64> = Vec::new();
    let mut killmail_ids: Vec<i64> = Vec::new();
    let mut done = Vec::with_capacity(fresh.len());
    for Fresh { km, location } in fresh {
        let id = km.view.killmail_id;
        let mut view = km.resolve(&mut CachedSde);
        if view.region_id.is_none() {
            (view.constellation_id, view.region_id, view.security) = location;
        }
        for p in match_view(&view, None) {
            profile_ids.push(p);
            killmail_ids.push(id);
        }
        done.push(id);
    }
    if !profile_ids.is_empty() {
        // The owner's rights, as the SECURITY DEFINER trigger has them: writers
        // cannot insert into profile_matches themselves.
        // The killmails are new and their rows locked by this transaction, so
        // nobody else can add match rows for them until it ends.
        cache::as_owner(|| {
            Spi::connect_mut(|c| {
                // Index probes whatever the table looked like when the plan
                // was made: a generic plan from a near-empty table would scan
                // all of profile_matches on every call.
                let has = crate::stats::plans::with_index_plans(|| {
                    HAS_MATCHES
                        .with(|p| p.select(c, Some(1), &[done.clone().into()]))?
                        .first()
                        .get::<bool>(1)
                })?
                .unwrap_or(true);
                if has {
                    return INSERT_MATCHES
                        .with(|p| p.update(c, &[profile_ids.into(), killmail_ids.into()]))
                        .map(|_| ());
                }
                let payloads = notify_payloads(&killmail_ids, &profile_ids);
                INSERT_NEW_MATCHES
                    .with(|p| p.update(c, &[profile_ids.into(), killmail_ids.into()]))?;
                NOTIFY_MATCHES
                    .with(|p| p.update(c, &[payloads.into()]))
                    .map(|_| ())
            })
        })
        .or_raise();
    }
    let level = nest_level();
    INGESTED.with(|i| {
        let mut i = i.borrow_mut();
        i.ids.extend(done.iter().copied());
        match i.levels.last_mut() {
            Some((l, v)) if *l == level => v.extend(done),
            _ => i.levels.push((level, done)),
        }
    });
}

/// Profile ids per notification, as _match_on_write sends them (NOTIFY
/// payloads are capped at 8000 bytes).
const NOTIFY_CHUNK: usize = 500;

/// The NOTIFY payloads for new matches (`killmail_ids` grouped, each group's
/// `profile_ids` ascending), byte for byte what the trigger's
/// `json_build_object('killmail_id', …, 'profile_ids', …)::text` gives.
fn notify_payloads(killmail_ids: &[i64], profile_ids: &[i64]) -> Vec<String> {
    use std::fmt::Write;
    let mut out = Vec::new();
    let mut start = 0;
    while start < killmail_ids.len() {
        let k = killmail_ids[start];
        let end = start
            + killmail_ids[start..]
                .iter()
                .take_while(|&&x| x == k)
                .count();
        for chunk in profile_ids[start..end].chunks(NOTIFY_CHUNK) {
            let mut p = format!("{{\"killmail_id\" : {k}, \"profile_ids\" : [");
            for (n, id) in chunk.iter().enumerate() {
                if n > 0 {
                    p.push(',');
                }
                let _ = write!(p, "{id}");
            }
            p.push_str("]}");
            out.push(p);
        }
        start = end;
    }
    out
}

/// Module tags of a killmail document's fitted modules (what `module_tags`
/// filters see), for checking a filter by hand.
#[pg_extern(stable, strict, parallel_restricted)]
fn killmail_module_tags(km: crate::json::Json) -> Vec<String> {
    ensure_fresh();
    let view = view_of_json(&km.0);
    killboard_core::sde::ModuleTag::ALL
        .iter()
        .filter(|t| view.module_tags & t.bit() != 0)
        .map(|t| t.name().to_string())
        .collect()
}

pub fn cache_rows() -> Vec<cache::StatsRow> {
    STATE.with(|s| {
        let s = s.borrow();
        let mut compiled_counters = s.compiled.counters;
        compiled_counters.rebuilds = s.index_counters.rebuilds;
        compiled_counters.last_rebuild_ms = s.index_counters.last_rebuild_ms;
        let entries = s.dense.as_ref().map_or(s.compiled.len(), |d| d.len());
        vec![
            cache::stats_row(
                "profiles",
                &compiled_counters,
                entries,
                Some(s.compiled.capacity()),
            ),
            cache::stats_row("profile_index", &s.index_counters, s.index.profiles(), None),
        ]
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Fixture SDE shipped with the repository.
    fn load_fixture_sde() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sde");
        Spi::run_with_args("SELECT count(*) FROM killboard.load_sde($1)", &[dir.into()]).unwrap();
    }

    fn matches(km: i64) -> Vec<i64> {
        Spi::get_one_with_args::<Vec<i64>>(
            "SELECT coalesce(array_agg(p ORDER BY p), '{}') FROM killboard.match_profiles($1) p",
            &[km.into()],
        )
        .unwrap()
        .unwrap_or_default()
    }

    fn add_profile(name: &str, filter: &str) -> i64 {
        Spi::get_one_with_args::<i64>(
            "INSERT INTO killboard.profiles (name, filter) VALUES ($1, $2::jsonb) RETURNING profile_id",
            &[name.into(), filter.into()],
        )
        .unwrap()
        .unwrap()
    }

    /// A killmail by plain SQL: Jita (highsec), victim in a Rifter with a
    /// 200mm AutoCannon II fitted and its ammo loaded, two attackers.
    fn insert_killmail(id: i64, system: i32, value: f64) {
        Spi::run_with_args(
            "INSERT INTO killboard.killmails (killmail_id, killmail_time, solar_system_id, victim_character_id,
                 victim_corporation_id, victim_ship_type_id, total_value, value_source)
             VALUES ($1, now(), $2, 90000001, 98000001, 587, $3, 'sql')",
            &[id.into(), system.into(), value.into()],
        )
        .unwrap();
        Spi::run_with_args(
            "INSERT INTO killboard.attackers (killmail_id, attacker_index, character_id, corporation_id, ship_type_id, final_blow)
             VALUES ($1, 0, 90000002, 98000002, 11987, true), ($1, 1, 90000003, 98000002, 587, false)",
            &[id.into()],
        )
        .unwrap();
        Spi::run_with_args(
            "INSERT INTO killboard.items (killmail_id, item_index, item_type_id, flag, quantity_destroyed)
             VALUES ($1, 0, 2881, 27, 1), ($1, 1, 21894, 27, 100), ($1, 2, 2881, 5, 1)",
            &[id.into()],
        )
        .unwrap();
    }

    /// The straight read of a stored killmail gives the matcher exactly what
    /// the SQL read gives (match_killmail.sql), including the odd cases: an
    /// unknown system's stored security, no value, no attacker rows, nested
    /// items, a missing killmail; and SQL reads when a table has row security.
    #[pg_test]
    fn stored_killmail_reads_straight_as_sql_reads_it() {
        insert_killmail(8101, 30000142, 1.5e9);
        Spi::run(
            "INSERT INTO killboard.killmails (killmail_id, killmail_time, solar_system_id, security,
                 constellation_id, region_id, victim_character_id, victim_corporation_id,
                 victim_alliance_id, victim_faction_id, victim_ship_type_id, victim_ship_group_id,
                 total_value, npc, solo, awox, attacker_count, value_source)
             VALUES (8102, now(), 31999999, 0.0123456, 21999999, 11999999, 90000009, 98000009,
                     99000009, 500001, 670, 29, NULL, true, NULL, false, 7, 'sql'),
                    (8103, now(), 30000142, -0.9459991, NULL, NULL, NULL, 98000010,
                     NULL, NULL, 587, NULL, 12345678.91, NULL, NULL, NULL, NULL, 'sql');
             INSERT INTO killboard.attackers (killmail_id, attacker_index, faction_id, ship_type_id, final_blow)
             VALUES (8103, 0, 500010, NULL, false), (8103, 1, NULL, 11987, true);
             INSERT INTO killboard.items (killmail_id, item_index, parent_index, item_type_id, flag, quantity_destroyed)
             VALUES (8103, 0, NULL, 3467, 5, 1), (8103, 1, 0, 2881, 5, 1), (8103, 2, NULL, 2881, 27, 1);",
        )
        .unwrap();
        let sorted = |l: Option<super::stored::Loaded>| {
            l.map(|mut l| {
                l.1.sort_by_key(|i| (i.type_id, i.flag, i.top_level));
                l
            })
        };
        for id in [8101, 8102, 8103, 8199] {
            let direct = super::stored::load(id)
                .unwrap()
                .expect("plain tables are read straight");
            let sql = super::load_sql(id);
            assert_eq!(direct.is_some(), id != 8199, "killmail {id} found");
            let (d, q) = (sorted(direct), sorted(sql));
            assert_eq!(format!("{d:?}"), format!("{q:?}"), "killmail {id}");
        }
        let (km, _, (con, reg, sec), flags, fb) =
            super::stored::load(8102).unwrap().unwrap().unwrap();
        assert_eq!(
            (con, reg, sec),
            (Some(21999999), Some(11999999), Some(0.012346))
        );
        assert_eq!(
            (km.attacker_count, km.total_value, flags.solo),
            (7, 0.0, None)
        );
        assert!(fb.is_empty());
        let (km, items, ..) = super::stored::load(8103).unwrap().unwrap().unwrap();
        assert_eq!(km.total_value, 12345678.91);
        assert_eq!(items.iter().filter(|i| i.top_level).count(), 2);
        Spi::run("SET CONSTRAINTS ALL IMMEDIATE").unwrap();
        Spi::run("ALTER TABLE killboard.attackers ENABLE ROW LEVEL SECURITY").unwrap();
        assert!(
            super::stored::load(8101).unwrap().is_none(),
            "row security: SQL reads"
        );
        assert!(super::load_view(8101).is_some());
    }

    #[pg_test]
    fn profiles_match_stored_killmails_through_the_index() {
        load_fixture_sde();
        insert_killmail(9_000_001, 30000142, 150_000_000.0);
        let jita = add_profile("jita", r#"{"solar_system_ids": [30000142]}"#);
        let amarr = add_profile("amarr", r#"{"solar_system_ids": [30002187]}"#);
        let hs = add_profile(
            "highsec rich",
            r#"{"security_band": ["highsec"], "min_value": 100000000}"#,
        );
        let t2proj = add_profile(
            "t2 projectile",
            r#"{"module_tags": ["T2"], "all": [{"module_tags": ["Projectile"]}]}"#,
        );
        let laser = add_profile("laser", r#"{"module_tags": ["Laser"]}"#);
        let frig = add_profile(
            "frigate losses",
            r#"{"victim_ship_group_ids": [25], "not": {"npc": true}}"#,
        );
        let near = add_profile(
            "near jita",
            r#"{"within_jumps": {"system_id": 30000144, "jumps": 1}}"#,
        );
        let far = add_profile(
            "far",
            r#"{"within_jumps": {"system_id": 30002187, "jumps": 1}}"#,
        );
        let att = add_profile(
            "attacker corp",
            r#"{"attacker_corporation_ids": [98000002], "min_attackers": 2}"#,
        );
        let got = matches(9_000_001);
        assert_eq!(
            got,
            vec![jita, hs, t2proj, frig, near, att],
            "amarr {amarr}, laser {laser}, far {far}"
        );
        let tags = Spi::get_one::<Vec<String>>(
            r#"SELECT killboard.killmail_module_tags('{"killmail_id":1,"solar_system_id":30000142,"victim":{"ship_type_id":587,"items":[{"item_type_id":2881,"flag":27},{"item_type_id":21894,"flag":27}]},"attackers":[{}]}')"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(tags, vec!["T2".to_string(), "Projectile".to_string()]);
    }

    #[pg_test]
    fn match_profiles_jsonb_reads_esi_and_zkb() {
        load_fixture_sde();
        let rich = add_profile("rich solo", r#"{"min_value": 1000000, "solo": true}"#);
        add_profile("npc", r#"{"npc": true}"#);
        let km = r#"{"killmail_id": 134265477, "esi": {"killmail_id": 134265477, "solar_system_id": 30000743,
            "victim": {"ship_type_id": 17478, "items": []}, "attackers": [{"character_id": 96424385}]},
            "zkb": {"totalValue": 86180108.73, "solo": true, "npc": false}}"#;
        let got = Spi::get_one_with_args::<Vec<i64>>(
            "SELECT coalesce(array_agg(p ORDER BY p), '{}') FROM killboard.match_profiles($1::jsonb) p",
            &[km.into()],
        )
        .unwrap()
        .unwrap();
        assert_eq!(got, vec![rich]);
    }

    /// Without zkb, match_profiles(jsonb) derives npc/solo/awox as ingest
    /// does; so does match_profiles(killmail_id) for NULL stored flags.
    #[pg_test]
    fn flags_missing_from_the_source_are_derived_like_ingest() {
        load_fixture_sde();
        let solo = add_profile("solo", r#"{"solo": true}"#);
        let npc = add_profile("npc", r#"{"npc": true}"#);
        let not_npc = add_profile("not npc", r#"{"npc": false}"#);
        let json_matches = |doc: &str| {
            Spi::get_one_with_args::<Vec<i64>>(
                "SELECT coalesce(array_agg(p ORDER BY p), '{}') FROM killboard.match_profiles($1::jsonb) p",
                &[doc.into()],
            )
            .unwrap()
            .unwrap_or_default()
        };
        let one_player = r#"{"killmail_id": 5, "solar_system_id": 30000142,
            "victim": {"ship_type_id": 587, "character_id": 90000001, "corporation_id": 98000001},
            "attackers": [{"character_id": 90000002, "corporation_id": 98000002, "ship_type_id": 587, "final_blow": true}]}"#;
        assert_eq!(json_matches(one_player), vec![solo, not_npc]);
        let rat = r#"{"killmail_id": 5, "solar_system_id": 30000142,
            "victim": {"ship_type_id": 587, "character_id": 90000001, "corporation_id": 98000001},
            "attackers": [{"corporation_id": 1000125, "ship_type_id": 587, "final_blow": true}]}"#;
        assert_eq!(json_matches(rat), vec![npc]);
        // Stored with NULL flags (plain SQL): two players, so neither solo nor npc.
        insert_killmail(9_000_007, 30000142, 5.0);
        assert_eq!(matches(9_000_007), vec![not_npc]);
    }

    #[pg_test]
    fn deleting_a_profile_or_killmail_deletes_its_matches() {
        load_fixture_sde();
        let p = add_profile("jita", r#"{"solar_system_ids": [30000142]}"#);
        insert_killmail(9_000_008, 30000142, 5.0);
        insert_killmail(9_000_009, 30000142, 5.0);
        Spi::run("SET CONSTRAINTS killboard.killmails_match_profiles IMMEDIATE").unwrap();
        let count = |sql: &str| Spi::get_one::<i64>(sql).unwrap().unwrap_or(-1);
        assert_eq!(count("SELECT count(*) FROM killboard.profile_matches"), 2);
        Spi::run("DELETE FROM killboard.killmails WHERE killmail_id = 9000008").unwrap();
        assert_eq!(
            count("SELECT count(*) FROM killboard.profile_matches WHERE killmail_id = 9000008"),
            0
        );
        Spi::run_with_args(
            "DELETE FROM killboard.profiles WHERE profile_id = $1",
            &[p.into()],
        )
        .unwrap();
        assert_eq!(count("SELECT count(*) FROM killboard.profile_matches"), 0);
    }

    #[pg_test(error = "$.any[1].within_jumps.jumps: must be between 0 and 100, got -1")]
    fn invalid_filter_is_rejected_with_its_path() {
        add_profile(
            "bad",
            r#"{"any": [{}, {"within_jumps": {"system_id": 30000142, "jumps": -1}}]}"#,
        );
    }

    #[pg_test]
    fn invalid_filters_raise_22023() {
        Spi::run(
            "CREATE FUNCTION pg_temp.catch(doc jsonb) RETURNS text LANGUAGE plpgsql AS $$
             DECLARE d text;
             BEGIN
                 INSERT INTO killboard.profiles (name, filter) VALUES ('bad', doc);
                 RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN
                 GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
                 RETURN SQLSTATE || ' ' || d;
             END $$",
        )
        .unwrap();
        for (doc, path) in [
            (r#"{"bogus": 1}"#, "$.bogus"),
            (r#"{"solo": "yes"}"#, "$.solo"),
            (r#"{"module_tags": ["Railgun"]}"#, "$.module_tags[0]"),
            (
                r#"{"not": {"within_jumps": {"system_id": 30000142, "jumps": -3}}}"#,
                "$.not.within_jumps.jumps",
            ),
            (r#"[1]"#, "$"),
        ] {
            let state =
                Spi::get_one_with_args::<String>("SELECT pg_temp.catch($1::jsonb)", &[doc.into()])
                    .unwrap()
                    .unwrap();
            assert_eq!(state, format!("22023 field: {path}"), "{doc}");
        }
    }

    #[pg_test]
    fn updated_profile_is_used_by_the_next_match() {
        load_fixture_sde();
        insert_killmail(9_000_002, 30000142, 5.0);
        let p = add_profile("moves", r#"{"solar_system_ids": [30002187]}"#);
        assert!(matches(9_000_002).is_empty());
        Spi::run_with_args(
            r#"UPDATE killboard.profiles SET filter = '{"solar_system_ids": [30000142]}' WHERE profile_id = $1"#,
            &[p.into()],
        )
        .unwrap();
        assert_eq!(matches(9_000_002), vec![p]);
        Spi::run_with_args(
            "UPDATE killboard.profiles SET enabled = false WHERE profile_id = $1",
            &[p.into()],
        )
        .unwrap();
        assert!(matches(9_000_002).is_empty());
    }

    #[pg_test]
    fn lru_bound_counts_evictions_and_stays_correct() {
        load_fixture_sde();
        insert_killmail(9_000_003, 30000142, 5.0);
        Spi::run("SET killboard.profile_cache_size = 10").unwrap();
        // 100 profiles; every third one matches Jita.
        Spi::run(
            r#"INSERT INTO killboard.profiles (name, filter)
               SELECT 'p' || g, CASE WHEN g % 3 = 0 THEN '{"solar_system_ids": [30000142]}'
                                     ELSE '{"solar_system_ids": [30002187]}' END::jsonb
               FROM generate_series(1, 100) g"#,
        )
        .unwrap();
        for _ in 0..3 {
            assert_eq!(matches(9_000_003).len(), 33);
        }
        let (entries, evictions) = Spi::get_two::<i64, i64>(
            "SELECT entries, evictions FROM killboard.cache_stats() WHERE cache = 'profiles'",
        )
        .unwrap();
        assert_eq!(entries, Some(10));
        assert!(evictions.unwrap_or(0) >= 90, "evictions {evictions:?}");
        let misses = Spi::get_one::<i64>(
            "SELECT misses FROM killboard.cache_stats() WHERE cache = 'profiles'",
        )
        .unwrap()
        .unwrap_or(0);
        assert!(misses > 0);
    }

    #[pg_test]
    fn match_on_ingest_records_matches_at_commit() {
        load_fixture_sde();
        let p = add_profile("jita", r#"{"solar_system_ids": [30000142]}"#);
        insert_killmail(9_000_004, 30000142, 5.0);
        // The constraint trigger is deferred; force it now (as COMMIT would).
        Spi::run("SET CONSTRAINTS killboard.killmails_match_profiles IMMEDIATE").unwrap();
        let got = Spi::get_one::<Vec<i64>>(
            "SELECT array_agg(profile_id) FROM killboard.profile_matches WHERE killmail_id = 9000004",
        )
        .unwrap()
        .unwrap_or_default();
        assert_eq!(got, vec![p]);
        Spi::run("SET killboard.match_on_ingest = off").unwrap();
        insert_killmail(9_000_005, 30000142, 5.0);
        Spi::run("SET CONSTRAINTS killboard.killmails_match_profiles IMMEDIATE").unwrap();
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM killboard.profile_matches WHERE killmail_id = 9000005",
        )
        .unwrap()
        .unwrap_or(-1);
        assert_eq!(n, 0);
    }

    #[pg_test]
    fn sde_reload_invalidates_static_caches() {
        load_fixture_sde();
        insert_killmail(9_000_006, 30000142, 5.0);
        let p = add_profile("highsec", r#"{"security_band": ["highsec"]}"#);
        assert_eq!(matches(9_000_006), vec![p]);
        // Jita becomes nullsec; the cached system must not survive the update.
        Spi::run(
            "UPDATE killboard.sde_systems SET security = -0.5 WHERE solar_system_id = 30000142",
        )
        .unwrap();
        assert!(matches(9_000_006).is_empty());
        let rebuilds = Spi::get_one::<i64>(
            "SELECT rebuilds FROM killboard.cache_stats() WHERE cache = 'sde_systems'",
        )
        .unwrap()
        .unwrap_or(0);
        assert!(rebuilds >= 2);
    }
}
