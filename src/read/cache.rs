//! The optional value cache (`Options::value_cache_bytes`).
//!
//! A Bitcask keeps only keys in memory and leaves values to the OS page cache; a `get` then
//! costs a `preadv2` system call even when the page is cached. The value cache keeps recently
//! read values in process memory instead, bounded in bytes, with quick_cache's S3-FIFO policy
//! (scan-resistant: one pass over cold keys does not flush the hot ones).
//!
//! It needs no invalidation: a record at (file id, offset) never changes — files are
//! append-only and ids are never reused — and a `get` only looks up the location its keydir
//! entry names, so an overwritten, deleted, expired or merged-away value is simply never asked
//! for again and ages out. The entry's seq is stored alongside and checked as well.

use bytes::Bytes;
use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::Weighter;

use crate::keydir::Entry;

/// Bytes charged per cached value on top of its length: the cache slot (key, seq, `Bytes`),
/// its share of the table, and the allocator's header and rounding of the value's own block.
/// Measured: 200k cached 100-byte values took ~40 MB of RSS, ~200 bytes each.
const OVERHEAD: u64 = 112;

/// Values shorter than this are cached as copies of their own, and copied out on a hit (see
/// [`Cached`]).
const COPY_BELOW: usize = 1024;

/// A cached value. A small one is copied out on a hit: a fresh allocation and a copy of its
/// bytes, which the caller reads next anyway, instead of a shared reference count to increment
/// — one cache line fewer to fetch per hit, and none that threads reading the same hot key
/// pass back and forth. A large one is shared (copying it would cost more).
#[derive(Clone)]
enum Cached {
    Small(Box<[u8]>),
    Large(Bytes),
}

impl Cached {
    fn len(&self) -> usize {
        match self {
            Cached::Small(b) => b.len(),
            Cached::Large(b) => b.len(),
        }
    }

    fn of(value: &[u8], shared: impl FnOnce() -> Bytes) -> Cached {
        if value.len() < COPY_BELOW {
            Cached::Small(Box::from(value))
        } else {
            Cached::Large(shared())
        }
    }
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<u64, (u64, Cached)> for ByBytes {
    fn weight(&self, _key: &u64, val: &(u64, Cached)) -> u64 {
        val.1.len() as u64 + OVERHEAD
    }
}

type Inner = Cache<
    u64,
    (u64, Cached),
    ByBytes,
    foldhash::fast::RandomState,
    DefaultLifecycle<u64, (u64, Cached)>,
>;

/// A byte-bounded cache of values by record location.
pub(crate) struct ValueCache {
    inner: Inner,
}

fn location(e: &Entry) -> u64 {
    (u64::from(e.file_id) << 32) | u64::from(e.offset)
}

impl ValueCache {
    /// A cache of at most `bytes` (values plus a fixed overhead each); `None` for 0.
    pub(crate) fn new(bytes: u64) -> Option<ValueCache> {
        if bytes == 0 {
            return None;
        }
        let items = (bytes / 256).clamp(16, 1 << 24) as usize;
        Some(ValueCache {
            inner: Cache::with(
                items,
                bytes,
                ByBytes,
                foldhash::fast::RandomState::default(),
                DefaultLifecycle::default(),
            ),
        })
    }

    /// The cached value of the record `e` points at.
    pub(crate) fn get(&self, e: &Entry) -> Option<Bytes> {
        match self.inner.get(&location(e)) {
            Some((seq, Cached::Small(b))) if seq == e.seq => Some(Bytes::from(b)),
            Some((seq, Cached::Large(v))) if seq == e.seq => Some(v),
            _ => None,
        }
    }

    /// Remembers the value of the record `e` points at (just read and verified). A small value
    /// is copied into a block of its own, so that the cache does not pin the record buffer
    /// around it (header and key, a large share of a small record); a large one is kept as the
    /// slice it is, as copying it would cost more than the few bytes it pins.
    pub(crate) fn insert(&self, e: &Entry, value: &Bytes) {
        let v = Cached::of(value, || value.clone());
        self.inner.insert(location(e), (e.seq, v));
    }

    /// Remembers `value` (just written) as the value of the record `e` points at, copied.
    pub(crate) fn insert_slice(&self, e: &Entry, value: &[u8]) {
        let v = Cached::of(value, || Bytes::copy_from_slice(value));
        self.inner.insert(location(e), (e.seq, v));
    }

    /// Bytes held now (values plus overhead).
    pub(crate) fn weight(&self) -> u64 {
        self.inner.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(file_id: u32, offset: u32, seq: u64) -> Entry {
        Entry {
            seq,
            expiry_ms: 0,
            file_id,
            offset,
            len: 100,
            crc: 0,
        }
    }

    #[test]
    fn hits_only_the_same_record_and_stays_bounded() {
        assert!(ValueCache::new(0).is_none());
        let c = ValueCache::new(64 * 1024).expect("cache");
        let e = entry(3, 40, 9);
        assert_eq!(c.get(&e), None);
        c.insert(&e, &Bytes::from_static(b"value"));
        assert_eq!(c.get(&e).as_deref(), Some(&b"value"[..]));
        // Same location, another seq (cannot happen in a store, but must not hit).
        assert_eq!(c.get(&entry(3, 40, 10)), None);
        assert_eq!(c.get(&entry(3, 41, 9)), None);
        assert_eq!(c.get(&entry(4, 40, 9)), None);
        for i in 0..10_000u32 {
            c.insert(
                &entry(5, i * 200, u64::from(i)),
                &Bytes::from(vec![1u8; 150]),
            );
        }
        assert!(
            c.weight() <= 64 * 1024,
            "cache holds {} bytes over its bound",
            c.weight()
        );
    }

    /// A small value comes back as a copy of its own (no count shared between callers); a large
    /// one as the same buffer, shared.
    #[test]
    fn small_values_are_copied_out_and_large_ones_shared() {
        let c = ValueCache::new(1 << 20).expect("cache");
        let (small, large) = (entry(1, 0, 1), entry(1, 4096, 2));
        c.insert(&small, &Bytes::from(vec![3u8; 100]));
        let big = Bytes::from(vec![4u8; 4096]);
        c.insert(&large, &big);
        let (a, b) = (c.get(&small).expect("hit"), c.get(&small).expect("hit"));
        assert_eq!((&a[..], &b[..]), (&[3u8; 100][..], &[3u8; 100][..]));
        assert_ne!(a.as_ptr(), b.as_ptr(), "each hit has its own copy");
        let (x, y) = (c.get(&large).expect("hit"), c.get(&large).expect("hit"));
        assert_eq!(x, big);
        assert_eq!(x.as_ptr(), y.as_ptr(), "shared");
        assert_eq!(x.as_ptr(), big.as_ptr(), "the buffer read, not a copy");
    }
}
