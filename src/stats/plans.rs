//! Per-backend cache of prepared SPI plans for the fixed statements on the
//! write and read paths. Parsing and planning a statement on every call cost
//! more than executing it (a one-killmail ingest ran a dozen statements).
//! Plans are kept for the life of the backend; the plan cache revalidates
//! them after DDL, so a re-created extension is picked up by re-parsing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::PgOid;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiResult, SpiTupleTable};

thread_local! {
    // Keyed by the address of the &'static SQL text and whether it mutates.
    // Leaked on purpose: a fixed, small set of statements per backend, and
    // a 'static reference can be used while a nested call (a trigger fired by
    // the statement) adds plans of its own.
    static PLANS: RefCell<HashMap<(usize, bool), &'static OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

fn plan(
    client: &SpiClient,
    sql: &'static str,
    args: &[DatumWithOid],
    mutating: bool,
) -> SpiResult<&'static OwnedPreparedStatement> {
    let key = (sql.as_ptr() as usize, mutating);
    if let Some(p) = PLANS.with(|m| m.borrow().get(&key).copied()) {
        return Ok(p);
    }
    let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
    let prepared = if mutating {
        client.prepare_mut(sql, &types)?
    } else {
        client.prepare(sql, &types)?
    };
    let owned: &'static OwnedPreparedStatement = Box::leak(Box::new(prepared.keep()));
    PLANS.with(|m| m.borrow_mut().insert(key, owned));
    Ok(owned)
}

/// Run a read-only statement through its cached plan.
pub fn select<'c>(
    client: &SpiClient<'c>,
    sql: &'static str,
    limit: Option<i64>,
    args: &[DatumWithOid],
) -> SpiResult<SpiTupleTable<'c>> {
    let p = plan(client, sql, args, false)?;
    client.select(p, limit.map(|l| l as _), args)
}

/// The boolean in the first column of the first row of a read-only
/// statement (false when there is no row or it is NULL).
pub fn select_bool(
    client: &SpiClient,
    sql: &'static str,
    args: &[DatumWithOid],
) -> SpiResult<bool> {
    Ok(select(client, sql, Some(1), args)?
        .first()
        .get::<bool>(1)?
        .unwrap_or(false))
}

/// Run a writing statement (or a locking read) through its cached plan.
pub fn update<'c>(
    client: &mut SpiClient<'c>,
    sql: &'static str,
    args: &[DatumWithOid],
) -> SpiResult<SpiTupleTable<'c>> {
    let p = plan(client, sql, args, true)?;
    client.update(p, None, args)
}

/// Run `f` with sequential scans, hash and merge joins (and JIT) off, the way a
/// function's `SET` clause would (restored afterwards). The cached plans of
/// the write/read paths look up a handful of keys in tables that grow from
/// empty: a generic plan made while a table looked empty (fresh install,
/// after TRUNCATE) would scan it for every key from then on, and a large
/// flush would hash the whole stats table. Primary-key probes are right for
/// every statement run under this.
pub fn with_index_plans<R>(f: impl FnOnce() -> R) -> R {
    // jit off too: a disabled scan costs 1e10, which would push every
    // plan over jit_above_cost and compile it (hundreds of ms a call).
    with_gucs(
        &[
            (c"enable_seqscan", c"off"),
            (c"enable_hashjoin", c"off"),
            (c"enable_mergejoin", c"off"),
            (c"jit", c"off"),
        ],
        f,
    )
}

/// Run `f` with generic plans for the cached statements it runs. For a
/// key lookup such as `id = ANY($1)` the plan cache otherwise makes a custom
/// plan on every call (it sees the array), and planning cost more than the
/// lookup. Only for statements whose plan is an index probe whatever the
/// parameters (run them under `with_index_plans` too).
pub fn with_generic_plans<R>(f: impl FnOnce() -> R) -> R {
    with_gucs(&[(c"plan_cache_mode", c"force_generic_plan")], f)
}

/// The search_path every extension function pins (sql/security.sql), for
/// the SQL of the few that do not pin it because they rarely run any.
pub fn with_pinned_path<R>(f: impl FnOnce() -> R) -> R {
    with_gucs(&[(c"search_path", c"pg_catalog, killboard, pg_temp")], f)
}

/// Run `f` with the given settings, restored afterwards, the way a function's
/// `SET` clause would.
pub fn with_gucs<R>(gucs: &[(&CStr, &CStr)], f: impl FnOnce() -> R) -> R {
    use pgrx::pg_sys;
    // SAFETY: the GUC nest level is popped below; on error the transaction
    // (or subtransaction) abort unwinds it like any function SET clause.
    unsafe {
        let level = pg_sys::NewGUCNestLevel();
        for (name, value) in gucs {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        let r = f();
        pg_sys::AtEOXact_GUC(true, level);
        r
    }
}
