//! Filter profiles: parsing, validation, compilation and matching (see architecture.md).
//!
//! - [`filter`]: the JSON language, validated with JSON paths (22023 on error).
//! - [`view`]: the killmail as matched (ids + SDE facts + module tags).
//! - [`compile`]: native predicates and their index keys.
//! - [`index`]: inverted index by system, module tag and party/ship ids, plus
//!   the always-check list.
//!
//! Module tags and the fitted-slot rule live in [`crate::sde`].

pub mod compile;
pub mod filter;
pub mod index;
pub mod view;

#[cfg(test)]
mod tests;

pub use compile::{compile, eval, killmail_keys, Compiled, Key};
pub use filter::{parse_filter, Filter, Leaf};
pub use index::ProfileIndex;
pub use view::{view_from_json, JsonKillmail, KillmailView, PartyView};

use crate::error::Result;
use crate::sde::JumpGraph;

/// Validate a filter document; the error carries SQLSTATE 22023 and the path.
pub fn validate(doc: &serde_json::Value) -> Result<()> {
    parse_filter(doc).map(|_| ())
}

/// Parse and compile in one step.
pub fn compile_doc(doc: &serde_json::Value, graph: &JumpGraph) -> Result<Compiled> {
    Ok(compile(&parse_filter(doc)?, graph))
}
