//! The keydir as the loom models in `loom-models/` drive it: the engine's own sharded table and
//! compare-and-swap rules, built with loom's locks (`RUSTFLAGS="--cfg ringcask_loom"`). Not a
//! stable API.

use crate::keydir::{self, Installed};

/// A keydir entry (the engine's, with public fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number of the record.
    pub seq: u64,
    /// Absolute expiry in Unix milliseconds; 0 = never.
    pub expiry_ms: u64,
    /// Datafile holding the record.
    pub file_id: u32,
    /// Offset of the record.
    pub offset: u32,
    /// Length of the record; 0 marks a recovery-time marker.
    pub len: u32,
}

impl Entry {
    /// Recovery's marker for a tombstone or an expired record with `seq`.
    pub fn marker(seq: u64) -> Entry {
        keydir::Entry::marker(seq).into()
    }
}

impl From<keydir::Entry> for Entry {
    fn from(e: keydir::Entry) -> Entry {
        Entry {
            seq: e.seq,
            expiry_ms: e.expiry_ms,
            file_id: e.file_id,
            offset: e.offset,
            len: e.len,
        }
    }
}

impl From<Entry> for keydir::Entry {
    fn from(e: Entry) -> keydir::Entry {
        keydir::Entry {
            seq: e.seq,
            expiry_ms: e.expiry_ms,
            file_id: e.file_id,
            offset: e.offset,
            len: e.len,
            // The models' entries locate records, never values kept apart.
            crc: 0,
        }
    }
}

/// The engine's keydir.
pub struct KeyDir(keydir::KeyDir);

impl Default for KeyDir {
    fn default() -> Self {
        KeyDir(keydir::KeyDir::with_capacity(0))
    }
}

impl KeyDir {
    /// A copy of `key`'s entry (a `get`).
    pub fn get(&self, key: &[u8]) -> Option<Entry> {
        self.0.get(key).map(Entry::from)
    }

    /// The writer's put, recovery's load: installs `e` if it is newer; whether it changed
    /// anything.
    pub fn install(&self, key: &[u8], e: Entry) -> bool {
        !matches!(self.0.install(key, e.into()), Installed::Stale)
    }

    /// The writer's delete with `seq`: removes an older entry.
    pub fn delete(&self, key: &[u8], seq: u64) -> Option<Entry> {
        self.0.remove_older(key, seq).map(Entry::from)
    }

    /// The merge's repoint of `key` to its copy `to` of the record with `seq` in `from_file`.
    pub fn repoint(&self, key: &[u8], seq: u64, from_file: u32, to: Entry) -> bool {
        self.0.repoint(key, seq, from_file, to.into())
    }

    /// The merge's removal of an expired record with `seq` it turned into a tombstone.
    pub fn expire(&self, key: &[u8], seq: u64) -> Option<Entry> {
        self.0.remove_if_seq(key, seq).map(Entry::from)
    }

    /// A batch or a recovery group: `(key, entry, tombstone)` writes under one lock per shard.
    pub fn apply_many(&self, writes: &[(&[u8], Entry, bool)]) {
        self.0
            .apply_many(writes.iter().map(|&(k, e, t)| (k, e.into(), t)), |_, _| {});
    }

    /// Recovery's sweep of markers and entries expired at `now_ms`.
    pub fn sweep(&self, now_ms: u64) -> usize {
        self.0.sweep(now_ms)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}
