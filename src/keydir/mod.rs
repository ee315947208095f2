//! The in-memory index: key → location of the newest record for it.
//!
//! Every update is a compare-and-swap by sequence number: an entry is only ever replaced by one
//! with a larger seq, so the order in which the writer, recovery threads (and later merge) apply
//! their updates does not matter. Callers copy the small `Copy` entry out; no map guard ever
//! lives across an `.await`.

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;

mod cas;

pub(crate) use cas::{Entry, Installed};

type Hasher = foldhash::fast::RandomState;

/// Key storage: keys up to 16 bytes live inline in the map's slot (24 bytes in all), longer
/// ones in one heap allocation. A `Box<[u8]>` cost 16 bytes in the slot plus a 32-byte heap
/// block for a 16-byte key.
pub(crate) type KeyBuf = smallvec::SmallVec<[u8; 16]>;

/// The concurrent key directory.
pub(crate) struct KeyDir {
    map: DashMap<KeyBuf, Entry, Hasher>,
}

impl KeyDir {
    /// An empty keydir.
    #[cfg(test)]
    pub(crate) fn new() -> KeyDir {
        KeyDir::with_capacity(0)
    }

    /// An empty keydir with room for about `n` keys.
    pub(crate) fn with_capacity(n: usize) -> KeyDir {
        KeyDir {
            map: DashMap::with_capacity_and_hasher(n, Hasher::default()),
        }
    }

    /// [`KeyDir::install`] for recovery, where most keys are new: one hash and one lookup.
    pub(crate) fn install_new(&self, key: &[u8], entry: Entry) -> Installed {
        match self.map.entry(KeyBuf::from_slice(key)) {
            MapEntry::Occupied(mut o) => Self::swap_if_newer(o.get_mut(), entry),
            MapEntry::Vacant(v) => {
                v.insert(entry);
                Installed::New
            }
        }
    }

    /// A copy of the entry for `key`, if any.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Entry> {
        self.map.get(key).map(|r| *r.value())
    }

    /// Installs `entry` for `key` unless the map holds an entry with an equal or larger seq.
    pub(crate) fn install(&self, key: &[u8], entry: Entry) -> Installed {
        if let Some(mut cur) = self.map.get_mut(key) {
            return Self::swap_if_newer(cur.value_mut(), entry);
        }
        match self.map.entry(KeyBuf::from_slice(key)) {
            MapEntry::Occupied(mut o) => Self::swap_if_newer(o.get_mut(), entry),
            MapEntry::Vacant(v) => {
                v.insert(entry);
                Installed::New
            }
        }
    }

    fn swap_if_newer(cur: &mut Entry, entry: Entry) -> Installed {
        cas::install_over(cur, entry)
    }

    /// Removes `key` if its entry is older than `seq` (a delete with that seq); returns it.
    pub(crate) fn remove_older(&self, key: &[u8], seq: u64) -> Option<Entry> {
        self.map
            .remove_if(key, |_, e| cas::delete_removes(e, seq))
            .map(|(_, e)| e)
    }

    /// Points `key` at a merged copy of its record: only if the entry still has `seq` and still
    /// lives in `from_file` (a put or delete that raced the merge wins).
    pub(crate) fn repoint(&self, key: &[u8], seq: u64, from_file: u32, to: Entry) -> bool {
        debug_assert_eq!(to.seq, seq);
        match self.map.get_mut(key) {
            Some(mut e) if cas::repoint_allowed(&e, seq, from_file) => {
                *e = to;
                true
            }
            _ => false,
        }
    }

    /// Removes `key` if its entry has exactly `seq` (an expired record a merge turned into a
    /// tombstone); returns it.
    pub(crate) fn remove_if_seq(&self, key: &[u8], seq: u64) -> Option<Entry> {
        self.map
            .remove_if(key, |_, e| cas::expire_removes(e, seq))
            .map(|(_, e)| e)
    }

    /// Removes every entry expired at `now_ms`; returns (file id, record length) of each.
    pub(crate) fn take_expired(&self, now_ms: u64) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        self.map.retain(|_, e| {
            let expired = e.is_expired(now_ms);
            if expired {
                out.push((e.file_id, e.len));
            }
            !expired
        });
        out
    }

    /// Number of entries (live or expired-but-not-yet-reclaimed).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Calls `f` for every entry. Holds one shard's read lock at a time.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&[u8], &Entry)) {
        for r in self.map.iter() {
            f(r.key(), r.value());
        }
    }

    /// Drops recovery markers and entries expired at `now_ms`; returns how many were dropped.
    pub(crate) fn sweep(&self, now_ms: u64) -> usize {
        let before = self.map.len();
        self.map
            .retain(|_, e| !e.is_marker() && !e.is_expired(now_ms));
        before - self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(seq: u64) -> Entry {
        Entry {
            seq,
            expiry_ms: 0,
            file_id: 1,
            offset: 20,
            len: 40,
        }
    }

    #[test]
    fn key_slots_stay_small() {
        assert_eq!(std::mem::size_of::<KeyBuf>(), 24);
        assert_eq!(std::mem::size_of::<Entry>(), 32);
        let k = KeyDir::new();
        let long = vec![b'x'; 100];
        k.install(&long, e(1));
        k.install(b"short", e(2));
        assert_eq!(k.get(&long), Some(e(1)));
        assert_eq!(k.get(b"short"), Some(e(2)));
        let mut keys = Vec::new();
        k.for_each(|key, _| keys.push(key.to_vec()));
        keys.sort();
        assert_eq!(keys, vec![b"short".to_vec(), long]);
    }

    #[test]
    fn install_keeps_the_highest_seq_whatever_the_order() {
        let k = KeyDir::new();
        assert_eq!(k.install(b"a", e(5)), Installed::New);
        assert_eq!(k.install(b"a", e(3)), Installed::Stale);
        assert_eq!(k.install(b"a", e(5)), Installed::Stale);
        assert_eq!(k.install(b"a", e(9)), Installed::Replaced(e(5)));
        assert_eq!(k.get(b"a"), Some(e(9)));
    }

    #[test]
    fn remove_only_when_older() {
        let k = KeyDir::new();
        k.install(b"a", e(5));
        assert_eq!(k.remove_older(b"a", 4), None);
        assert_eq!(k.get(b"a"), Some(e(5)));
        assert_eq!(k.remove_older(b"a", 6), Some(e(5)));
        assert_eq!(k.get(b"a"), None);
    }

    #[test]
    fn repoint_only_when_seq_and_file_still_match() {
        let k = KeyDir::new();
        k.install(b"a", e(5));
        let moved = Entry {
            file_id: 9,
            offset: 100,
            ..e(5)
        };
        assert!(!k.repoint(b"a", 5, 2, moved), "wrong source file");
        assert!(k.repoint(b"a", 5, 1, moved));
        assert_eq!(k.get(b"a"), Some(moved));
        // A newer put wins over a late repoint.
        k.install(b"a", e(6));
        assert!(!k.repoint(b"a", 5, 9, moved));
        assert_eq!(k.get(b"a"), Some(e(6)));
        // A delete wins too.
        k.remove_older(b"a", 7);
        assert!(!k.repoint(b"a", 6, 1, Entry { seq: 6, ..moved }));
        assert_eq!(k.get(b"a"), None);
        k.install(b"b", e(3));
        assert_eq!(k.remove_if_seq(b"b", 2), None);
        assert_eq!(k.remove_if_seq(b"b", 3), Some(e(3)));
    }

    #[test]
    fn markers_win_then_get_swept() {
        let k = KeyDir::new();
        k.install(b"a", Entry::marker(10));
        assert_eq!(k.install(b"a", e(4)), Installed::Stale);
        k.install(b"b", e(4));
        let mut exp = e(7);
        exp.expiry_ms = 100;
        k.install(b"c", exp);
        assert_eq!(k.sweep(100), 2);
        assert_eq!(k.len(), 1);
        assert_eq!(k.get(b"b"), Some(e(4)));
    }
}
