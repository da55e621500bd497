//! The inverted index: index key → profiles, plus the always-check list.
//! It holds only ids, so it covers every enabled profile even when the
//! compiled-profile cache is smaller than the profile count.

use super::compile::{killmail_keys, Key};
use super::view::KillmailView;
use rustc_hash::FxHashMap;

#[derive(Debug, Default, Clone)]
pub struct ProfileIndex {
    by_key: FxHashMap<Key, Vec<i64>>,
    always: Vec<i64>,
    profiles: usize,
}

impl ProfileIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a profile under its keys (`None` = always check).
    pub fn insert(&mut self, profile_id: i64, keys: Option<&[Key]>) {
        self.profiles += 1;
        match keys {
            Some(keys) => {
                for k in keys {
                    self.by_key.entry(*k).or_default().push(profile_id);
                }
            }
            None => self.always.push(profile_id),
        }
    }

    pub fn profiles(&self) -> usize {
        self.profiles
    }

    pub fn always_len(&self) -> usize {
        self.always.len()
    }

    pub fn key_count(&self) -> usize {
        self.by_key.len()
    }

    /// Profiles that can possibly match `km`, sorted and unique.
    pub fn candidates(&self, km: &KillmailView) -> Vec<i64> {
        let mut out = self.always.clone();
        for k in killmail_keys(km) {
            if let Some(v) = self.by_key.get(&k) {
                out.extend_from_slice(v);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}
