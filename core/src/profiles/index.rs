//! The inverted index: index key → profiles, plus the always-check list.
//! It holds only ids, so it covers every enabled profile even when the
//! compiled-profile cache is smaller than the profile count.
//!
//! Profiles are numbered by slot in insertion order; postings hold slots, and
//! a lookup marks them in a bit set, which removes duplicates and yields them
//! in slot order without sorting. Inserting in profile-id order (as the
//! backend does) makes slot order id order.

use super::compile::{killmail_keys, Key};
use super::view::KillmailView;
use rustc_hash::FxHashMap;

#[derive(Debug, Default, Clone)]
pub struct ProfileIndex {
    by_key: FxHashMap<Key, Vec<u32>>,
    always: Vec<u32>,
    /// Slot → profile id.
    ids: Vec<i64>,
    /// Ids were inserted in ascending order (slot order is id order).
    ascending: bool,
}

impl ProfileIndex {
    pub fn new() -> Self {
        ProfileIndex {
            ascending: true,
            ..Self::default()
        }
    }

    /// Register a profile under its keys (`None` = always check); returns its slot.
    pub fn insert(&mut self, profile_id: i64, keys: Option<&[Key]>) -> u32 {
        let slot = self.ids.len() as u32;
        if self.ids.last().is_some_and(|&last| last >= profile_id) {
            self.ascending = false;
        }
        self.ids.push(profile_id);
        match keys {
            Some(keys) => {
                for k in keys {
                    self.by_key.entry(*k).or_default().push(slot);
                }
            }
            None => self.always.push(slot),
        }
        slot
    }

    pub fn profiles(&self) -> usize {
        self.ids.len()
    }

    pub fn always_len(&self) -> usize {
        self.always.len()
    }

    pub fn key_count(&self) -> usize {
        self.by_key.len()
    }

    pub fn profile_id(&self, slot: u32) -> i64 {
        self.ids[slot as usize]
    }

    /// Slots of the profiles that can possibly match `km`, each once, in slot order.
    pub fn for_each_candidate(&self, km: &KillmailView, mut f: impl FnMut(u32)) {
        let mut bits = vec![0u64; self.ids.len().div_ceil(64)];
        let mut mark = |s: u32| bits[(s >> 6) as usize] |= 1u64 << (s & 63);
        for &s in &self.always {
            mark(s);
        }
        for k in killmail_keys(km) {
            if let Some(v) = self.by_key.get(&k) {
                for &s in v {
                    mark(s);
                }
            }
        }
        for (w, mut word) in bits.into_iter().enumerate() {
            while word != 0 {
                f((w as u32) << 6 | word.trailing_zeros());
                word &= word - 1;
            }
        }
    }

    /// Profiles that can possibly match `km`, sorted and unique.
    pub fn candidates(&self, km: &KillmailView) -> Vec<i64> {
        let mut out = Vec::new();
        self.for_each_candidate(km, |s| out.push(self.ids[s as usize]));
        if !self.ascending {
            out.sort_unstable();
            out.dedup();
        }
        out
    }
}
