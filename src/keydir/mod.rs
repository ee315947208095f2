//! The in-memory index: key → location of the newest record for it.
//!
//! Every update is a compare-and-swap by sequence number: an entry is only ever replaced by one
//! with a larger seq, so the order in which the writer, recovery threads (and later merge) apply
//! their updates does not matter. Callers copy the small `Copy` entry out; no map guard ever
//! lives across an `.await`.

#[cfg(ringcask_loom)]
use loom::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::hash::BuildHasher;
use std::sync::Arc;
#[cfg(not(ringcask_loom))]
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

mod cas;
mod frozen;
mod table;

pub(crate) use cas::{Entry, Installed};
pub(crate) use frozen::{FrozenKeyDir, Position};
use table::Table;

/// Seeded per store: a random seed when the keydir is built from the files, the stored seed
/// when it is loaded from a keydir snapshot (whose shard bodies are split by it).
type Hasher = foldhash::fast::FixedState;

/// Shards (a power of two): each is a [`Table`] behind its own lock, chosen by the top bits of
/// the key's hash. Many shards keep lock collisions rare and make a shard's rebuild (which
/// holds its write lock) short: at 1M keys a shard holds ~16k.
pub(crate) const SHARDS: usize = 64;
const SHARD_SHIFT: u32 = 64 - SHARDS.trailing_zeros();

/// Counting sort of `n` keys' indices by the shard of their `hashes` (stable, so a key's
/// writes keep their order): the indices of shard `s` are `order[start[s]..start[s + 1]]`.
fn by_shard(hashes: impl Iterator<Item = u64> + Clone, n: usize) -> ([u32; SHARDS + 1], Vec<u32>) {
    let mut start = [0u32; SHARDS + 1];
    for h in hashes.clone() {
        start[(h >> SHARD_SHIFT) as usize + 1] += 1;
    }
    for s in 0..SHARDS {
        start[s + 1] += start[s];
    }
    let mut next = start;
    let mut order = vec![0u32; n];
    for (i, h) in hashes.enumerate() {
        let s = (h >> SHARD_SHIFT) as usize;
        order[next[s] as usize] = i as u32;
        next[s] += 1;
    }
    (start, order)
}

/// One shard, on its own cache lines so that locking one does not slow its neighbours.
///
/// The table is shared copy-on-write with the frozen views of [`KeyDir::freeze`]: a writer
/// copies a shard's table on its first change after a view was taken (`Arc::make_mut`), so a
/// view costs one `Arc` clone per shard and at most one copy of each shard it outlives.
#[repr(align(128))]
struct Shard(RwLock<Arc<Table>>);

/// The concurrent key directory.
pub(crate) struct KeyDir {
    shards: Box<[Shard]>,
    hasher: Hasher,
    seed: u64,
}

/// One shard's table loaded from a keydir snapshot, ready for [`KeyDir::from_shard_tables`].
#[derive(Debug)]
pub(crate) struct ShardTable(Table);

/// Builds one shard's table from entries of a keydir snapshot, checking each.
pub(crate) struct ShardBuilder {
    table: Table,
    hasher: Hasher,
    shard: usize,
}

impl ShardBuilder {
    /// Adds `key` with `entry`; refused when the key belongs to another shard or was already
    /// added.
    pub(crate) fn add(&mut self, key: &[u8], entry: Entry) -> Result<(), &'static str> {
        let h = self.hasher.hash_one(key);
        if (h >> SHARD_SHIFT) as usize != self.shard {
            return Err("key in the wrong shard");
        }
        if self.table.find(key, h).is_some() {
            return Err("key stored twice");
        }
        let hasher = &self.hasher;
        self.table
            .insert_new(key, h, &entry, &|k| hasher.hash_one(k));
        Ok(())
    }

    /// The table built.
    pub(crate) fn finish(self) -> ShardTable {
        ShardTable(self.table)
    }
}

/// A seed no one outside this process can predict (keys chosen to collide would otherwise
/// turn lookups linear).
#[cfg(not(ringcask_loom))]
fn random_seed() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0x5EED_u64)
}

/// Under loom a fixed seed: loom replays each model many times and needs every run to take the
/// same path, so keys must land in the same shards each time.
#[cfg(ringcask_loom)]
fn random_seed() -> u64 {
    0x5EED
}

impl KeyDir {
    /// An empty keydir.
    #[cfg(test)]
    pub(crate) fn new() -> KeyDir {
        KeyDir::with_capacity(0)
    }

    /// An empty keydir with room for about `n` keys.
    pub(crate) fn with_capacity(n: usize) -> KeyDir {
        // Shards fill unevenly: leave ~10 % (plus a little) of headroom each.
        let seed = random_seed();
        let per_shard = if n == 0 {
            0
        } else {
            n / SHARDS + n / SHARDS / 10 + 16
        };
        KeyDir {
            shards: (0..SHARDS)
                .map(|_| Shard(RwLock::new(Arc::new(Table::with_capacity(per_shard)))))
                .collect(),
            hasher: Hasher::with_seed(seed),
            seed,
        }
    }

    /// The hash of a fixed string under `seed`: stored in a keydir snapshot, so that a build
    /// whose hash function differs (slot positions would not match) refuses it up front.
    pub(crate) fn hash_probe(seed: u64) -> u64 {
        Hasher::with_seed(seed).hash_one(b"ringcask keydir snapshot")
    }

    /// The hash seed (stored in a keydir snapshot).
    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    /// Calls `f` for every key and entry of shard `i`, under its read lock.
    pub(crate) fn for_each_in_shard(&self, i: usize, f: impl FnMut(&[u8], &Entry)) {
        if let Some(shard) = self.shards.get(i) {
            Self::read(&shard.0).for_each(f);
        }
    }

    /// A builder of shard `i` of a keydir with hash seed `seed`, for about `n` keys.
    pub(crate) fn shard_builder(seed: u64, i: usize, n: usize) -> ShardBuilder {
        ShardBuilder {
            table: Table::with_capacity(n),
            hasher: Hasher::with_seed(seed),
            shard: i,
        }
    }

    /// A keydir made of the [`SHARDS`] tables built by [`KeyDir::shard_builder`] with `seed`,
    /// in shard order; `None` if there are not exactly [`SHARDS`].
    pub(crate) fn from_shard_tables(seed: u64, tables: Vec<ShardTable>) -> Option<KeyDir> {
        if tables.len() != SHARDS {
            return None;
        }
        Some(KeyDir {
            shards: tables
                .into_iter()
                .map(|t| Shard(RwLock::new(Arc::new(t.0))))
                .collect(),
            hasher: Hasher::with_seed(seed),
            seed,
        })
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> &RwLock<Arc<Table>> {
        &self.shards[(hash >> SHARD_SHIFT) as usize].0
    }

    // A panic while a shard was locked (a bug) must not make the keydir unusable: the table
    // is consistent between statements that could panic, so the poison is ignored.
    fn read(lock: &RwLock<Arc<Table>>) -> RwLockReadGuard<'_, Arc<Table>> {
        lock.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the table of `lock` under its write lock, copying it first if a frozen view
    /// still shares it.
    fn write<R>(lock: &RwLock<Arc<Table>>, f: impl FnOnce(&mut Table) -> R) -> R {
        let mut g: RwLockWriteGuard<'_, Arc<Table>> =
            lock.write().unwrap_or_else(|p| p.into_inner());
        f(Arc::make_mut(&mut g))
    }

    /// A point-in-time view of every shard. Taken while no write is being applied (the caller
    /// holds the append lock), it holds either all or none of each write's keys.
    pub(crate) fn freeze(&self) -> FrozenKeyDir {
        let tables = self
            .shards
            .iter()
            .map(|s| Self::read(&s.0).clone())
            .collect();
        FrozenKeyDir::new(tables, self.hasher)
    }

    /// One page of a stateless scan: see [`FrozenKeyDir::scan`]; each shard is read under its
    /// lock at one instant.
    pub(crate) fn scan(&self, cursor: u64, count: usize, f: impl FnMut(&[u8], &Entry)) -> u64 {
        frozen::scan_shards(
            cursor,
            count,
            &self.hasher,
            |i, g| g(&Self::read(&self.shards[i].0)),
            f,
        )
    }

    /// A copy of the entry for `key`, if any.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Entry> {
        let h = self.hash(key);
        let t = Self::read(self.shard(h));
        t.find(key, h).map(|i| t.entry(i))
    }

    /// The entries of many keys, in their order, taking each shard's read lock once for all
    /// of its keys: the lookups of one shard then overlap their cache misses, which a lock
    /// taken between two lookups (a full barrier on x86) keeps apart.
    pub(crate) fn get_many(&self, keys: &[&[u8]]) -> Vec<Option<Entry>> {
        let hashes: Vec<u64> = keys.iter().map(|k| self.hash(k)).collect();
        let (start, order) = by_shard(hashes.iter().copied(), keys.len());
        let mut out = vec![None; keys.len()];
        for s in 0..SHARDS {
            let group = &order[start[s] as usize..start[s + 1] as usize];
            if group.is_empty() {
                continue;
            }
            let t = Self::read(&self.shards[s].0);
            for &i in group {
                let i = i as usize;
                out[i] = t.find(keys[i], hashes[i]).map(|j| t.entry(j));
            }
        }
        out
    }

    /// Installs `entry` for `key` unless the map holds an entry with an equal or larger seq.
    pub(crate) fn install(&self, key: &[u8], entry: Entry) -> Installed {
        let h = self.hash(key);
        Self::write(self.shard(h), |t| self.install_locked(t, key, h, entry))
    }

    /// [`KeyDir::install`] into the locked shard `t` of `key` (hash `h`).
    fn install_locked(&self, t: &mut Table, key: &[u8], h: u64, entry: Entry) -> Installed {
        match t.find(key, h) {
            Some(i) => {
                let mut cur = t.entry(i);
                let r = cas::install_over(&mut cur, entry);
                if matches!(r, Installed::Replaced(_)) {
                    t.set_entry(i, &cur);
                }
                r
            }
            None => {
                t.insert_new(key, h, &entry, &|k| self.hash(k));
                Installed::New
            }
        }
    }

    /// Applies many writes, taking each shard's lock once for all of its keys (a batch of 1000
    /// keys otherwise locked a shard 1000 times). For each `(key, entry, tombstone)` in
    /// `writes`, in no particular order, calls `done(index, outcome)`: a put's
    /// [`KeyDir::install`] result, or for a tombstone what [`KeyDir::remove_older`] removed
    /// (`Replaced(old)`, or `Stale` if nothing was).
    pub(crate) fn apply_many<'k>(
        &self,
        writes: impl Iterator<Item = (&'k [u8], Entry, bool)>,
        mut done: impl FnMut(usize, Installed),
    ) {
        let writes: Vec<(u64, &'k [u8], Entry, bool)> = writes
            .map(|(k, e, tomb)| (self.hash(k), k, e, tomb))
            .collect();
        let (start, order) = by_shard(writes.iter().map(|w| w.0), writes.len());
        for s in 0..SHARDS {
            let group = &order[start[s] as usize..start[s + 1] as usize];
            if group.is_empty() {
                continue;
            }
            Self::write(&self.shards[s].0, |t| {
                for &i in group {
                    let i = i as usize;
                    let (h, key, entry, tombstone) = writes[i];
                    let outcome = if tombstone {
                        match t.find(key, h) {
                            Some(at) if cas::delete_removes(&t.entry(at), entry.seq) => {
                                Installed::Replaced(t.remove_at(at))
                            }
                            _ => Installed::Stale,
                        }
                    } else {
                        self.install_locked(t, key, h, entry)
                    };
                    done(i, outcome);
                }
            });
        }
    }

    /// Removes `key` if `remove(entry)` says so; returns the removed entry.
    fn remove_when(&self, key: &[u8], remove: impl FnOnce(&Entry) -> bool) -> Option<Entry> {
        let h = self.hash(key);
        Self::write(self.shard(h), |t| {
            let i = t.find(key, h)?;
            remove(&t.entry(i)).then(|| t.remove_at(i))
        })
    }

    /// Removes `key` if its entry is older than `seq` (a delete with that seq); returns it.
    pub(crate) fn remove_older(&self, key: &[u8], seq: u64) -> Option<Entry> {
        self.remove_when(key, |e| cas::delete_removes(e, seq))
    }

    /// Points `key` at a merged copy of its record: only if the entry still has `seq` and still
    /// lives in `from_file` (a put or delete that raced the merge wins).
    pub(crate) fn repoint(&self, key: &[u8], seq: u64, from_file: u32, to: Entry) -> bool {
        debug_assert_eq!(to.seq, seq);
        let h = self.hash(key);
        Self::write(self.shard(h), |t| match t.find(key, h) {
            Some(i) if cas::repoint_allowed(&t.entry(i), seq, from_file) => {
                t.set_entry(i, &to);
                true
            }
            _ => false,
        })
    }

    /// Removes `key` if its entry has exactly `seq` (an expired record a merge turned into a
    /// tombstone); returns it.
    pub(crate) fn remove_if_seq(&self, key: &[u8], seq: u64) -> Option<Entry> {
        self.remove_when(key, |e| cas::expire_removes(e, seq))
    }

    /// Removes every entry expired at `now_ms`; returns (file id, record length) of each.
    pub(crate) fn take_expired(&self, now_ms: u64) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            Self::write(&s.0, |t| {
                t.retain(|k, e| {
                    let expired = e.is_expired(now_ms);
                    if expired {
                        out.push((e.data_id(), e.footprint(k.len())));
                    }
                    !expired
                })
            });
        }
        out
    }

    /// Number of entries (live or expired-but-not-yet-reclaimed).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| Self::read(&s.0).len()).sum()
    }

    /// Calls `f` for every entry. Holds one shard's read lock at a time.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&[u8], &Entry)) {
        for s in self.shards.iter() {
            Self::read(&s.0).for_each(&mut f);
        }
    }

    /// Drops recovery markers and entries expired at `now_ms`; returns how many were dropped.
    pub(crate) fn sweep(&self, now_ms: u64) -> usize {
        let mut dropped = 0;
        for s in self.shards.iter() {
            Self::write(&s.0, |t| {
                t.retain(|_, e| {
                    let drop = e.is_marker() || e.is_expired(now_ms);
                    dropped += usize::from(drop);
                    !drop
                })
            });
        }
        dropped
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
            crc: 0,
        }
    }

    #[test]
    fn key_slots_stay_small() {
        assert_eq!(table::SLOT, 49);
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
    fn get_many_answers_each_key_in_order_as_get_does() {
        let k = KeyDir::new();
        for i in 0..500u64 {
            if i % 3 != 0 {
                k.install(format!("key{i}").as_bytes(), e(i));
            }
        }
        let long = vec![b'y'; 40];
        k.install(&long, e(7));
        let mut keys: Vec<Vec<u8>> = (0..500u64)
            .rev()
            .map(|i| format!("key{i}").into())
            .collect();
        keys.push(long);
        keys.push(b"key5".to_vec()); // twice
        let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        let got = k.get_many(&refs);
        let want: Vec<Option<Entry>> = refs.iter().map(|key| k.get(key)).collect();
        assert_eq!(got, want);
        assert_eq!(got.iter().filter(|e| e.is_some()).count(), 333 + 1 + 1);
        assert!(k.get_many(&[]).is_empty());
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
