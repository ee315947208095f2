//! A point-in-time view of the keydir, and the stateless scan cursor.
//!
//! **Frozen view.** [`super::KeyDir::freeze`] clones the `Arc` of each shard's table; the live
//! keydir copies a shard on its next change (copy on write), so the view never changes.
//!
//! **Scan cursor.** A key's *scan position* is `shard << 32 | (hash & 0xFFFF_FFFF)`: 38 bits,
//! fixed for the life of the store's keydir whatever the tables' sizes (both parts come from the
//! key's hash under the store's seed). A cursor is the position the next page starts at; a page
//! returns every key whose position lies in a range `cursor..next` and `next` is the cursor
//! after it. Ranges of successive pages are adjacent and never overlap, so a key present for the
//! whole scan is returned exactly once however the keydir grows, shrinks or is rebuilt
//! meanwhile. A key added or removed during the scan may or may not be returned. Cursor 0
//! starts a scan; 0 is returned when it is done.

use std::hash::BuildHasher;
use std::sync::Arc;

use super::table::Table;
use super::{Entry, Hasher, SHARDS, SHARD_SHIFT};

/// Positions per shard in the scan order (the low 32 bits of a hash).
const SHARD_SPAN: u64 = 1 << 32;
/// One past the last scan position.
const SCAN_END: u64 = (SHARDS as u64) << 32;
/// Most ranges one page looks at (it returns fewer keys than asked rather than run long).
const MAX_RANGES_PER_PAGE: usize = 256;

/// The keydir as it was at one instant.
#[derive(Clone)]
pub(crate) struct FrozenKeyDir {
    tables: Box<[Arc<Table>]>,
    hasher: Hasher,
}

impl std::fmt::Debug for FrozenKeyDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenKeyDir")
            .field("keys", &self.len())
            .finish()
    }
}

/// Where an iteration over a frozen keydir stands: shard, then slot within it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Position {
    shard: usize,
    slot: usize,
}

impl FrozenKeyDir {
    pub(super) fn new(tables: Box<[Arc<Table>]>, hasher: Hasher) -> FrozenKeyDir {
        debug_assert_eq!(tables.len(), SHARDS);
        FrozenKeyDir { tables, hasher }
    }

    /// The entry of `key`, if any.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Entry> {
        let h = self.hasher.hash_one(key);
        let t = self.tables.get((h >> SHARD_SHIFT) as usize)?;
        t.find(key, h).map(|i| t.entry(i))
    }

    /// Number of entries (as [`super::KeyDir::len`] was when the view was taken).
    pub(crate) fn len(&self) -> usize {
        self.tables.iter().map(|t| t.len()).sum()
    }

    /// Visits entries from `at` on, in shard then slot order, calling `f` for each until it
    /// returns `false`; returns where to continue, or `None` once every entry was visited.
    pub(crate) fn visit(
        &self,
        at: Position,
        mut f: impl FnMut(&[u8], &Entry) -> bool,
    ) -> Option<Position> {
        let mut at = at;
        while let Some(t) = self.tables.get(at.shard) {
            let mut stopped = false;
            let next = t.visit_from(at.slot, |k, e| {
                stopped = !f(k, e);
                !stopped
            });
            if stopped && next < t.capacity() {
                return Some(Position {
                    shard: at.shard,
                    slot: next,
                });
            }
            at = Position {
                shard: at.shard + 1,
                slot: 0,
            };
            if stopped {
                return (at.shard < self.tables.len()).then_some(at);
            }
        }
        None
    }

    /// One page of a scan of this view (see the module docs).
    pub(crate) fn scan(&self, cursor: u64, count: usize, f: impl FnMut(&[u8], &Entry)) -> u64 {
        scan_shards(
            cursor,
            count,
            &self.hasher,
            |i, g| {
                if let Some(t) = self.tables.get(i) {
                    g(t)
                }
            },
            f,
        )
    }
}

/// One page of a scan starting at `cursor`: calls `f` for about `count` keys (at least one
/// unless the scan ends or a page's work bound is reached first) and returns the next cursor,
/// 0 when the scan is done. `with_table(i, g)` runs `g` on shard `i`'s table (under its lock).
/// A cursor past the end returns 0 at once.
pub(crate) fn scan_shards(
    cursor: u64,
    count: usize,
    hasher: &Hasher,
    mut with_table: impl FnMut(usize, &mut dyn FnMut(&Table)),
    mut f: impl FnMut(&[u8], &Entry),
) -> u64 {
    let count = count.max(1) as u64;
    let rehash = |k: &[u8]| hasher.hash_one(k);
    let mut cursor = cursor;
    let mut found = 0u64;
    for _ in 0..MAX_RANGES_PER_PAGE {
        if cursor >= SCAN_END {
            return 0;
        }
        let shard = (cursor >> 32) as usize;
        let lo = cursor & (SHARD_SPAN - 1);
        let mut hi = SHARD_SPAN;
        with_table(shard, &mut |t: &Table| {
            // A range expected to hold what is still wanted: hashes are uniform in the shard.
            let want = count.saturating_sub(found).max(1);
            let width = match t.len() as u64 {
                0 => SHARD_SPAN,
                n => (want.saturating_mul(SHARD_SPAN) / n).max(1),
            };
            hi = lo.saturating_add(width).min(SHARD_SPAN);
            found += t.scan_range(lo, hi, &rehash, &mut f) as u64;
        });
        cursor = ((shard as u64) << 32) + hi;
        if found >= count {
            break;
        }
    }
    if cursor >= SCAN_END {
        0
    } else {
        cursor
    }
}

#[cfg(test)]
mod tests {
    use super::super::KeyDir;
    use super::*;
    use std::collections::BTreeSet;

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

    fn key(i: u32) -> Vec<u8> {
        format!("key-{i}").into_bytes()
    }

    #[test]
    fn a_frozen_view_keeps_its_instant() {
        let k = KeyDir::new();
        for i in 0..1000 {
            k.install(&key(i), e(u64::from(i) + 1));
        }
        let view = k.freeze();
        for i in 0..1000 {
            k.remove_older(&key(i), 5000);
        }
        for i in 1000..3000 {
            k.install(&key(i), e(u64::from(i) + 1));
        }
        assert_eq!(view.len(), 1000);
        assert_eq!(k.len(), 2000);
        assert_eq!(view.get(&key(7)), Some(e(8)));
        assert_eq!(view.get(&key(1500)), None);
        let mut seen = BTreeSet::new();
        let mut at = Some(Position::default());
        // Visit in small steps to exercise resuming.
        while let Some(p) = at {
            let mut n = 0;
            at = view.visit(p, |k, _| {
                assert!(seen.insert(k.to_vec()), "visited twice");
                n += 1;
                n < 7
            });
        }
        assert_eq!(seen, (0..1000).map(key).collect());
    }

    /// Every key present for the whole scan is returned, each once, while other keys come and
    /// go and the tables grow and shrink (rebuilds move every slot) between pages.
    #[test]
    fn a_scan_returns_each_stable_key_once_while_the_keydir_changes() {
        for count in [1, 3, 10, 100, 5000] {
            let k = KeyDir::new();
            for i in 0..2000 {
                k.install(&key(i), e(1));
            }
            let mut returned: Vec<Vec<u8>> = Vec::new();
            let mut cursor = 0;
            let mut page = 0u32;
            loop {
                cursor = k.scan(cursor, count, |key, _| returned.push(key.to_vec()));
                page += 1;
                // Churn: grow by 300 keys, then drop them again, alternately.
                let churn = 100_000 + page * 1000;
                if page % 2 == 1 {
                    for i in churn..churn + 300 {
                        k.install(&key(i), e(2));
                    }
                } else {
                    for i in churn - 1000..churn - 700 {
                        k.remove_older(&key(i), 9);
                    }
                }
                if cursor == 0 {
                    break;
                }
                assert!(page < 100_000, "the scan does not end");
            }
            let stable: BTreeSet<Vec<u8>> = (0..2000).map(key).collect();
            let mut once = BTreeSet::new();
            for r in &returned {
                if stable.contains(r) {
                    assert!(once.insert(r.clone()), "count {count}: returned twice");
                }
            }
            assert_eq!(once, stable, "count {count}: a stable key was missed");
        }
    }

    #[test]
    fn a_page_returns_about_count_keys_and_bad_cursors_end() {
        let k = KeyDir::new();
        for i in 0..10_000 {
            k.install(&key(i), e(1));
        }
        let mut n = 0;
        let next = k.scan(0, 100, |_, _| n += 1);
        assert_ne!(next, 0);
        assert!((50..400).contains(&n), "{n} keys for count 100");
        assert_eq!(k.scan(SCAN_END, 10, |_, _| panic!("no key")), 0);
        assert_eq!(k.scan(u64::MAX, 10, |_, _| panic!("no key")), 0);
        let empty = KeyDir::new();
        assert_eq!(empty.scan(0, 10, |_, _| panic!("no key")), 0);
        // The frozen view pages the same way.
        let view = k.freeze();
        let mut all = 0;
        let mut c = 0;
        loop {
            c = view.scan(c, 1000, |_, _| all += 1);
            if c == 0 {
                break;
            }
        }
        assert_eq!(all, 10_000);
    }
}
