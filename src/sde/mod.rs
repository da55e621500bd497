//! Static metadata for the matcher: types, systems and the jump graph, read
//! from the `killboard.sde_*` tables through per-backend caches (src/cache).
//! The CSV loader itself is SQL (`killboard.load_sde`, sql/profiles.sql).

use crate::cache::{self, Counted, Counters, KeptPlan};
use crate::error::OrRaise;
use killboard_core::sde::{JumpGraph, StaticData, SystemInfo, TypeInfo};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

struct SdeState {
    /// Negative entries (`None`) are cached too: an unknown type stays unknown
    /// until the SDE changes, which clears everything.
    types: Counted<i32, Option<TypeInfo>>,
    systems: Counted<i32, Option<SystemInfo>>,
    graph: Option<Rc<JumpGraph>>,
    graph_counters: Counters,
    built_gen: u64,
}

thread_local! {
    static TYPE_PLAN: KeptPlan =
        const { KeptPlan::new(include_str!("../../sql/queries/match_type_info.sql"), &[pg_sys::INT4OID]) };
    static SYSTEM_PLAN: KeptPlan =
        const { KeptPlan::new(include_str!("../../sql/queries/match_system_info.sql"), &[pg_sys::INT4OID]) };
    static SDE: RefCell<SdeState> = RefCell::new(SdeState {
        types: Counted::new(crate::gucs::sde_cache_size()),
        systems: Counted::new(crate::gucs::sde_cache_size()),
        graph: None,
        graph_counters: Counters::default(),
        built_gen: 0,
    });
}

/// Drop everything when the SDE generation moved; follow the size GUC.
/// Returns true when the SDE changed (compiled profiles depend on it).
pub fn sync(sde_gen: u64) -> bool {
    SDE.with(|s| {
        let mut s = s.borrow_mut();
        let size = crate::gucs::sde_cache_size();
        s.types.resize(size);
        s.systems.resize(size);
        if s.built_gen == sde_gen {
            return false;
        }
        let started = Instant::now();
        s.types.clear();
        s.systems.clear();
        s.graph = None;
        s.built_gen = sde_gen;
        s.types.counters.rebuilt(started);
        s.systems.counters.rebuilt(started);
        true
    })
}

fn load_type(type_id: i32) -> Option<TypeInfo> {
    cache::as_owner(|| {
        Spi::connect(|c| {
            let row = TYPE_PLAN
                .with(|p| p.select(c, Some(1), &[type_id.into()]))?
                .first();
            if row.is_empty() {
                return Ok(None);
            }
            let (group, cat) = row.get_two::<i32, i32>()?;
            let meta = row.get::<i32>(3)?;
            let market = row.get::<i32>(4)?;
            Ok::<_, pgrx::spi::SpiError>(group.map(|group_id| TypeInfo {
                group_id,
                category_id: cat,
                meta_group_id: meta,
                market_group_id: market,
            }))
        })
    })
    .or_raise()
}

fn load_system(system_id: i32) -> Option<SystemInfo> {
    cache::as_owner(|| {
        Spi::connect(|c| {
            let row = SYSTEM_PLAN
                .with(|p| p.select(c, Some(1), &[system_id.into()]))?
                .first();
            if row.is_empty() {
                return Ok(None);
            }
            let (con, reg, sec) = row.get_three::<i32, i32, f64>()?;
            Ok::<_, pgrx::spi::SpiError>(match (con, reg, sec) {
                (Some(constellation_id), Some(region_id), Some(security)) => Some(SystemInfo {
                    constellation_id,
                    region_id,
                    security,
                }),
                _ => None,
            })
        })
    })
    .or_raise()
}

/// `StaticData` over the caches; misses read one row through SPI.
pub struct CachedSde;

impl StaticData for CachedSde {
    fn type_info(&mut self, type_id: i32) -> Option<TypeInfo> {
        if let Some(v) = SDE.with(|s| s.borrow_mut().types.get(&type_id)) {
            return v;
        }
        let v = load_type(type_id);
        SDE.with(|s| s.borrow_mut().types.put(type_id, v));
        v
    }

    fn system_info(&mut self, system_id: i32) -> Option<SystemInfo> {
        if let Some(v) = SDE.with(|s| s.borrow_mut().systems.get(&system_id)) {
            return v;
        }
        let v = load_system(system_id);
        SDE.with(|s| s.borrow_mut().systems.put(system_id, v));
        v
    }
}

/// The whole jump graph (≈14k gates), loaded once per SDE generation on first
/// use by a `within_jumps` profile.
pub fn jump_graph() -> Rc<JumpGraph> {
    if let Some(g) = SDE.with(|s| {
        let mut s = s.borrow_mut();
        let g = s.graph.clone();
        if g.is_some() {
            s.graph_counters.hits += 1;
        }
        g
    }) {
        return g;
    }
    let started = Instant::now();
    let edges: Vec<(i32, i32)> = cache::as_owner(|| {
        Spi::connect(|c| {
            let mut out = Vec::new();
            for row in c.select(include_str!("../../sql/queries/match_jumps.sql"), None, &[])? {
                if let (Some(a), Some(b)) = (row.get::<i32>(1)?, row.get::<i32>(2)?) {
                    out.push((a, b));
                }
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        })
    })
    .or_raise();
    let g = Rc::new(JumpGraph::from_edges(edges));
    SDE.with(|s| {
        let mut s = s.borrow_mut();
        s.graph = Some(g.clone());
        s.graph_counters.misses += 1;
        s.graph_counters.rebuilt(started);
    });
    g
}

pub fn cache_rows() -> Vec<cache::StatsRow> {
    SDE.with(|s| {
        let s = s.borrow();
        vec![
            cache::stats_row(
                "sde_types",
                &s.types.counters,
                s.types.len(),
                Some(s.types.capacity()),
            ),
            cache::stats_row(
                "sde_systems",
                &s.systems.counters,
                s.systems.len(),
                Some(s.systems.capacity()),
            ),
            cache::stats_row(
                "jump_graph",
                &s.graph_counters,
                s.graph.as_ref().map_or(0, |g| g.edge_count()),
                None,
            ),
        ]
    })
}
