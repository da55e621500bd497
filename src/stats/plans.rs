//! Per-backend cache of prepared SPI plans for the fixed statements on the
//! write and read paths. Parsing and planning a statement on every call cost
//! more than executing it (a one-killmail ingest ran a dozen statements).
//! Plans are kept for the life of the backend; the plan cache revalidates
//! them after DDL, so a re-created extension is picked up by re-parsing.

use std::cell::RefCell;
use std::collections::HashMap;

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

fn plan(client: &SpiClient, sql: &'static str, args: &[DatumWithOid], mutating: bool) -> SpiResult<&'static OwnedPreparedStatement> {
    let key = (sql.as_ptr() as usize, mutating);
    if let Some(p) = PLANS.with(|m| m.borrow().get(&key).copied()) {
        return Ok(p);
    }
    let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
    let prepared = if mutating { client.prepare_mut(sql, &types)? } else { client.prepare(sql, &types)? };
    let owned: &'static OwnedPreparedStatement = Box::leak(Box::new(prepared.keep()));
    PLANS.with(|m| m.borrow_mut().insert(key, owned));
    Ok(owned)
}

/// Run a read-only statement through its cached plan.
pub fn select<'c>(client: &SpiClient<'c>, sql: &'static str, limit: Option<i64>, args: &[DatumWithOid]) -> SpiResult<SpiTupleTable<'c>> {
    let p = plan(client, sql, args, false)?;
    client.select(p, limit.map(|l| l as _), args)
}

/// Run a writing statement (or a locking read) through its cached plan.
pub fn update<'c>(client: &mut SpiClient<'c>, sql: &'static str, args: &[DatumWithOid]) -> SpiResult<SpiTupleTable<'c>> {
    let p = plan(client, sql, args, true)?;
    client.update(p, None, args)
}

thread_local! {
    static TEXT_PLANS: RefCell<HashMap<String, &'static OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

/// Like `select`, for statements assembled from fixed fragments at run time
/// (a handful of distinct texts per backend). Never for statements naming a
/// trigger's transition tables: those exist only during that trigger call.
pub fn select_text<'c>(client: &SpiClient<'c>, sql: &str, args: &[DatumWithOid]) -> SpiResult<SpiTupleTable<'c>> {
    let cached = TEXT_PLANS.with(|m| m.borrow().get(sql).copied());
    let p = match cached {
        Some(p) => p,
        None => {
            let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
            let owned: &'static OwnedPreparedStatement = Box::leak(Box::new(client.prepare(sql, &types)?.keep()));
            TEXT_PLANS.with(|m| m.borrow_mut().insert(sql.to_string(), owned));
            owned
        }
    };
    client.select(p, None, args)
}
