//! loom models of ringcask's keydir protocol: writer put vs merge repoint vs delete vs
//! recovery loads, over every interleaving loom explores.
//!
//! The engine's keydir (a sharded table, `src/keydir/`) applies each compare-and-swap rule under
//! a shard lock; this model applies the *same* rules (the engine's `src/keydir/cas.rs`, included below) under a loom
//! mutex, one lock per operation, with the same copy-out-then-act shape as the engine.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p ringcask-loom --release
//! ```

#[path = "../../src/keydir/cas.rs"]
#[allow(dead_code)]
mod cas;

use cas::{Entry, Installed};

#[cfg(all(test, loom))]
mod protocol;

use std::collections::HashMap;

#[cfg(loom)]
use loom::sync::Mutex;
#[cfg(not(loom))]
use std::sync::Mutex;

/// A keydir with the engine's rules: one map, one lock per operation.
#[derive(Debug, Default)]
#[allow(dead_code)]
pub(crate) struct ModelKeyDir {
    map: Mutex<HashMap<&'static str, Entry>>,
}

#[allow(dead_code)]
impl ModelKeyDir {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<&'static str, Entry>) -> R) -> R {
        let mut g = self.map.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// A copy of the entry (what `KeyDir::get` returns).
    pub(crate) fn get(&self, key: &'static str) -> Option<Entry> {
        self.with(|m| m.get(key).copied())
    }

    /// The writer's put / recovery's load (`KeyDir::install`).
    pub(crate) fn install(&self, key: &'static str, e: Entry) -> Installed {
        self.with(|m| match m.get_mut(key) {
            Some(cur) => cas::install_over(cur, e),
            None => {
                m.insert(key, e);
                Installed::New
            }
        })
    }

    /// The writer's delete (`KeyDir::remove_older`).
    pub(crate) fn delete(&self, key: &'static str, seq: u64) -> Option<Entry> {
        self.with(|m| match m.get(key) {
            Some(cur) if cas::delete_removes(cur, seq) => m.remove(key),
            _ => None,
        })
    }

    /// The merge's repoint after its commit (`KeyDir::repoint`).
    pub(crate) fn repoint(&self, key: &'static str, seq: u64, from_file: u32, to: Entry) -> bool {
        self.with(|m| match m.get_mut(key) {
            Some(cur) if cas::repoint_allowed(cur, seq, from_file) => {
                *cur = to;
                true
            }
            _ => false,
        })
    }

    /// The merge's removal of an expired entry it turned into a tombstone.
    pub(crate) fn expire(&self, key: &'static str, seq: u64) -> Option<Entry> {
        self.with(|m| match m.get(key) {
            Some(cur) if cas::expire_removes(cur, seq) => m.remove(key),
            _ => None,
        })
    }
}

/// An entry for `seq` in `file_id`.
#[allow(dead_code)]
pub(crate) fn at(seq: u64, file_id: u32) -> Entry {
    Entry {
        seq,
        expiry_ms: 0,
        file_id,
        offset: 20,
        len: 40,
    }
}
