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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::format;
use crate::keydir::{Entry, KeyDir};

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

/// Misses between two checks of whether the store's live data would fit the cache
/// ([`ValueCache::reads_ahead`]).
const RECHECK_EVERY: u64 = 1024;

/// A byte-bounded cache of values by record location.
pub(crate) struct ValueCache {
    inner: Inner,
    /// The budget, in the units of [`ByBytes`].
    bytes: u64,
    /// Misses so far, to pace the check below.
    misses: AtomicU64,
    /// Whether reads take the values after the one asked for: the last check found that every
    /// live record would fit the cache.
    ahead: AtomicBool,
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
            bytes,
            misses: AtomicU64::new(0),
            ahead: AtomicBool::new(false),
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

    /// Whether a miss should also cache the values stored after the one read (see
    /// [`ValueCache::insert_following`]): only while every live record of the store would fit
    /// the cache, so that values nobody asked for never push out values read. (Measured with a
    /// cache smaller than the store: values read ahead cost a zipfian read load a quarter of
    /// its rate, although they were evicted first.) Counts a miss; every [`RECHECK_EVERY`]
    /// misses (the first included) it checks again with `live()`: the bytes of live records
    /// and the number of keys.
    pub(crate) fn reads_ahead(&self, live: impl FnOnce() -> (u64, usize)) -> bool {
        if self
            .misses
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(RECHECK_EVERY)
        {
            let (bytes, keys) = live();
            self.ahead
                .store(self.holds_all(bytes, keys), Ordering::Relaxed);
        }
        self.ahead.load(Ordering::Relaxed)
    }

    /// Whether a store whose live records take `bytes` over `keys` keys would fit the cache
    /// whole (each value charged at most its record's bytes plus the fixed overhead).
    pub(crate) fn holds_all(&self, bytes: u64, keys: usize) -> bool {
        bytes.saturating_add(keys as u64 * OVERHEAD) <= self.bytes
    }

    /// Whether the cache holds a value for the record `e` points at (of any seq).
    pub(crate) fn holds(&self, e: &Entry) -> bool {
        self.inner.contains_key(&location(e))
    }

    /// Caches the live values of the records in `bytes`, which follow offset `at` of datafile
    /// `file_id` (read with the record before them): each record up to the first that is
    /// incomplete or fails its checks, cached if the keydir names that very record (file,
    /// offset, seq), it holds its value and the cache does not hold it yet. Returns how many
    /// were cached.
    pub(crate) fn insert_following(
        &self,
        keydir: &KeyDir,
        file_id: u32,
        mut at: u64,
        mut bytes: &[u8],
    ) -> u64 {
        let mut cached = 0;
        while let Ok(rec) = format::decode_record(bytes) {
            let len = rec.header.record_len();
            let live = keydir.get(rec.key).filter(|e| {
                e.file_id == file_id
                    && u64::from(e.offset) == at
                    && e.seq == rec.header.seq
                    && !e.is_apart()
            });
            let cold = |e: &Entry| !self.holds(e);
            if let Some(e) = live.filter(|e| !rec.header.is_tombstone() && cold(e)) {
                self.insert_slice(&e, rec.value);
                cached += 1;
            }
            let Some(next) = bytes.get(len as usize..) else {
                break;
            };
            bytes = next;
            at += len;
        }
        cached
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

    /// Only the records the keydir names (same file, offset and seq) are cached: not a stale
    /// one, not a tombstone, not one in another file; a record cut short or damaged ends the
    /// walk. Values read ahead stop once the store's live records would not fit the cache.
    #[test]
    fn values_after_a_read_are_cached_only_if_live_and_whole() {
        let keydir = KeyDir::new();
        let mut buf = Vec::new();
        let at = 1000u64;
        // (key, seq, flags, value, (file, seq) the keydir names)
        type Rec = (&'static [u8], u64, u8, &'static [u8], (u32, u64));
        let recs: [Rec; 5] = [
            (b"live", 5, 0, b"one", (7, 5)),
            (b"stale", 6, 0, b"old", (7, 60)),
            (b"gone", 7, format::FLAG_TOMBSTONE, b"", (7, 7)),
            (b"other", 8, 0, b"elsewhere", (8, 8)),
            (b"live2", 9, 0, b"two", (7, 9)),
        ];
        let mut entries = Vec::new();
        for (key, seq, flags, value, kd) in recs {
            let offset = at + buf.len() as u64;
            format::encode_record(&mut buf, seq, 0, flags, key, value);
            let e = Entry {
                seq,
                expiry_ms: 0,
                file_id: 7,
                offset: offset as u32,
                len: format::record_len(key.len(), value.len()) as u32,
                crc: 0,
            };
            let (file_id, seq) = kd;
            keydir.install(key, Entry { file_id, seq, ..e });
            entries.push(e);
        }
        let whole = buf.len();
        // A record cut short, then one that would be live after it: never reached.
        format::encode_record(&mut buf, 10, 0, 0, b"cut", b"value");
        buf.truncate(buf.len() - 2);
        let c = ValueCache::new(1 << 20).expect("cache");
        assert_eq!(c.insert_following(&keydir, 7, at, &buf), 2);
        let got = |c: &ValueCache, i: usize| c.get(&entries[i]).map(|v| v.to_vec());
        assert_eq!(got(&c, 0).as_deref(), Some(&b"one"[..]));
        assert_eq!(got(&c, 4).as_deref(), Some(&b"two"[..]));
        for i in [1, 2, 3] {
            assert_eq!(got(&c, i), None, "record {i} was cached");
        }
        // A damaged byte in the second record stops the walk before the live one after it.
        let c = ValueCache::new(1 << 20).expect("cache");
        let mut bad = buf[..whole].to_vec();
        bad[entries[1].offset as usize - at as usize + format::RECORD_HEADER_LEN] ^= 1;
        assert_eq!(c.insert_following(&keydir, 7, at, &bad), 1);
        assert_eq!(got(&c, 0).as_deref(), Some(&b"one"[..]));
        assert_eq!(got(&c, 4), None);

        // Read ahead while every live record fits (checked on the first miss and every
        // RECHECK_EVERY after), not once they do not.
        let c = ValueCache::new(64 * 1024).expect("cache");
        assert!(c.reads_ahead(|| (1000, 10)));
        for _ in 1..RECHECK_EVERY {
            assert!(c.reads_ahead(|| unreachable!("checked between rechecks")));
        }
        assert!(!c.reads_ahead(|| (64 * 1024, 1)));
    }
}
