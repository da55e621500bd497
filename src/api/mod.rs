//! SQL-facing stats functions. Thin: parse arguments in core, read through
//! `stats`, shape rows here.

pub mod maintenance;

use killboard_core::stats::view::StatsView;
use killboard_core::stats::{record::FIELD_NAMES, EntityKey, EntityKind, Period, Record};
use killboard_core::{KillboardError, Result};
use pgrx::prelude::*;
use pgrx::AnyNumeric;

use crate::error::OrRaise;
use crate::stats::{self, spi_err};

/// Unix micros → timestamptz.
pub fn ts(micros: i64) -> Option<TimestampWithTimeZone> {
    TimestampWithTimeZone::try_from(micros - stats::PG_EPOCH_UNIX_MICROS).ok()
}

/// Cents → numeric ISK with two decimals.
pub fn isk(cents: i128) -> AnyNumeric {
    let sign = if cents < 0 { "-" } else { "" };
    let a = cents.unsigned_abs();
    AnyNumeric::try_from(format!("{sign}{}.{:02}", a / 100, a % 100).as_str()).unwrap_or_default()
}

type StatsRow = (
    name!(entity_id, i64),
    name!(entity_type, String),
    name!(period, String),
    name!(kills, i64),
    name!(losses, i64),
    name!(isk_destroyed, AnyNumeric),
    name!(isk_lost, AnyNumeric),
    name!(efficiency, f64),
    name!(isk_efficiency, f64),
    name!(kill_loss_ratio, f64),
    name!(solo_kills, i64),
    name!(solo_losses, i64),
    name!(npc_kills, i64),
    name!(npc_losses, i64),
    name!(last_kill_time, Option<TimestampWithTimeZone>),
    name!(last_loss_time, Option<TimestampWithTimeZone>),
    name!(final_blows, i64),
    name!(points, i64),
    name!(damage_dealt, i64),
    name!(damage_taken, i64),
    name!(avg_attackers, f64),
    name!(as_of, Option<TimestampWithTimeZone>),
);

fn row(key: EntityKey, period: Period, rec: &Record, as_of: i64) -> StatsRow {
    let v = StatsView::of(rec, period);
    (
        key.id,
        key.kind.name().to_string(),
        period.name().to_string(),
        v.kills,
        v.losses,
        isk(v.isk_destroyed_cents),
        isk(v.isk_lost_cents),
        v.efficiency,
        v.isk_efficiency,
        v.kill_loss_ratio,
        v.solo_kills,
        v.solo_losses,
        v.npc_kills,
        v.npc_losses,
        v.last_kill_time.and_then(ts),
        v.last_loss_time.and_then(ts),
        v.final_blows,
        v.points,
        v.damage_dealt,
        v.damage_taken,
        v.avg_attackers,
        ts(as_of),
    )
}

fn parse_args(entity_type: &str, period: &str) -> (EntityKind, Period) {
    (
        EntityKind::parse(entity_type).or_raise(),
        Period::parse(period).or_raise(),
    )
}

/// EVE ids are positive; a zero or negative one is a caller's mistake, not an unknown entity.
fn checked_id(field: &str, id: i64) -> Result<i64> {
    if id > 0 {
        Ok(id)
    } else {
        Err(KillboardError::at(
            killboard_core::SqlState::InvalidParameterValue,
            field.to_string(),
            format!("must be a positive id, got {id}"),
        ))
    }
}

/// Unix micros → a timestamptz datum.
fn ts_datum(micros: i64) -> pg_sys::Datum {
    pg_sys::Datum::from(micros - stats::PG_EPOCH_UNIX_MICROS)
}

/// Cents → numeric with two decimals, built from the integer (no text round trip).
fn isk_datum(cents: i128) -> pg_sys::Datum {
    match i64::try_from(cents) {
        // SAFETY: builds a palloc'd numeric in the current context.
        Ok(c) => pg_sys::Datum::from(unsafe { pg_sys::int64_div_fast_to_numeric(c, 2) }),
        Err(_) => isk(cents).into_datum().unwrap_or(pg_sys::Datum::from(0)),
    }
}

fn text_datum(s: &str) -> pg_sys::Datum {
    // SAFETY: copies the bytes into a palloc'd text.
    pg_sys::Datum::from(unsafe { pg_sys::cstring_to_text_with_len(s.as_ptr() as _, s.len() as _) })
}

/// The columns entity_stats_row fills (killboard.entity_stats_result).
const ENTITY_STATS_COLUMNS: usize = 22;
const ENTITY_STATS_TYPES: [pg_sys::Oid; ENTITY_STATS_COLUMNS] = {
    use pg_sys::{
        FLOAT8OID as F, INT8OID as I, NUMERICOID as N, TEXTOID as T, TIMESTAMPTZOID as Z,
    };
    [
        I, T, T, I, I, N, N, F, F, F, I, I, I, I, Z, Z, I, I, I, I, F, Z,
    ]
};

thread_local! {
    /// (function oid, its row type's shape identifier, its blessed result
    /// descriptor). Building it on every statement cost more than the lookup.
    /// The shape is checked when the descriptor is built, and built again
    /// when the row type changes (an ALTER TYPE in any session).
    static RESULT_DESC: std::cell::Cell<(pg_sys::Oid, u64, pg_sys::TupleDesc)> =
        const { std::cell::Cell::new((pg_sys::InvalidOid, 0, std::ptr::null_mut())) };
}

/// The type cache's identifier of a named row type's current shape (every
/// ALTER TYPE gives a new one); 0 for an anonymous record (0.1.0's OUT
/// parameters, which change only with the function).
unsafe fn row_type_shape(typid: pg_sys::Oid) -> u64 {
    if typid == pg_sys::RECORDOID {
        return 0;
    }
    let tce = pg_sys::lookup_type_cache(typid, pg_sys::TYPECACHE_TUPDESC as i32);
    if tce.is_null() || (*tce).tupDesc.is_null() {
        0
    } else {
        (*tce).tupDesc_identifier
    }
}

unsafe fn result_desc(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::TupleDesc {
    let oid = (*(*fcinfo).flinfo).fn_oid;
    let (cached, shape, desc) = RESULT_DESC.with(|c| c.get());
    if cached == oid && !desc.is_null() && row_type_shape((*desc).tdtypeid) == shape {
        return desc;
    }
    let mut desc: pg_sys::TupleDesc = std::ptr::null_mut();
    if pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut desc)
        != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE
    {
        crate::error::raise(KillboardError::internal("entity_stats must return a row"));
    }
    // Values are formed for exactly these columns and types: another shape
    // (an altered row type) is an error, never a tuple read the wrong way.
    let natts = (*desc).natts as usize;
    // A dropped attribute still takes a position: it never fits.
    let fits = (*desc)
        .attrs
        .as_slice(natts)
        .iter()
        .map(|a| (!a.is_dropped()).then_some(a.atttypid))
        .eq(ENTITY_STATS_TYPES.map(Some));
    if !fits {
        crate::error::raise(KillboardError::internal(format!(
            "entity_stats: its row type killboard.entity_stats_result is not the one this library fills \
             ({natts} columns; reinstall the extension)"
        )));
    }
    let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
    let desc = pg_sys::BlessTupleDesc(pg_sys::CreateTupleDescCopy(desc));
    pg_sys::MemoryContextSwitchTo(old);
    let shape = row_type_shape((*desc).tdtypeid);
    let replaced = RESULT_DESC.with(|c| c.replace((oid, shape, desc))).2;
    if !replaced.is_null() {
        // A record type keeps its own copy of a blessed descriptor.
        pg_sys::FreeTupleDesc(replaced);
    }
    desc
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_entity_stats_row() -> &'static pg_sys::Pg_finfo_record {
    const V1_API: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1_API
}

/// `killboard.entity_stats(id, type, period)`: stats of one entity for one
/// period, exactly one row (zeros when unknown). A plain function returning
/// one composite (sql/entity_stats.sql), not a set: a set-returning call paid
/// for a multi-call context and a result descriptor rebuilt on every call.
/// STRICT: the arguments are never NULL here.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn entity_stats_row(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let entity_id: i64 = pgrx::fcinfo::pg_getarg(fcinfo, 0).unwrap_or(0);
    let entity_type: &str = pgrx::fcinfo::pg_getarg(fcinfo, 1).unwrap_or("");
    let period: &str = pgrx::fcinfo::pg_getarg(fcinfo, 2).unwrap_or("");
    let (kind, period) = parse_args(entity_type, period);
    let key = EntityKey {
        id: checked_id("entity_id", entity_id).or_raise(),
        kind,
    };
    let (rec, as_of) = stats::direct::read(key).or_raise();
    let v = StatsView::of(&rec, period);
    let null = pg_sys::Datum::from(0);
    let opt_ts = |t: Option<i64>| t.map(ts_datum);
    let cols: [Option<pg_sys::Datum>; ENTITY_STATS_COLUMNS] = [
        Some(pg_sys::Datum::from(key.id)),
        Some(text_datum(key.kind.name())),
        Some(text_datum(period.name())),
        Some(pg_sys::Datum::from(v.kills)),
        Some(pg_sys::Datum::from(v.losses)),
        Some(isk_datum(v.isk_destroyed_cents)),
        Some(isk_datum(v.isk_lost_cents)),
        Some(pg_sys::Datum::from(v.efficiency.to_bits())),
        Some(pg_sys::Datum::from(v.isk_efficiency.to_bits())),
        Some(pg_sys::Datum::from(v.kill_loss_ratio.to_bits())),
        Some(pg_sys::Datum::from(v.solo_kills)),
        Some(pg_sys::Datum::from(v.solo_losses)),
        Some(pg_sys::Datum::from(v.npc_kills)),
        Some(pg_sys::Datum::from(v.npc_losses)),
        opt_ts(v.last_kill_time),
        opt_ts(v.last_loss_time),
        Some(pg_sys::Datum::from(v.final_blows)),
        Some(pg_sys::Datum::from(v.points)),
        Some(pg_sys::Datum::from(v.damage_dealt)),
        Some(pg_sys::Datum::from(v.damage_taken)),
        Some(pg_sys::Datum::from(v.avg_attackers.to_bits())),
        as_of.map(pg_sys::Datum::from),
    ];
    let mut values = [null; ENTITY_STATS_COLUMNS];
    let mut nulls = [false; ENTITY_STATS_COLUMNS];
    for (i, c) in cols.iter().enumerate() {
        match c {
            Some(d) => values[i] = *d,
            None => nulls[i] = true,
        }
    }
    let tuple =
        pg_sys::heap_form_tuple(result_desc(fcinfo), values.as_mut_ptr(), nulls.as_mut_ptr());
    pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_entity_stats_wrapper() -> &'static pg_sys::Pg_finfo_record {
    const V1_API: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1_API
}

/// The symbol 0.1.0's entity_stats (a set-returning function with the same
/// columns) names: its install script, run before an upgrade, must find it.
/// Returning one row without touching ReturnSetInfo is a valid set of one.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn entity_stats_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    entity_stats_row(fcinfo)
}

/// Stats of many entities of one kind: one row per id, in the order given.
// pgrx reads the result columns' names from this signature: no type alias.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, strict, parallel_unsafe)]
fn entity_stats_many(
    ids: Vec<Option<i64>>,
    entity_type: &str,
    period: default!(&str, "'all'"),
) -> TableIterator<
    'static,
    (
        name!(entity_id, i64),
        name!(entity_type, String),
        name!(period, String),
        name!(kills, i64),
        name!(losses, i64),
        name!(isk_destroyed, AnyNumeric),
        name!(isk_lost, AnyNumeric),
        name!(efficiency, f64),
        name!(isk_efficiency, f64),
        name!(kill_loss_ratio, f64),
        name!(solo_kills, i64),
        name!(solo_losses, i64),
        name!(npc_kills, i64),
        name!(npc_losses, i64),
        name!(last_kill_time, Option<TimestampWithTimeZone>),
        name!(last_loss_time, Option<TimestampWithTimeZone>),
        name!(final_blows, i64),
        name!(points, i64),
        name!(damage_dealt, i64),
        name!(damage_taken, i64),
        name!(avg_attackers, f64),
        name!(as_of, Option<TimestampWithTimeZone>),
    ),
> {
    let (kind, period) = parse_args(entity_type, period);
    let rows: Vec<StatsRow> = (|| -> Result<Vec<StatsRow>> {
        let mut out = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let id = id.ok_or_else(|| {
                KillboardError::at(
                    killboard_core::SqlState::NotNullViolation,
                    format!("ids[{}]", i + 1),
                    "NULL id",
                )
            })?;
            let key = EntityKey {
                id: checked_id(&format!("ids[{}]", i + 1), id)?,
                kind,
            };
            let (rec, as_of) = stats::direct::read(key)?;
            let as_of = as_of.map_or(0, |t| t + stats::PG_EPOCH_UNIX_MICROS);
            out.push(row(key, period, &rec, as_of));
        }
        Ok(out)
    })()
    .or_raise();
    TableIterator::new(rows)
}

/// Stats recomputed from the killmails (the seed's view fallback, and an oracle).
// pgrx reads the result columns' names from this signature: no type alias.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, strict, parallel_unsafe)]
fn entity_stats_live(
    entity_id: i64,
    entity_type: &str,
    period: default!(&str, "'all'"),
) -> TableIterator<
    'static,
    (
        name!(entity_id, i64),
        name!(entity_type, String),
        name!(period, String),
        name!(kills, i64),
        name!(losses, i64),
        name!(isk_destroyed, AnyNumeric),
        name!(isk_lost, AnyNumeric),
        name!(efficiency, f64),
        name!(isk_efficiency, f64),
        name!(kill_loss_ratio, f64),
        name!(solo_kills, i64),
        name!(solo_losses, i64),
        name!(npc_kills, i64),
        name!(npc_losses, i64),
        name!(last_kill_time, Option<TimestampWithTimeZone>),
        name!(last_loss_time, Option<TimestampWithTimeZone>),
        name!(final_blows, i64),
        name!(points, i64),
        name!(damage_dealt, i64),
        name!(damage_taken, i64),
        name!(avg_attackers, f64),
        name!(as_of, Option<TimestampWithTimeZone>),
    ),
> {
    let (kind, period) = parse_args(entity_type, period);
    let key = EntityKey {
        id: checked_id("entity_id", entity_id).or_raise(),
        kind,
    };
    let (rec, as_of) = Spi::connect(|c| -> Result<(Record, i64)> {
        let (as_of, mode) = stats::read_window_state(c)?;
        Ok((stats::live_record(c, key, as_of, mode)?, as_of))
    })
    .or_raise();
    TableIterator::once(row(key, period, &rec, as_of))
}

const METRICS: [&str; 4] = [
    "efficiency",
    "isk_efficiency",
    "kill_loss_ratio",
    "avg_attackers",
];

fn metric_value(v: &StatsView, metric: &str) -> f64 {
    match metric {
        "kills" => v.kills as f64,
        "losses" => v.losses as f64,
        "isk_destroyed" => v.isk_destroyed_cents as f64,
        "isk_lost" => v.isk_lost_cents as f64,
        "solo_kills" => v.solo_kills as f64,
        "solo_losses" => v.solo_losses as f64,
        "npc_kills" => v.npc_kills as f64,
        "npc_losses" => v.npc_losses as f64,
        "final_blows" => v.final_blows as f64,
        "points" => v.points as f64,
        "damage_dealt" => v.damage_dealt as f64,
        "damage_taken" => v.damage_taken as f64,
        "efficiency" => v.efficiency,
        "isk_efficiency" => v.isk_efficiency,
        "kill_loss_ratio" => v.kill_loss_ratio,
        _ => v.avg_attackers,
    }
}

/// The top entities of a kind by a metric for a period (ties by entity id).
// pgrx reads the result columns' names from this signature: no type alias.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, strict, parallel_unsafe)]
fn top_entities(
    entity_type: &str,
    period: default!(&str, "'all'"),
    metric: default!(&str, "'kills'"),
    limit: default!(i32, 10),
) -> TableIterator<
    'static,
    (
        name!(entity_id, i64),
        name!(entity_type, String),
        name!(period, String),
        name!(kills, i64),
        name!(losses, i64),
        name!(isk_destroyed, AnyNumeric),
        name!(isk_lost, AnyNumeric),
        name!(efficiency, f64),
        name!(isk_efficiency, f64),
        name!(kill_loss_ratio, f64),
        name!(solo_kills, i64),
        name!(solo_losses, i64),
        name!(npc_kills, i64),
        name!(npc_losses, i64),
        name!(last_kill_time, Option<TimestampWithTimeZone>),
        name!(last_loss_time, Option<TimestampWithTimeZone>),
        name!(final_blows, i64),
        name!(points, i64),
        name!(damage_dealt, i64),
        name!(damage_taken, i64),
        name!(avg_attackers, f64),
        name!(as_of, Option<TimestampWithTimeZone>),
    ),
> {
    let (kind, period) = parse_args(entity_type, period);
    let known = FIELD_NAMES
        .iter()
        .filter(|f| **f != "attackers_sum")
        .chain(METRICS.iter())
        .any(|m| *m == metric);
    if !known {
        crate::error::raise(KillboardError::invalid(
            "metric",
            format!("unknown metric \"{metric}\""),
        ));
    }
    if limit < 0 {
        crate::error::raise(KillboardError::invalid("limit", "must not be negative"));
    }
    crate::stats::flush_pending().or_raise();
    let rows = Spi::connect(|c| -> Result<Vec<StatsRow>> {
        let (as_of, _) = stats::read_window_state(c)?;
        let mut all: Vec<(EntityKey, Record)> = Vec::new();
        // One kind's keys are one range of the primary key.
        let sql = "SELECT entity_key, data FROM killboard.stats WHERE entity_key BETWEEN $1 AND $2
                   UNION ALL SELECT entity_key, data FROM killboard.stats_delta WHERE entity_key BETWEEN $1 AND $2";
        let (lo, hi) = EntityKey::kind_range(kind);
        let mut merged: std::collections::HashMap<i64, Record> = std::collections::HashMap::new();
        for r in c.select(sql, None, &[lo.into(), hi.into()]).map_err(spi_err)? {
            let key = r.get::<i64>(1).map_err(spi_err)?.unwrap_or(0);
            let data = r.get::<Vec<u8>>(2).map_err(spi_err)?.unwrap_or_default();
            merged.entry(key).or_default().add(&Record::decode(&data)?);
        }
        for (key, rec) in merged {
            if let Some(key) = EntityKey::from_stored(key) {
                all.push((key, rec));
            }
        }
        let mut scored: Vec<(f64, EntityKey, Record)> =
            all.into_iter().map(|(k, r)| (metric_value(&StatsView::of(&r, period), metric), k, r)).filter(|(s, _, _)| *s > 0.0).collect();
        scored.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal).then(a.1.id.cmp(&b.1.id)));
        let mut out = Vec::new();
        for (_, k, mut r) in scored.into_iter().take(limit as usize) {
            stats::settle_last_times(c, k, &mut r)?;
            out.push(row(k, period, &r, as_of));
        }
        Ok(out)
    })
    .or_raise();
    TableIterator::new(rows)
}

#[cfg(any(test, feature = "pg_test"))]
mod stats_tests;
