//! A stored killmail read straight from the primary keys of killmails,
//! attackers and items, for `match_profiles(killmail_id)` and matching at
//! commit. Through SPI the load (an executor start-up and two ARRAY subplans)
//! cost more than matching the killmail against 10k profiles.
//!
//! The same columns as `sql/queries/match_killmail.sql`, which stays the path
//! when a table is not plain to read (row security, no SELECT privilege, a
//! column of another type): SQL then does what it always did, errors included.

use std::cell::Cell;

use killboard_core::model::StoredFlags;
use killboard_core::profiles::view::{stored_security, KillmailView, PartyView};
use killboard_core::sde::ItemRef;
use killboard_core::Result;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::heap::{attr, eq_key, open, probe, readable_table, relid, with_read_snapshot, Rel};

/// What a load gives the matcher: the view before SDE resolution, its
/// items, the stored location (constellation, region, security), the
/// flags as stored, and each attacker's final blow.
pub type Loaded = (
    KillmailView,
    Vec<ItemRef>,
    (Option<i32>, Option<i32>, Option<f64>),
    StoredFlags,
    Vec<bool>,
);

const INT8: u32 = pg_sys::INT8OID.to_u32();
const INT4: u32 = pg_sys::INT4OID.to_u32();
const FLOAT4: u32 = pg_sys::FLOAT4OID.to_u32();
const NUMERIC: u32 = pg_sys::NUMERICOID.to_u32();
const BOOL: u32 = pg_sys::BOOLOID.to_u32();

/// Killmail columns, in `KM_COLS` order.
const KM_COLS: [(&std::ffi::CStr, u32); 15] = [
    (c"solar_system_id", INT4),
    (c"constellation_id", INT4),
    (c"region_id", INT4),
    (c"security", FLOAT4),
    (c"victim_character_id", INT8),
    (c"victim_corporation_id", INT8),
    (c"victim_alliance_id", INT8),
    (c"victim_faction_id", INT8),
    (c"victim_ship_type_id", INT4),
    (c"victim_ship_group_id", INT4),
    (c"total_value", NUMERIC),
    (c"npc", BOOL),
    (c"solo", BOOL),
    (c"awox", BOOL),
    (c"attacker_count", INT4),
];
const ATT_COLS: [(&std::ffi::CStr, u32); 7] = [
    (c"character_id", INT8),
    (c"corporation_id", INT8),
    (c"alliance_id", INT8),
    (c"faction_id", INT8),
    (c"ship_type_id", INT4),
    (c"ship_group_id", INT4),
    (c"final_blow", BOOL),
];
const ITEM_COLS: [(&std::ffi::CStr, u32); 3] = [
    (c"item_type_id", INT4),
    (c"flag", INT4),
    (c"parent_index", INT4),
];

#[derive(Clone, Copy)]
struct Rels {
    km: Rel,
    att: Rel,
    items: Rel,
    km_cols: [i16; 15],
    att_cols: [i16; 7],
    item_cols: [i16; 3],
}

// Resolved once per backend: Some(None) when the tables are not as this
// library knows them (SQL reads them then), None when not resolved yet.
thread_local! {
    static RELS: Cell<Option<Option<Rels>>> = const { Cell::new(None) };
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    RELS.with(|r| {
        let ours = match r.get() {
            Some(Some(rels)) => [rels.km, rels.att, rels.items]
                .iter()
                .any(|x| x.heap == relid || x.index == relid),
            Some(None) => true,
            None => false,
        };
        if relid == pg_sys::InvalidOid || ours {
            r.set(None);
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

unsafe fn resolve() -> Option<Rels> {
    let nsp = pg_sys::get_namespace_oid(c"killboard".as_ptr(), true);
    if nsp == pg_sys::InvalidOid {
        return None;
    }
    let cols = |rel: pg_sys::Oid, want: &[(&std::ffi::CStr, u32)], out: &mut [i16]| -> bool {
        want.iter().zip(out.iter_mut()).all(|((name, ty), n)| {
            *n = pg_sys::get_attnum(rel, name.as_ptr());
            *n > 0 && pg_sys::get_atttype(rel, *n) == pg_sys::Oid::from(*ty)
        })
    };
    let rel = |heap: &std::ffi::CStr, index: &std::ffi::CStr| -> Option<Rel> {
        Some(Rel {
            heap: relid(nsp, heap)?,
            index: relid(nsp, index)?,
        })
    };
    let mut r = Rels {
        km: rel(c"killmails", c"killmails_pkey")?,
        att: rel(c"attackers", c"attackers_pkey")?,
        items: rel(c"items", c"items_pkey")?,
        km_cols: [0; 15],
        att_cols: [0; 7],
        item_cols: [0; 3],
    };
    (cols(r.km.heap, &KM_COLS, &mut r.km_cols)
        && cols(r.att.heap, &ATT_COLS, &mut r.att_cols)
        && cols(r.items.heap, &ITEM_COLS, &mut r.item_cols))
    .then_some(r)
}

fn rels() -> Option<Rels> {
    RELS.with(|c| match c.get() {
        Some(r) => r,
        None => {
            // SAFETY: catalog lookups only.
            let r = unsafe { resolve() };
            c.set(Some(r));
            r
        }
    })
}

unsafe extern "C-unwind" {
    /// The server's numeric to float8 cast, called through fmgr as the
    /// query's `::float8` is (pgrx's binding is a guarded Rust function).
    fn numeric_float8(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
}

unsafe fn i64_of(slot: *mut pg_sys::TupleTableSlot, attno: i16) -> Option<i64> {
    attr(slot, attno).map(|d| d.value() as i64)
}

unsafe fn i32_of(slot: *mut pg_sys::TupleTableSlot, attno: i16) -> Option<i32> {
    attr(slot, attno).map(|d| d.value() as i32)
}

unsafe fn bool_of(slot: *mut pg_sys::TupleTableSlot, attno: i16) -> Option<bool> {
    attr(slot, attno).map(|d| d.value() as u8 != 0)
}

/// A party from its six columns: character, corporation, alliance and
/// faction (bigint), ship type and group (integer).
unsafe fn party_of(slot: *mut pg_sys::TupleTableSlot, cols: &[i16]) -> PartyView {
    PartyView {
        character_id: i64_of(slot, cols[0]),
        corporation_id: i64_of(slot, cols[1]),
        alliance_id: i64_of(slot, cols[2]),
        faction_id: i64_of(slot, cols[3]),
        ship_type_id: i32_of(slot, cols[4]),
        ship_group_id: i32_of(slot, cols[5]),
        ship_category_id: None,
    }
}

/// The killmail `killmail_id` as the matcher loads it: Some(None) when it
/// does not exist, None when SQL must read it (see the module doc).
pub fn load(killmail_id: i64) -> Result<Option<Option<Loaded>>> {
    let Some(rels) = rels() else {
        return Ok(None);
    };
    // SAFETY: plain backend calls on relations opened and locked
    // AccessShareLock like a SELECT would; every scan and slot is ended
    // inside `probe`, and an ERROR unwinds through the resource owner.
    unsafe {
        let mut opened = Vec::with_capacity(3);
        for r in [rels.km, rels.att, rels.items] {
            match open(r, pg_sys::AccessShareLock as _) {
                Some(o) if readable_table(o.heap) => opened.push(o),
                _ => return Ok(None),
            }
        }
        let key = || {
            [eq_key(
                1,
                pg_sys::F_INT8EQ,
                pg_sys::Datum::from(killmail_id),
            )]
        };
        with_read_snapshot(|snapshot, _| {
            let c = &rels.km_cols;
            let mut row: Option<Loaded> = None;
            probe(&opened[0], snapshot, &mut key(), |s| {
                // A float8 datum is passed by value: its bits.
                let total_value = attr(s, c[10]).map_or(0.0, |d| {
                    f64::from_bits(
                        pg_sys::DirectFunctionCall1Coll(Some(numeric_float8), pg_sys::InvalidOid, d)
                            .value() as u64,
                    )
                });
                let km = KillmailView {
                    killmail_id,
                    solar_system_id: i32_of(s, c[0]).unwrap_or(0),
                    victim: party_of(s, &c[4..10]),
                    // Attacker rows count when there are any (below).
                    attacker_count: i32_of(s, c[14]).unwrap_or(0).max(0) as u32,
                    total_value,
                    ..KillmailView::default()
                };
                let security =
                    attr(s, c[3]).map(|d| stored_security(f32::from_bits(d.value() as u32)));
                let stored = StoredFlags {
                    npc: bool_of(s, c[11]),
                    solo: bool_of(s, c[12]),
                    awox: bool_of(s, c[13]),
                };
                row = Some((
                    km,
                    Vec::new(),
                    (i32_of(s, c[1]), i32_of(s, c[2]), security),
                    stored,
                    Vec::new(),
                ));
                Ok(false)
            })?;
            let Some((km, items, _, _, final_blows)) = row.as_mut() else {
                return Ok(Some(None));
            };
            let a = &rels.att_cols;
            probe(&opened[1], snapshot, &mut key(), |s| {
                km.attackers.push(party_of(s, &a[0..6]));
                final_blows.push(bool_of(s, a[6]) == Some(true));
                Ok(true)
            })?;
            if !km.attackers.is_empty() {
                km.attacker_count = km.attackers.len() as u32;
            }
            let t = &rels.item_cols;
            probe(&opened[2], snapshot, &mut key(), |s| {
                if let (Some(type_id), Some(flag)) = (i32_of(s, t[0]), i32_of(s, t[1])) {
                    items.push(ItemRef {
                        type_id,
                        flag,
                        top_level: attr(s, t[2]).is_none(),
                    });
                }
                Ok(true)
            })?;
            Ok(Some(row))
        })
    }
}
