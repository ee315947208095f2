//! Point-in-time snapshots and their iterators.

use std::collections::VecDeque;
use std::pin::Pin as StdPin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;

use super::{Db, Inner};
use crate::clock::now_ms;
use crate::keydir::{Entry, FrozenKeyDir, Position};
use crate::merge::MergeMsg;
use crate::state::Shared;
use crate::Result;

/// Most records one iterator group reads at once.
const GROUP_RECORDS: usize = 512;
/// Most record bytes one iterator group reads at once (a single larger record is read alone).
const GROUP_BYTES: u64 = 4 << 20;

/// A point-in-time view of the store: it sees exactly the writes acknowledged before it was
/// taken (and each atomic batch whole or not at all), whatever is written, deleted, expired or
/// merged afterwards. Cheap to take and to clone.
///
/// Time stands still in a snapshot too: a key with a TTL is live in it if it was live when
/// the snapshot was taken.
///
/// A snapshot pins the datafiles it reads: a merge that finishes while it lives keeps its
/// input files on disk until the last snapshot that may read them drops (a crash meanwhile
/// leaves nothing behind: the next open deletes them). Keeping a snapshot for long therefore
/// holds disk space, and memory: each keydir shard changed meanwhile is copied once
/// (1/64 of the keydir each). A snapshot keeps its store's engine alive; after
/// [`Db::close`] its reads return [`crate::Error::Closed`].
///
/// ```
/// # fn main() -> Result<(), ringcask::Error> {
/// # let tmp = tempfile::tempdir()?;
/// use futures::StreamExt;
/// use ringcask::{Db, Options};
///
/// futures::executor::block_on(async {
///     let db = Db::open(tmp.path(), Options::default()).await?;
///     db.put("user/1", "ada").await?;
///     let snap = db.snapshot();
///     db.put("user/2", "grace").await?;
///     db.delete("user/1").await?;
///     assert_eq!(snap.get("user/1").await?.as_deref(), Some(&b"ada"[..]));
///     assert_eq!(snap.get("user/2").await?, None);
///     assert_eq!(snap.len(), 1);
///     let mut it = snap.iter_prefix("user/");
///     while let Some(item) = it.next().await {
///         let (k, v) = item?;
///         assert_eq!((&k[..], &v[..]), (&b"user/1"[..], &b"ada"[..]));
///     }
///     db.close().await
/// })
/// # }
/// ```
#[derive(Clone)]
pub struct Snapshot {
    inner: Arc<SnapshotInner>,
}

struct SnapshotInner {
    db: Db,
    view: FrozenKeyDir,
    now_ms: u64,
    _pin: FilePin,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("dir", &self.inner.db.inner.dir)
            .field("keys", &self.inner.view.len())
            .finish()
    }
}

/// A pin on the datafiles of the store as they are now (see [`crate::state::Pins`]): taken
/// by a snapshot before it freezes the keydir, and by a checkpoint before it lists the files.
pub(super) struct FilePin {
    shared: Arc<Shared>,
    generation: u64,
    merge: mpsc::Sender<MergeMsg>,
}

impl FilePin {
    pub(super) fn new(inner: &Inner) -> FilePin {
        FilePin {
            shared: inner.shared.clone(),
            generation: inner.shared.with_pins(|p| p.pin()),
            merge: inner.merge_tx.clone(),
        }
    }
}

impl Drop for FilePin {
    fn drop(&mut self) {
        if self.shared.with_pins(|p| p.unpin(self.generation)) {
            // The merge thread deletes them; if it is busy, its next tick does.
            let _ = self.merge.try_send(MergeMsg::Unpinned);
        }
    }
}

impl Snapshot {
    pub(super) fn take(db: &Db) -> Snapshot {
        let inner = &db.inner;
        // Pin before freezing: the pin's generation is then never newer than the view.
        let pin = FilePin::new(inner);
        let view = inner.appender.quiesced(|| inner.keydir.freeze());
        Snapshot {
            inner: Arc::new(SnapshotInner {
                db: db.clone(),
                view,
                now_ms: now_ms(),
                _pin: pin,
            }),
        }
    }

    /// The value `key` had when the snapshot was taken, or `None` if it was absent, deleted
    /// or expired then.
    ///
    /// # Errors
    /// As [`Db::get`].
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let key = key.as_ref();
        let db = self.inner.db.live()?;
        match self.live_entry(key) {
            None => Ok(None),
            Some(e) => db.read_value(key, e).await.map(Some),
        }
    }

    /// Whether `key` had a live value when the snapshot was taken. Answered from memory.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> bool {
        self.live_entry(key.as_ref()).is_some()
    }

    fn live_entry(&self, key: &[u8]) -> Option<Entry> {
        self.inner
            .view
            .get(key)
            .filter(|e| !e.is_expired(self.inner.now_ms))
    }

    /// Number of keys, counted as [`Db::len`] counted them when the snapshot was taken.
    pub fn len(&self) -> usize {
        self.inner.view.len()
    }

    /// Whether the snapshot holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A stream of every live `(key, value)` of the snapshot, in no particular order.
    ///
    /// Memory stays bounded whatever the store's size: the stream walks the frozen keydir and
    /// reads values in groups (up to 512 records or 4 MiB), each sorted by file and offset so
    /// that the disk sees near-sequential reads, and issued together (reads that miss the page
    /// cache go to the io threads in one submission). A read error is yielded as an `Err`
    /// item and the stream goes on with the next key.
    pub fn iter(&self) -> Iter {
        self.iter_prefix([])
    }

    /// As [`Snapshot::iter`], over the keys that start with `prefix` only.
    pub fn iter_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        let state = IterState {
            snap: self.clone(),
            prefix: Bytes::copy_from_slice(prefix.as_ref()),
            at: Some(Position::default()),
            ready: VecDeque::new(),
        };
        Iter {
            stream: Box::pin(futures::stream::unfold(state, IterState::next)),
        }
    }

    /// One page of a stateless scan of the snapshot's keys: as [`Db::scan`], over a view that
    /// does not change, so every key is returned exactly once.
    pub fn scan(&self, cursor: u64, count: usize) -> (u64, Vec<Bytes>) {
        let now = self.inner.now_ms;
        let mut keys = Vec::new();
        let next = self.inner.view.scan(cursor, count, |k, e| {
            if !e.is_expired(now) {
                keys.push(Bytes::copy_from_slice(k));
            }
        });
        (next, keys)
    }
}

/// The boxed stream behind an [`Iter`].
type ItemStream = StdPin<Box<dyn Stream<Item = Result<(Bytes, Bytes)>> + Send>>;

/// A stream of `(key, value)` pairs over a [`Snapshot`] (see [`Snapshot::iter`]).
///
/// `Iter: futures::Stream<Item = ringcask::Result<(Bytes, Bytes)>> + Send + Unpin`; use it with
/// `futures::StreamExt::next`. It holds its snapshot (and so its pins) until dropped.
pub struct Iter {
    stream: ItemStream,
}

impl std::fmt::Debug for Iter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iter").finish_non_exhaustive()
    }
}

impl Stream for Iter {
    type Item = Result<(Bytes, Bytes)>;

    fn poll_next(mut self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

struct IterState {
    snap: Snapshot,
    prefix: Bytes,
    /// Where the walk of the frozen keydir continues; `None` once it is done.
    at: Option<Position>,
    /// Items read and not yet yielded.
    ready: VecDeque<Result<(Bytes, Bytes)>>,
}

impl IterState {
    async fn next(mut self) -> Option<(Result<(Bytes, Bytes)>, IterState)> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some((item, self));
            }
            let at = self.at?;
            self.read_group(at).await;
        }
    }

    /// Reads the next group of records from `at` into `ready`.
    async fn read_group(&mut self, at: Position) {
        let snap = &self.snap.inner;
        let mut group: Vec<(Bytes, Entry)> = Vec::new();
        let mut bytes = 0u64;
        self.at = snap.view.visit(at, |k, e| {
            if k.starts_with(&self.prefix) && !e.is_expired(snap.now_ms) {
                group.push((Bytes::copy_from_slice(k), *e));
                bytes += u64::from(e.len);
            }
            group.len() < GROUP_RECORDS && bytes < GROUP_BYTES
        });
        if group.is_empty() {
            return;
        }
        let inner: &Inner = match snap.db.live() {
            Ok(inner) => inner,
            Err(e) => {
                self.at = None;
                self.ready.push_back(Err(e));
                return;
            }
        };
        group.sort_unstable_by_key(|(_, e)| (e.file_id, e.offset));
        let reads = group.iter().map(|(k, e)| inner.read_value(k, *e));
        let values = futures::future::join_all(reads).await;
        for ((k, _), v) in group.into_iter().zip(values) {
            self.ready.push_back(v.map(|v| (k, v)));
        }
    }
}
