//! pg_killboard: an EVE Online killboard engine inside PostgreSQL.
//! This file is the table of contents: modules, SQL load order, `_PG_init`.

use pgrx::prelude::*;

mod api;
mod cache;
mod error;
mod gucs;
mod heap;
mod ingest;
mod json;
mod profiles;
mod sde;
mod stats;
mod triggers;

pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/sde.sql", name = "sde", requires = ["schema"]);
extension_sql_file!("../sql/caches.sql", name = "caches", requires = ["schema"]);
extension_sql_file!(
    "../sql/profiles.sql",
    name = "profiles",
    requires = [
        "schema",
        "sde",
        profiles::validate_filter,
        profiles::_match_for_ingest,
        cache::_invalidate_relcache
    ]
);
extension_sql_file!(
    "../sql/entity_stats.sql",
    name = "entity_stats",
    requires = ["schema"]
);
extension_sql_file!(
    "../sql/triggers.sql",
    name = "triggers",
    requires = [
        "schema",
        triggers::_stats_killmails_stmt,
        triggers::_stats_killmails_delete,
        triggers::_stats_attackers_stmt,
        triggers::_stats_flush,
        triggers::_stats_truncate
    ]
);
extension_sql_file!(
    "../sql/api.sql",
    name = "api",
    requires = [
        "triggers",
        "caches",
        ingest::ingest,
        ingest::ingest_many,
        "entity_stats",
        api::entity_stats_live,
        api::maintenance::rebuild_stats,
        api::maintenance::advance_windows,
        api::maintenance::verify_stats
    ]
);
// Last, and also the body of the upgrade scripts: roles, grants, pinned
// search_path and SECURITY DEFINER for every function above.
extension_sql_file!(
    "../sql/security.sql",
    name = "security",
    requires = ["api"],
    finalize
);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    cache::init();
    stats::pending::init();
    profiles::init();
    stats::direct::init();
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
