//! pg_killboard: an EVE Online killboard engine inside PostgreSQL.
//! This file is the table of contents: modules, SQL load order, `_PG_init`.

use pgrx::prelude::*;

mod error;
mod gucs;

pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/sde.sql", name = "sde", requires = ["schema"]);
extension_sql_file!("../sql/caches.sql", name = "caches", requires = ["schema"]);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
