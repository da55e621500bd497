//! Whole-store I/O for rebuild_stats() and verify_stats(): every killmail
//! read once, in killmail_id order, and a fresh store written once.
//!
//! Reading: two cursors, killmails and attackers, both in killmail_id order
//! (their primary keys), merged here, so each killmail is assembled without a
//! per-page lookup of ids. SDE columns (constellation, region, ship group and
//! category) are looked up in maps loaded once instead of joined per row:
//! the joins cost more than the scans, and a hash join would lose the order.
//! Rows are read through raw SPI in batches that are freed as soon as they
//! are consumed, so memory stays flat however many killmails there are.
//!
//! Writing: the store is truncated (a new, empty relfilenode in this
//! transaction) and rows are inserted straight into the heap, frozen, then
//! the primary key is built once by REINDEX. Every row is written exactly
//! once into dense pages and the index is built sorted, so a rebuilt store
//! takes what a compacted one does. Rolling back (or a crash) restores the
//! old relfilenode untouched, as for any TRUNCATE.

use std::ffi::CStr;

use killboard_core::model::{AttackerState, KillState, Party, StoredFlags};
use killboard_core::stats::EntityKey;
use killboard_core::{KillboardError, Result};
use pgrx::pg_sys;
use pgrx::spi::SpiClient;
use pgrx::PgMemoryContexts;
use rustc_hash::FxHashMap;

use super::spi_err;

const FETCH: std::ffi::c_long = 5_000;

const KILLMAILS_SCAN: &CStr = c"SELECT k.killmail_id, k.killmail_time, k.solar_system_id::int8,
       k.constellation_id::int8, k.region_id::int8,
       (coalesce(k.total_value, 0) * 100)::int8, coalesce(k.points, 0)::int8,
       k.npc, k.solo, k.awox,
       k.victim_character_id, k.victim_corporation_id, k.victim_alliance_id, k.victim_faction_id,
       k.victim_ship_type_id::int8, k.victim_ship_group_id::int8, k.victim_damage_taken
  FROM killboard.killmails k
 ORDER BY k.killmail_id";

const ATTACKERS_SCAN: &CStr =
    c"SELECT a.killmail_id, a.character_id, a.corporation_id, a.alliance_id, a.faction_id,
       a.ship_type_id::int8, a.ship_group_id::int8, a.damage_done, a.final_blow
  FROM killboard.attackers a
 ORDER BY a.killmail_id, a.attacker_index";

/// The SDE columns the stats rules fall back to (as load_killmails.sql joins them).
pub struct SdeMaps {
    systems: FxHashMap<i64, (i64, i64)>,
    type_group: FxHashMap<i64, i64>,
    group_category: FxHashMap<i64, i64>,
}

impl SdeMaps {
    pub fn load(client: &SpiClient) -> Result<SdeMaps> {
        let mut m = SdeMaps {
            systems: FxHashMap::default(),
            type_group: FxHashMap::default(),
            group_category: FxHashMap::default(),
        };
        for r in client
            .select("SELECT solar_system_id::int8, constellation_id::int8, region_id::int8 FROM killboard.sde_systems", None, &[])
            .map_err(spi_err)?
        {
            if let (Some(s), Some(c), Some(g)) = (
                r.get::<i64>(1).map_err(spi_err)?,
                r.get::<i64>(2).map_err(spi_err)?,
                r.get::<i64>(3).map_err(spi_err)?,
            ) {
                m.systems.insert(s, (c, g));
            }
        }
        for (sql, map) in [
            (
                "SELECT type_id::int8, group_id::int8 FROM killboard.sde_types",
                &mut m.type_group,
            ),
            (
                "SELECT group_id::int8, category_id::int8 FROM killboard.sde_groups",
                &mut m.group_category,
            ),
        ] {
            for r in client.select(sql, None, &[]).map_err(spi_err)? {
                if let (Some(a), Some(b)) = (
                    r.get::<i64>(1).map_err(spi_err)?,
                    r.get::<i64>(2).map_err(spi_err)?,
                ) {
                    map.insert(a, b);
                }
            }
        }
        Ok(m)
    }

    /// Ship group and category of a hull: the stored group, else the type's.
    fn ship(&self, type_id: Option<i64>, group: Option<i64>) -> (Option<i64>, Option<i64>) {
        let group = group.or_else(|| type_id.and_then(|t| self.type_group.get(&t).copied()));
        (
            group,
            group.and_then(|g| self.group_category.get(&g).copied()),
        )
    }
}

/// An SPI cursor fetched in batches; each batch is freed before the next one
/// is fetched. Snapshot as pgrx's own queries: the calling statement's while
/// the transaction has no xid (verify_stats compares with rows it read
/// there), a fresh one once it has (rebuild, after waiting for writers).
struct Cursor {
    portal: pg_sys::Portal,
    table: *mut pg_sys::SPITupleTable,
    pos: usize,
    len: usize,
    done: bool,
    types: &'static [pg_sys::Oid],
}

impl Cursor {
    fn open(sql: &CStr, types: &'static [pg_sys::Oid]) -> Cursor {
        // The ordered scans must come from the primary keys: sorting tens of
        // millions of rows would spill to disk before the first row.
        let read_only =
            unsafe { pg_sys::GetCurrentTransactionIdIfAny() == pg_sys::InvalidTransactionId };
        let portal =
            super::plans::with_gucs(&[(c"enable_sort", c"off"), (c"jit", c"off")], || unsafe {
                pg_sys::SPI_cursor_open_with_args(
                    std::ptr::null(),
                    sql.as_ptr(),
                    0,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    read_only,
                    0,
                )
            });
        Cursor {
            portal,
            table: std::ptr::null_mut(),
            pos: 0,
            len: 0,
            done: false,
            types,
        }
    }

    /// The next row, deformed into `row` (one call per row instead of one
    /// per column; each call into PostgreSQL sets up an error trap).
    fn next(&mut self, row: &mut Row) -> Result<bool> {
        if self.pos >= self.len {
            if self.done {
                return Ok(false);
            }
            unsafe {
                if !self.table.is_null() {
                    pg_sys::SPI_freetuptable(self.table);
                    self.table = std::ptr::null_mut();
                }
                pg_sys::SPI_tuptable = std::ptr::null_mut();
                pg_sys::SPI_cursor_fetch(self.portal, true, FETCH);
                self.table = pg_sys::SPI_tuptable;
                self.len = if self.table.is_null() {
                    0
                } else {
                    (*self.table).numvals as usize
                };
                self.pos = 0;
                if self.len < FETCH as usize {
                    self.done = true;
                }
                if self.len == 0 {
                    return Ok(false);
                }
                let desc = (*self.table).tupdesc;
                if (*desc).natts as usize != self.types.len() {
                    return Err(KillboardError::internal(
                        "rebuild scan: unexpected column count",
                    ));
                }
                for (i, t) in self.types.iter().enumerate() {
                    if pg_sys::SPI_gettypeid(desc, i as i32 + 1) != *t {
                        return Err(KillboardError::internal(format!(
                            "rebuild scan: column {} has an unexpected type",
                            i + 1
                        )));
                    }
                }
            }
        }
        let n = self.types.len();
        row.values.resize(n, pg_sys::Datum::from(0usize));
        row.nulls.resize(n, true);
        unsafe {
            pg_sys::heap_deform_tuple(
                *(*self.table).vals.add(self.pos),
                (*self.table).tupdesc,
                row.values.as_mut_ptr(),
                row.nulls.as_mut_ptr(),
            );
        }
        self.pos += 1;
        Ok(true)
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        unsafe {
            if !self.table.is_null() {
                pg_sys::SPI_freetuptable(self.table);
            }
            pg_sys::SPI_cursor_close(self.portal);
        }
    }
}

/// One fetched row's columns (int8, timestamptz and bool: all by value).
#[derive(Default)]
struct Row {
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
}

impl Row {
    /// int8 (and timestamptz, whose datum is int8 micros) column, 1-based.
    fn i64(&self, i: usize) -> Option<i64> {
        (!self.nulls[i - 1]).then(|| self.values[i - 1].value() as i64)
    }
    fn bool(&self, i: usize) -> Option<bool> {
        (!self.nulls[i - 1]).then(|| self.values[i - 1].value() & 0xff != 0)
    }
}

const KM_TYPES: &[pg_sys::Oid] = &[
    pg_sys::INT8OID,
    pg_sys::TIMESTAMPTZOID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::BOOLOID,
    pg_sys::BOOLOID,
    pg_sys::BOOLOID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
];

const ATT_TYPES: &[pg_sys::Oid] = &[
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::BOOLOID,
];

/// Hand every killmail, with its attackers and resolved flags, to `f`, in
/// killmail_id order. Returns the number of killmails.
/// `f` may take the state (leaving another buffer in its place).
pub fn for_each_killmail(
    sde: &SdeMaps,
    mut f: impl FnMut(&mut KillState) -> Result<()>,
) -> Result<i64> {
    let mut kms = Cursor::open(KILLMAILS_SCAN, KM_TYPES);
    let mut atts = Cursor::open(ATTACKERS_SCAN, ATT_TYPES);
    // The attacker read ahead of the current killmail.
    let mut ahead: Option<(i64, AttackerState)> = None;
    let mut atts_done = false;
    let mut k = KillState::default();
    let mut n = 0i64;
    let (mut r, mut a) = (Row::default(), Row::default());
    while kms.next(&mut r)? {
        let id = r
            .i64(1)
            .ok_or_else(|| KillboardError::internal("killmail without id"))?;
        let time = r.i64(2).unwrap_or(0);
        // ±infinity cannot be a killmail time the windows understand.
        if time == i64::MAX || time == i64::MIN {
            return Err(KillboardError::internal(format!(
                "killmail {id} has an infinite killmail_time"
            )));
        }
        let solar_system_id = r.i64(3).unwrap_or(0);
        let system = sde.systems.get(&solar_system_id);
        let ship_type = r.i64(15);
        let (ship_group, ship_category) = sde.ship(ship_type, r.i64(16));
        k.killmail_id = id;
        k.time = time + super::PG_EPOCH_UNIX_MICROS;
        k.solar_system_id = solar_system_id;
        k.constellation_id = r.i64(4).or(system.map(|s| s.0));
        k.region_id = r.i64(5).or(system.map(|s| s.1));
        k.value_cents = r.i64(6).unwrap_or(0) as i128;
        k.points = r.i64(7).unwrap_or(0);
        let stored = StoredFlags {
            npc: r.bool(8),
            solo: r.bool(9),
            awox: r.bool(10),
        };
        k.victim = Party {
            character_id: r.i64(11),
            corporation_id: r.i64(12),
            alliance_id: r.i64(13),
            faction_id: r.i64(14),
            ship_type_id: ship_type,
            ship_group_id: ship_group,
            ship_category_id: ship_category,
        };
        k.victim_damage_taken = r.i64(17).unwrap_or(0);
        k.attackers.clear();
        loop {
            if ahead.is_none() && !atts_done {
                if !atts.next(&mut a)? {
                    atts_done = true;
                } else {
                    let ship_type = a.i64(6);
                    let (ship_group, ship_category) = sde.ship(ship_type, a.i64(7));
                    ahead = Some((
                        a.i64(1).unwrap_or(0),
                        AttackerState {
                            party: Party {
                                character_id: a.i64(2),
                                corporation_id: a.i64(3),
                                alliance_id: a.i64(4),
                                faction_id: a.i64(5),
                                ship_type_id: ship_type,
                                ship_group_id: ship_group,
                                ship_category_id: ship_category,
                            },
                            damage_done: a.i64(8).unwrap_or(0),
                            final_blow: a.bool(9).unwrap_or(false),
                        },
                    ));
                }
            }
            match ahead.take() {
                // Attackers of no killmail (the foreign key forbids them): skip.
                Some((aid, _)) if aid < id => continue,
                Some((aid, a)) if aid == id => k.attackers.push(a),
                other => {
                    ahead = other;
                    break;
                }
            }
        }
        k.resolve_flags(stored);
        f(&mut k)?;
        n += 1;
    }
    Ok(n)
}

/// Writes a fresh killboard.stats (see the module comment). Rows may come in
/// any order; the index is built at `finish`.
pub struct StoreWriter {
    rel: pg_sys::Relation,
    bistate: pg_sys::BulkInsertState,
    cid: pg_sys::CommandId,
    /// Positions (0-based) of entity_key, data; others are dropped columns.
    cols: [usize; 2],
    natts: usize,
    mcx: PgMemoryContexts,
    /// Rows waiting for one heap_multi_insert (a WAL record per page, not per row).
    slots: Vec<*mut pg_sys::TupleTableSlot>,
    filled: usize,
    pub rows: i64,
}

const MULTI_INSERT: usize = 1000;

impl StoreWriter {
    /// Empty the store (and the appended deltas, folded into the rebuild).
    /// Takes ACCESS EXCLUSIVE on both until commit: readers wait for the
    /// new rows rather than see the store half written.
    pub fn open(client: &mut SpiClient) -> Result<StoreWriter> {
        let started = std::time::Instant::now();
        client
            .update("TRUNCATE killboard.stats, killboard.stats_delta", None, &[])
            .map_err(spi_err)?;
        pgrx::debug1!(
            "killboard: store truncated in {} ms",
            started.elapsed().as_millis()
        );
        let oid = client
            .select("SELECT 'killboard.stats'::regclass::oid", Some(1), &[])
            .map_err(spi_err)?
            .first()
            .get::<pg_sys::Oid>(1)
            .map_err(spi_err)?
            .ok_or_else(|| KillboardError::internal("killboard.stats not found"))?;
        unsafe {
            let rel = pg_sys::table_open(oid, pg_sys::RowExclusiveLock as i32);
            let desc = (*rel).rd_att;
            let natts = (*desc).natts as usize;
            let mut cols = [usize::MAX; 2];
            for (i, a) in (*desc).attrs.as_slice(natts).iter().enumerate() {
                if a.is_dropped() {
                    continue;
                }
                match a.name() {
                    "entity_key" => cols[0] = i,
                    "data" => cols[1] = i,
                    other => {
                        return Err(KillboardError::internal(format!(
                            "killboard.stats has an unexpected column {other}"
                        )))
                    }
                }
            }
            if cols.contains(&usize::MAX) {
                return Err(KillboardError::internal("killboard.stats lacks a column"));
            }
            Ok(StoreWriter {
                rel,
                bistate: pg_sys::GetBulkInsertState(),
                cid: pg_sys::GetCurrentCommandId(true),
                cols,
                natts,
                mcx: PgMemoryContexts::new("killboard rebuild rows"),
                slots: (0..MULTI_INSERT)
                    .map(|_| pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsHeapTuple))
                    .collect(),
                filled: 0,
                rows: 0,
            })
        }
    }

    pub fn put(&mut self, key: EntityKey, data: &[u8]) -> Result<()> {
        let stored = key.stored()?;
        let (rel, cols, natts) = (self.rel, self.cols, self.natts);
        let slot = self.slots[self.filled];
        unsafe {
            self.mcx.switch_to(|_| {
                let mut values = vec![pg_sys::Datum::from(0usize); natts];
                let mut nulls = vec![true; natts];
                let atts = (cols[0] as i16 + 1, cols[1] as i16 + 1);
                let tuple = super::direct::form_key_row(
                    (*rel).rd_att,
                    atts,
                    stored,
                    data,
                    &mut values,
                    &mut nulls,
                );
                pg_sys::ExecStoreHeapTuple(tuple, slot, false);
            });
        }
        self.filled += 1;
        self.rows += 1;
        if self.filled == MULTI_INSERT {
            self.insert_filled();
        }
        Ok(())
    }

    fn insert_filled(&mut self) {
        if self.filled == 0 {
            return;
        }
        // Writing millions of rows must stay cancellable.
        pgrx::check_for_interrupts!();
        let (rel, bistate, cid, filled) = (self.rel, self.bistate, self.cid, self.filled);
        let slots = &mut self.slots;
        unsafe {
            self.mcx.switch_to(|_| {
                // Frozen: the relfilenode was created by this transaction (the
                // TRUNCATE), so no other transaction can see these rows before
                // it commits, and after commit they are visible to every
                // snapshot, as with COPY FREEZE (pages are marked all-visible
                // too). A reader that waited on the lock sees the rebuilt
                // store, not an empty one.
                pg_sys::heap_multi_insert(
                    rel,
                    slots.as_mut_ptr(),
                    filled as i32,
                    cid,
                    pg_sys::HEAP_INSERT_FROZEN as i32,
                    bistate,
                );
            });
            for s in &self.slots[..filled] {
                pg_sys::ExecClearTuple(*s);
            }
            self.mcx.reset();
        }
        self.filled = 0;
    }

    /// Build the indexes over the new rows; the store is usable again after this.
    pub fn finish(mut self, client: &mut SpiClient) -> Result<i64> {
        self.insert_filled();
        unsafe {
            for s in self.slots.drain(..) {
                pg_sys::ExecDropSingleTupleTableSlot(s);
            }
            pg_sys::FreeBulkInsertState(self.bistate);
            pg_sys::table_close(self.rel, pg_sys::NoLock as i32);
            self.mcx.reset();
        }
        client
            .update("REINDEX TABLE killboard.stats", None, &[])
            .map_err(spi_err)?;
        Ok(self.rows)
    }
}
