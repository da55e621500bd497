//! Entity stats: kinds and periods, the kill credit rule, the compact record.

pub mod credit;
pub mod kinds;
pub mod rebuild;
pub mod record;
pub mod view;

pub use credit::{credit, DeltaMap, EntityKey};
pub use kinds::{CreditMode, EntityKind, Period};
pub use record::{Counters, Record};
