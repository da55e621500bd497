//! killboard-sidecar: the HTTP side of pg_killboard. The extension never
//! talks to the network; this service fills its TTL cache tables from ESI,
//! Janice and Mutamarket, follows the R2Z2 killmail feed into
//! `killboard.ingest`, and loads the CSV SDE.

pub mod backoff;
pub mod config;
pub mod db;
pub mod error;
pub mod feed;
pub mod http;
pub mod metrics;
pub mod sde;
pub mod worker;

pub use error::{Error, Result};
