//! Maintenance: rebuild, window advance, verification, health and summary.
//! Each is a plain SQL function; schedule_maintenance() hands them to pg_cron.

use std::collections::HashMap;

use killboard_core::stats::credit::for_each_credit;
use killboard_core::stats::kinds::ALL_PERIODS;
use killboard_core::stats::record::{field, FIELD_NAMES, N_FIELDS};
use killboard_core::stats::{Counters, CreditMode, EntityKey, EntityKind, Period, Record};
use killboard_core::windows::{leaving_range, PeriodMask};
use killboard_core::{KillboardError, Result};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::AnyNumeric;
use rustc_hash::FxHashMap;

use crate::error::OrRaise;
use crate::gucs;
use crate::stats::{self, bulk, load, pending, plans, spi_err, WINDOW_LOCK};

fn lock_exclusive(c: &SpiClient, wait: bool) -> Result<bool> {
    if wait {
        c.select(
            "SELECT pg_catalog.pg_advisory_xact_lock($1, $2)",
            None,
            &[WINDOW_LOCK.0.into(), WINDOW_LOCK.1.into()],
        )
        .map_err(spi_err)?;
        return Ok(true);
    }
    let got = c
        .select(
            "SELECT pg_catalog.pg_try_advisory_xact_lock($1, $2)",
            None,
            &[WINDOW_LOCK.0.into(), WINDOW_LOCK.1.into()],
        )
        .map_err(spi_err)?
        .first()
        .get::<bool>(1)
        .map_err(spi_err)?
        .unwrap_or(false);
    Ok(got)
}

fn now_micros(c: &SpiClient) -> Result<i64> {
    c.select(
        "SELECT (extract(epoch FROM pg_catalog.now()) * 1000000)::int8",
        None,
        &[],
    )
    .map_err(spi_err)?
    .first()
    .get::<i64>(1)
    .map_err(spi_err)?
    .ok_or_else(|| KillboardError::internal("now() is NULL"))
}

/// How many passes the rebuild makes so its accumulators fit in
/// max(maintenance_work_mem, 1 GB), and how many accumulators a pass should
/// expect. Sized from the store being replaced (entities × 1.5 buckets) or
/// from the killmail count, whichever is larger.
fn rebuild_passes(c: &SpiClient) -> Result<(u64, usize)> {
    let row = c
        .select(
            "SELECT (SELECT setting::int8 * 1024 FROM pg_catalog.pg_settings WHERE name = 'maintenance_work_mem'),
                    greatest((SELECT reltuples FROM pg_catalog.pg_class WHERE oid = 'killboard.stats'::regclass), 0)::int8,
                    greatest((SELECT reltuples FROM pg_catalog.pg_class WHERE oid = 'killboard.killmails'::regclass), 0)::int8",
            Some(1),
            &[],
        )
        .map_err(spi_err)?
        .first();
    let budget = row
        .get::<i64>(1)
        .map_err(spi_err)?
        .unwrap_or(0)
        .max(1 << 30) as f64;
    let entities = row.get::<i64>(2).map_err(spi_err)?.unwrap_or(0);
    let killmails = row.get::<i64>(3).map_err(spi_err)?.unwrap_or(0);
    let per_entry = killboard_core::stats::rebuild::BYTES_PER_ENTRY as f64;
    let entries = if entities > 0 {
        entities as f64 * 1.5
    } else {
        killmails as f64 * 2.0
    };
    let parts = (entries * per_entry / budget).ceil().max(1.0);
    // Reserved up front (a growing map moves every entry each time it
    // doubles), never more than the budget: reserving is allocating.
    let expect = (entries.max(killmails as f64 * 2.0) / parts).min(budget / per_entry);
    Ok((parts as u64, expect as usize))
}

/// Recompute every entity's stats from the killmails into a fresh store, in
/// this transaction. Writers wait for the whole rebuild (window lock);
/// readers keep the old numbers while the killmails are read, and wait
/// while the new store is written (it replaces the old one like a TRUNCATE).
pub fn rebuild() -> Result<i64> {
    stats::require_top_level("rebuild_stats()")?;
    stats::direct::require_layout()?;
    pending::discard_all();
    let mode = CreditMode::parse(&gucs::kill_credit())?;
    Spi::connect_mut(|c| {
        lock_exclusive(c, true)?;
        stats::fresh_snapshots();
        let as_of = now_micros(c)?;
        let (parts, expect) = rebuild_passes(c)?;
        // Opened at the first record, after the first pass has read every
        // killmail: until then readers see the old store.
        let mut writer: Option<bulk::StoreWriter> = None;
        stats::compute_encoded(c, as_of, mode, parts, expect, |c, key, data| {
            let w = match &mut writer {
                Some(w) => w,
                None => writer.insert(bulk::StoreWriter::open(c)?),
            };
            w.put(key, data)
        })?;
        let writer = match writer {
            Some(w) => w,
            None => bulk::StoreWriter::open(c)?,
        };
        let started = std::time::Instant::now();
        let entities = writer.finish(c)?;
        pgrx::debug1!(
            "killboard: rebuild wrote {entities} entities; index built in {} ms",
            started.elapsed().as_millis()
        );
        c.update(
            "UPDATE killboard.stats_state SET as_of = to_timestamp($1::float8 / 1e6), kill_credit = $2, rebuilt_at = pg_catalog.clock_timestamp(), stale_since = NULL",
            None,
            &[as_of.into(), mode.name().into()],
        )
        .map_err(spi_err)?;
        pending::set_window_state(as_of, mode);
        Ok(entities)
    })
}

/// Recompute all stats from the killmails (set-based backfill); returns the number of entities.
#[pg_extern(volatile, parallel_unsafe)]
fn rebuild_stats() -> i64 {
    crate::error::require_writable("killboard.rebuild_stats()");
    rebuild().or_raise()
}

const TRY_LOCK_SQL: &str = "SELECT pg_catalog.pg_try_advisory_xact_lock($1, $2)";
const ADVANCE_STATE_SQL: &str = "SELECT (extract(epoch FROM as_of) * 1000000)::int8, kill_credit,
        (extract(epoch FROM pg_catalog.now()) * 1000000)::int8 FROM killboard.stats_state";
const FOLD_DELTAS_SQL: &str = "DELETE FROM killboard.stats_delta RETURNING entity_key, data";
const SET_AS_OF_SQL: &str = "UPDATE killboard.stats_state SET as_of = to_timestamp($1::float8 / 1e6), advanced_at = pg_catalog.clock_timestamp()";
const APPLY_UPDATE_SQL: &str = "UPDATE killboard.stats s SET data = u.data
  FROM unnest($1::tid[], $2::bytea[]) AS u(t, data) WHERE s.ctid = u.t";
const APPLY_DELETE_SQL: &str =
    "DELETE FROM killboard.stats s USING unnest($1::tid[]) AS u(t) WHERE s.ctid = u.t";
const APPLY_INSERT_SQL: &str = "INSERT INTO killboard.stats (entity_key, data)
SELECT u.key, u.data FROM unnest($1::int8[], $2::bytea[]) AS u(key, data)";

/// What an advance subtracts, per (entity, windows left as a PeriodMask):
/// the counters of the killmails that left. Compact on purpose: a Record
/// holds every period in i128 (1.3 kB), and a map of those for thousands of
/// entities cost more in page faults than the crediting itself. The entries
/// are sorted by key through a small index, so sorting never moves counters.
#[derive(Default)]
struct Aging {
    index: Vec<(EntityKey, u8, u32)>,
    counters: Vec<Counters>,
}

impl Aging {
    /// The entries of `key` (index sorted by key).
    fn of(&self, key: &EntityKey) -> &[(EntityKey, u8, u32)] {
        let a = self.index.partition_point(|(k, _, _)| k < key);
        let b = a + self.index[a..].partition_point(|(k, _, _)| k == key);
        &self.index[a..b]
    }

    /// Subtract `key`'s leaving killmails from the windows they left.
    fn apply(&self, key: &EntityKey, r: &mut Record) {
        for (_, mask, slot) in self.of(key) {
            let c = &self.counters[*slot as usize];
            for p in ALL_PERIODS {
                if PeriodMask(*mask).contains(p) {
                    r.periods[p.index()].add(c);
                }
            }
        }
    }
}

/// The appended deltas taken for folding, undecoded: (key, its bytes in
/// `bytes`) sorted by key. A map of decoded records (1.3 kB each) cost more
/// in rehashing and page faults than the fold itself; each delta is decoded
/// once, straight into the row it is merged into.
#[derive(Default)]
struct Folded {
    rows: Vec<(EntityKey, u32, u32)>,
    bytes: Vec<u8>,
}

impl Folded {
    fn push(&mut self, key: EntityKey, data: &[u8]) {
        let a = self.bytes.len() as u32;
        self.bytes.extend_from_slice(data);
        self.rows.push((key, a, self.bytes.len() as u32));
    }

    /// Sort by key (stable: the deltas of a key stay in the order taken;
    /// the index scan mostly delivers them sorted already).
    fn seal(&mut self) {
        if !self.rows.is_sorted_by_key(|r| r.0) {
            self.rows.sort_by_key(|r| r.0);
        }
    }

    fn keys(&self) -> impl Iterator<Item = EntityKey> + '_ {
        self.rows.iter().map(|r| r.0)
    }

    /// Add `key`'s deltas to `r`. Returns a record holding only their
    /// removed kill/loss times (what `needs_last_time_recompute` asks of a
    /// delta), NO_DELTA's counters otherwise.
    fn add_to(&self, key: &EntityKey, r: &mut Record) -> Result<Record> {
        let a = self.rows.partition_point(|(k, _, _)| k < key);
        let mut removed = NO_DELTA;
        // The removed times travel in `r` while adding: set them aside.
        let kept = (r.removed_kill.take(), r.removed_loss.take());
        for (_, s, e) in self.rows[a..].iter().take_while(|(k, _, _)| k == key) {
            r.add_encoded(&self.bytes[*s as usize..*e as usize])?;
        }
        removed.removed_kill = std::mem::replace(&mut r.removed_kill, kept.0);
        removed.removed_loss = std::mem::replace(&mut r.removed_loss, kept.1);
        Ok(removed)
    }
}

/// What the merge made of one stored row.
enum Outcome {
    /// Rewrite with buf[a..b].
    Update(usize, usize),
    Delete,
    /// The last kill/loss times need recomputing from the killmails (the
    /// record as merged so far).
    Recompute(Box<Record>),
}

const NO_DELTA: Record = Record {
    periods: [Counters([0; N_FIELDS]); 6],
    last_kill: None,
    last_loss: None,
    removed_kill: None,
    removed_loss: None,
};

/// Stored row `data` of `key` plus its aging and folded deltas (the same
/// merge rules as the flush); a rewrite's encoding is appended to `buf`.
fn merge_one(
    key: &EntityKey,
    data: &[u8],
    aging: &Aging,
    folded: &Folded,
    buf: &mut Vec<u8>,
) -> Result<Outcome> {
    // Records are 1.3 kB: merge into the decoded row in place, no copies.
    let mut merged = Record::decode(data)?;
    aging.apply(key, &mut merged);
    let removed = folded.add_to(key, &mut merged)?;
    merged.forget_removed();
    let recompute = removed.needs_last_time_recompute(&merged);
    Ok(if recompute {
        Outcome::Recompute(Box::new(merged))
    } else if merged.is_empty() {
        Outcome::Delete
    } else {
        let start = buf.len();
        merged.encode_into(buf);
        Outcome::Update(start, buf.len())
    })
}

type Merged = (
    Vec<(u32, pg_sys::ItemPointerData, Outcome)>,
    Vec<u8>,
    Vec<bool>,
);

/// Probe every key's stored row and merge it. Returns each found row's
/// outcome, the new encodings, and which keys were found.
fn merge_stored(keys: &[EntityKey], aging: &Aging, folded: &Folded) -> Result<Merged> {
    let mut found = vec![false; keys.len()];
    let mut buf: Vec<u8> = Vec::with_capacity(keys.len() * 160);
    let mut out = Vec::with_capacity(keys.len());
    stats::direct::stored_rows(keys, |i, tid, data| {
        found[i] = true;
        out.push((
            i as u32,
            tid,
            merge_one(&keys[i], data, aging, folded, &mut buf)?,
        ));
        Ok(())
    })?;
    Ok((out, buf, found))
}

/// Write `map` into the stats rows while holding the window lock exclusively.
/// No writer is between its first credit and its commit then (each holds the
/// lock shared until it commits), so no stats row is locked by anyone else:
/// one index probe per entity (no SPI) reads the row and its ctid, and the
/// rewrite goes straight to the heap at that ctid (stats::direct::Rewriter),
/// instead of the writers' flush (insert probe, SKIP LOCKED lock, update
/// probe), which has to assume company. Same merge rules as the flush.
fn apply_exclusive(
    c: &mut SpiClient,
    aging: Aging,
    folded: Folded,
    as_of: i64,
    mode: CreditMode,
) -> Result<()> {
    let mut keys: Vec<EntityKey> = aging
        .index
        .iter()
        .map(|(k, _, _)| *k)
        .chain(folded.keys())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok(());
    }
    let (merged, mut buf, found) = merge_stored(&keys, &aging, &folded)?;
    // Every new encoding in `buf`: (row, key, its bytes in buf).
    let mut upd: Vec<(pg_sys::ItemPointerData, EntityKey, usize, usize)> =
        Vec::with_capacity(merged.len());
    let mut del_tid = Vec::new();
    let mut recompute: Vec<(EntityKey, pg_sys::ItemPointerData, Record)> = Vec::new();
    for (i, tid, outcome) in merged {
        let key = keys[i as usize];
        match outcome {
            Outcome::Update(a, b) => upd.push((tid, key, a, b)),
            Outcome::Delete => del_tid.push(tid),
            Outcome::Recompute(r) => recompute.push((key, tid, *r)),
        }
    }
    // Last kill/loss times cannot be lowered by a delta: recompute them from
    // the killmails when the latest kill or loss went away.
    for (key, tid, mut merged) in recompute {
        stats::recompute_last_times(c, key, as_of, mode, &mut merged)?;
        if merged.is_empty() {
            del_tid.push(tid);
        } else {
            let start = buf.len();
            merged.encode_into(&mut buf);
            upd.push((tid, key, start, buf.len()));
        }
    }
    let mut ins: Vec<(EntityKey, Vec<u8>)> = Vec::new();
    // Entities with appended deltas and no stored row (their additions were
    // appended too): a last time whose kill or loss is gone again is
    // recomputed, and nothing left is no row.
    for (key, _) in keys.iter().zip(&found).filter(|(_, f)| !**f) {
        let mut r = Record::default();
        let removed = folded.add_to(key, &mut r)?;
        aging.apply(key, &mut r);
        r.forget_removed();
        // Its last times come from the killmails when a removal among its
        // deltas (or counts that no longer support them) says so.
        if removed.needs_last_time_recompute(&r) {
            stats::recompute_last_times(c, *key, as_of, mode, &mut r)?;
        }
        if !r.is_empty() {
            ins.push((*key, r.encode()));
        }
    }
    if let Some(mut w) = stats::direct::Rewriter::open()? {
        // In heap order: consecutive rewrites of one page find it in cache.
        upd.sort_unstable_by_key(|(t, _, _, _)| tid_order(t));
        for (tid, key, a, b) in &upd {
            w.update(*tid, *key, &buf[*a..*b])?;
        }
        for tid in del_tid {
            w.delete(tid)?;
        }
        for (key, data) in &ins {
            w.insert(*key, data)?;
        }
        w.finish()?;
        return Ok(());
    }
    if !upd.is_empty() {
        let (upd_tid, upd_data): (Vec<_>, Vec<Vec<u8>>) = upd
            .into_iter()
            .map(|(t, _, a, b)| (t, buf[a..b].to_vec()))
            .unzip();
        plans::update(c, APPLY_UPDATE_SQL, &[upd_tid.into(), upd_data.into()]).map_err(spi_err)?;
    }
    if !del_tid.is_empty() {
        plans::update(c, APPLY_DELETE_SQL, &[del_tid.into()]).map_err(spi_err)?;
    }
    if !ins.is_empty() {
        let ins_key = ins
            .iter()
            .map(|(k, _)| k.stored())
            .collect::<Result<Vec<i64>>>()?;
        let ins_data: Vec<Vec<u8>> = ins.into_iter().map(|(_, d)| d).collect();
        plans::update(c, APPLY_INSERT_SQL, &[ins_key.into(), ins_data.into()]).map_err(spi_err)?;
    }
    Ok(())
}

fn tid_order(t: &pg_sys::ItemPointerData) -> (u32, u16) {
    (
        ((t.ip_blkid.bi_hi as u32) << 16) | t.ip_blkid.bi_lo as u32,
        t.ip_posid,
    )
}

/// Move the rolling windows to now(): subtract exactly the killmails that
/// aged out of each window since the last advance, and fold appended deltas.
#[pg_extern(volatile, parallel_unsafe)]
fn advance_windows() -> Option<TimestampWithTimeZone> {
    crate::error::require_writable("killboard.advance_windows()");
    stats::require_top_level("advance_windows()").or_raise();
    stats::flush_pending().or_raise();
    let as_of = Spi::connect_mut(|c| -> Result<i64> {
        let got = plans::select_bool(c, TRY_LOCK_SQL, &[WINDOW_LOCK.0.into(), WINDOW_LOCK.1.into()])
            .map_err(spi_err)?;
        if !got {
            let (old, _) = stats::read_window_state(c)?;
            pgrx::notice!("killboard.advance_windows: a writer holds the window lock; windows stay at the last as_of");
            return Ok(old);
        }
        // Read under the lock, on a fresh snapshot: another advance may have just committed.
        stats::fresh_snapshots();
        let st = plans::select(c, ADVANCE_STATE_SQL, Some(1), &[]).map_err(spi_err)?.first();
        let old = st
            .get::<i64>(1)
            .map_err(spi_err)?
            .ok_or_else(|| KillboardError::internal("stats_state is empty"))?;
        let mode = CreditMode::parse(&st.get::<String>(2).map_err(spi_err)?.unwrap_or_default())?;
        let new = st
            .get::<i64>(3)
            .map_err(spi_err)?
            .ok_or_else(|| KillboardError::internal("now() is NULL"))?;
        let mut folded = Folded::default();
        let taken = stats::direct::take_deltas(|key, data| {
            // A kind this version does not know is dropped, as before.
            if let Some(key) = EntityKey::from_stored(key) {
                folded.push(key, data);
            }
            Ok(())
        })?;
        if !taken {
            for row in plans::update(c, FOLD_DELTAS_SQL, &[]).map_err(spi_err)? {
                let data = row.get::<&[u8]>(2).map_err(spi_err)?.unwrap_or_default();
                if let Some(key) = stats::row_key(&row)? {
                    folded.push(key, data);
                }
            }
        }
        folded.seal();
        let mut aging = Aging::default();
        if new > old {
            // All windows' leaving killmails in one read; each is credited
            // out of exactly the windows it left (ranges overlap after a long pause).
            let windows: Vec<Period> = killboard_core::stats::kinds::ALL_PERIODS
                .into_iter()
                .filter(|p| leaving_range(*p, old, new).is_some())
                .collect();
            if windows.len() > load::LEAVING_RANGES {
                return Err(KillboardError::internal("more rolling windows than leaving ranges"));
            }
            let mut ranges = [(0i64, 0i64); load::LEAVING_RANGES];
            for (slot, p) in ranges.iter_mut().zip(&windows) {
                *slot = leaving_range(*p, old, new).unwrap_or((0, 0));
            }
            let leaving = load::states_in_ranges(c, &ranges)?;
            // Sized up front (a few dozen entities a killmail): growing moves
            // every entry.
            let mut slots: FxHashMap<(EntityKey, u8), u32> = FxHashMap::default();
            slots.reserve(leaving.len() * 32);
            aging.counters.reserve(leaving.len() * 32);
            // The credit rule per entity, once per killmail and the windows
            // it left; never the all-time window, so last times stay put.
            for k in &leaving {
                let mut mask = PeriodMask::NONE;
                for (p, (lo, hi)) in windows.iter().zip(ranges) {
                    if k.time > lo && k.time <= hi {
                        mask.0 |= PeriodMask::only(*p).0;
                    }
                }
                if mask.is_empty() {
                    continue;
                }
                for_each_credit(k, mode, |key, counters, _| {
                    let next = aging.counters.len() as u32;
                    let slot = *slots.entry((key, mask.0)).or_insert(next);
                    if slot == next {
                        aging.counters.push(Counters::default());
                    }
                    aging.counters[slot as usize].add(&counters.scaled(-1));
                });
            }
            aging.index = slots.into_iter().map(|((k, m), s)| (k, m, s)).collect();
            aging.index.sort_unstable();
            plans::update(c, SET_AS_OF_SQL, &[new.into()]).map_err(spi_err)?;
        }
        let as_of = new.max(old);
        pending::set_window_state(as_of, mode);
        plans::with_index_plans(|| apply_exclusive(c, aging, folded, as_of, mode))?;
        Ok(as_of)
    })
    .or_raise();
    crate::api::ts(as_of)
}

type VerifyRow = (
    name!(entity_id, i64),
    name!(entity_type, String),
    name!(period, String),
    name!(metric, String),
    name!(stored, Option<AnyNumeric>),
    name!(expected, Option<AnyNumeric>),
);

fn stored_records(c: &SpiClient, sample: Option<i32>) -> Result<HashMap<EntityKey, Record>> {
    let mut out: HashMap<EntityKey, Record> = HashMap::new();
    let rows = match sample {
        None => c.select(
            "SELECT entity_key, data FROM killboard.stats UNION ALL SELECT entity_key, data FROM killboard.stats_delta",
            None,
            &[],
        ),
        Some(n) => c.select(
            "WITH s AS (SELECT entity_key FROM (
                            (SELECT entity_key FROM killboard.stats ORDER BY pg_catalog.random() LIMIT $1)
                            UNION
                            (SELECT entity_key FROM killboard.stats_delta ORDER BY pg_catalog.random() LIMIT $1)) k
                         ORDER BY pg_catalog.random() LIMIT $1)
             SELECT t.entity_key, t.data FROM killboard.stats t JOIN s USING (entity_key)
             UNION ALL SELECT d.entity_key, d.data FROM killboard.stats_delta d JOIN s USING (entity_key)",
            None,
            &[n.into()],
        ),
    }
    .map_err(spi_err)?;
    for row in rows {
        let data = row.get::<Vec<u8>>(2).map_err(spi_err)?.unwrap_or_default();
        let key = stats::row_key(&row)?.ok_or_else(|| {
            let key = row.get::<i64>(1).ok().flatten().unwrap_or(0);
            KillboardError::internal(format!("unknown entity kind in stats key {key}"))
        })?;
        out.entry(key).or_default().add(&Record::decode(&data)?);
    }
    for (key, rec) in out.iter_mut() {
        stats::settle_last_times(c, *key, rec)?;
    }
    Ok(out)
}

fn num(v: i128) -> Option<AnyNumeric> {
    AnyNumeric::try_from(v.to_string().as_str()).ok()
}

fn diff_rows(key: EntityKey, stored: &Record, expected: &Record, out: &mut Vec<VerifyRow>) {
    for p in killboard_core::stats::kinds::ALL_PERIODS {
        for (i, name) in FIELD_NAMES.iter().enumerate() {
            let (s, e) = (
                stored.periods[p.index()].0[i],
                expected.periods[p.index()].0[i],
            );
            if s != e {
                let (s, e) = if i == field::ISK_DESTROYED || i == field::ISK_LOST {
                    (Some(crate::api::isk(s)), Some(crate::api::isk(e)))
                } else {
                    (num(s), num(e))
                };
                out.push((
                    key.id,
                    key.kind.name().into(),
                    p.name().into(),
                    (*name).into(),
                    s,
                    e,
                ));
            }
        }
    }
    for (name, s, e) in [
        ("last_kill_time", stored.last_kill, expected.last_kill),
        ("last_loss_time", stored.last_loss, expected.last_loss),
    ] {
        if s != e {
            out.push((
                key.id,
                key.kind.name().into(),
                "all".into(),
                name.into(),
                s.and_then(|v| num(v as i128)),
                e.and_then(|v| num(v as i128)),
            ));
        }
    }
}

/// Rows (entity, period, metric) where the stored stats differ from a
/// recomputation from the killmails. Empty when exact. `sample` checks that
/// many random stored entities (drawn from the stats rows and the appended
/// deltas, so recently active entities weigh more); NULL checks every
/// entity, both ways.
// pgrx reads the result columns' names from this signature: no type alias.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
fn verify_stats(
    sample: default!(Option<i32>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(entity_id, i64),
        name!(entity_type, String),
        name!(period, String),
        name!(metric, String),
        name!(stored, Option<AnyNumeric>),
        name!(expected, Option<AnyNumeric>),
    ),
> {
    stats::require_top_level("verify_stats()").or_raise();
    stats::flush_pending().or_raise();
    let rows = Spi::connect_mut(|c| -> Result<Vec<VerifyRow>> {
        let (as_of, mode) = stats::read_window_state(c)?;
        let stored = stored_records(c, sample)?;
        let mut out = Vec::new();
        match sample {
            None => {
                let (expected, _) = stats::compute_all(c, as_of, mode)?;
                let mut keys: Vec<EntityKey> =
                    stored.keys().chain(expected.keys()).copied().collect();
                keys.sort();
                keys.dedup();
                let zero = Record::default();
                for k in keys {
                    let s = stored.get(&k).unwrap_or(&zero);
                    let e = expected.get(&k).unwrap_or(&zero);
                    diff_rows(k, s, e, &mut out);
                }
            }
            Some(_) => {
                let mut keys: Vec<&EntityKey> = stored.keys().collect();
                keys.sort();
                for k in keys {
                    let e = stats::live_record(c, *k, as_of, mode)?;
                    diff_rows(*k, &stored[k], &e, &mut out);
                }
            }
        }
        Ok(out)
    })
    .or_raise();
    TableIterator::new(rows)
}

type HealthRow = (name!(check, String), name!(ok, bool), name!(detail, String));

/// Consistency and freshness checks of the stats store.
#[pg_extern(volatile, parallel_unsafe)]
fn stats_health(
) -> TableIterator<'static, (name!(check, String), name!(ok, bool), name!(detail, String))> {
    stats::flush_pending().or_raise();
    let rows = Spi::connect(|c| -> Result<Vec<HealthRow>> {
        let mut out: Vec<HealthRow> = Vec::new();
        let stored = stored_records(c, None)?;
        let mut non_monotonic = Vec::new();
        let mut negative = Vec::new();
        let windows = [Period::All, Period::D90, Period::D30, Period::D14, Period::D7, Period::H24];
        for (k, r) in &stored {
            for w in windows.windows(2) {
                let (long, short) = (&r.periods[w[0].index()].0, &r.periods[w[1].index()].0);
                if (0..FIELD_NAMES.len()).any(|i| short[i].abs() > long[i].abs() && i != field::POINTS && i != field::DAMAGE_DEALT) {
                    non_monotonic.push(format!("{} {} ({} > {})", k.kind.name(), k.id, w[1].name(), w[0].name()));
                    break;
                }
            }
            if r.periods.iter().any(|p| p.0.iter().any(|v| *v < 0)) {
                negative.push(format!("{} {}", k.kind.name(), k.id));
            }
        }
        non_monotonic.sort();
        negative.sort();
        let list = |v: &Vec<String>| if v.is_empty() { "none".to_string() } else { format!("{}: {}", v.len(), v.iter().take(10).cloned().collect::<Vec<_>>().join(", ")) };
        out.push(("windows_nested".into(), non_monotonic.is_empty(), format!("shorter windows never exceed longer ones; violations {}", list(&non_monotonic))));
        out.push(("no_negative_counters".into(), negative.is_empty(), format!("entities with a negative counter: {}", list(&negative))));

        let st = c
            .select(
                "SELECT kill_credit, stale_since::text, (pg_catalog.now() - as_of)::text, extract(epoch FROM pg_catalog.now() - as_of)::float8,
                        (SELECT count(*) FROM killboard.stats_delta)::int8
                   FROM killboard.stats_state",
                Some(1),
                &[],
            )
            .map_err(spi_err)?
            .first();
        let mode = st.get::<String>(1).map_err(spi_err)?.unwrap_or_default();
        let stale = st.get::<String>(2).map_err(spi_err)?;
        let lag = st.get::<String>(3).map_err(spi_err)?.unwrap_or_default();
        let lag_s = st.get::<f64>(4).map_err(spi_err)?.unwrap_or(0.0);
        let deltas = st.get::<i64>(5).map_err(spi_err)?.unwrap_or(0);
        out.push((
            "maintained".into(),
            stale.is_none(),
            match &stale {
                None => "every write since the last rebuild kept the stats".into(),
                Some(t) => format!("writes with killboard.maintain_stats = off since {t}: run killboard.rebuild_stats()"),
            },
        ));
        let want = gucs::kill_credit();
        out.push((
            "kill_credit".into(),
            want == mode,
            format!("store built with {mode}; killboard.kill_credit = {want} (takes effect at rebuild_stats())"),
        ));
        out.push((
            "windows_advanced".into(),
            lag_s < 600.0,
            format!("as_of is {lag} behind now(); advance_windows() should run every minute"),
        ));
        out.push(("pending_deltas".into(), deltas < 100_000, format!("{deltas} appended deltas waiting to be folded by advance_windows()")));
        Ok(out)
    })
    .or_raise();
    TableIterator::new(rows)
}

type SummaryRow = (
    name!(entity_type, String),
    name!(entities, i64),
    name!(bytes, i64),
    name!(bytes_per_entity, f64),
);

/// Per kind: entities and bytes used (rows plus a share of the table's pages and index).
#[pg_extern(volatile, parallel_unsafe)]
fn stats_summary() -> TableIterator<
    'static,
    (
        name!(entity_type, String),
        name!(entities, i64),
        name!(bytes, i64),
        name!(bytes_per_entity, f64),
    ),
> {
    stats::flush_pending().or_raise();
    let rows = Spi::connect(|c| -> Result<Vec<SummaryRow>> {
        let total = c
            .select(
                "SELECT pg_catalog.pg_total_relation_size('killboard.stats'), (SELECT count(*) FROM killboard.stats)::int8",
                Some(1),
                &[],
            )
            .map_err(spi_err)?
            .first();
        let bytes = total.get::<i64>(1).map_err(spi_err)?.unwrap_or(0);
        let n = total.get::<i64>(2).map_err(spi_err)?.unwrap_or(0).max(1);
        let mut out = Vec::new();
        let mut all_entities = 0i64;
        for r in c
            .select(
                "SELECT (entity_key >> $1)::int2, count(*)::int8, sum(pg_catalog.pg_column_size(s.*))::int8 FROM killboard.stats s GROUP BY 1 ORDER BY 1",
                None,
                &[(killboard_core::stats::credit::ID_BITS as i32).into()],
            )
            .map_err(spi_err)?
        {
            let kind = r.get::<i16>(1).map_err(spi_err)?.and_then(EntityKind::from_code);
            let cnt = r.get::<i64>(2).map_err(spi_err)?.unwrap_or(0);
            all_entities += cnt;
            // Table and index pages are shared by kinds: split them by entity count.
            let share = (bytes as f64 * cnt as f64 / n as f64) as i64;
            out.push((kind.map(|k| k.name()).unwrap_or("unknown").to_string(), cnt, share, share as f64 / cnt.max(1) as f64));
        }
        out.push(("all".into(), all_entities, bytes, bytes as f64 / all_entities.max(1) as f64));
        Ok(out)
    })
    .or_raise();
    TableIterator::new(rows)
}
