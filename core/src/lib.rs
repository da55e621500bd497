//! killboard-core: the rules of pg_killboard as plain Rust, unit-tested with
//! `cargo test -p killboard-core`. No pgrx here: the extension crate is glue.

pub mod error;
pub mod ingest;
pub mod model;
pub mod profiles;
pub mod sde;
pub mod stats;
pub mod windows;

pub use error::{KillboardError, Result, SqlState};
