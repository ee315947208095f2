//! Point-in-time snapshots and their iterators.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Db, Inner};
use crate::clock::now_ms;
use crate::keydir::{Entry, FrozenKeyDir};
use crate::merge::MergeMsg;
use crate::state::Shared;
use crate::Result;

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
    /// Datafiles (id, length) when the view was frozen: it points into these only.
    files: Vec<(u32, u64)>,
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
        // Under the append lock the usage table lists every file a keydir entry points into
        // (a merge accounts its outputs before repointing to them, and forgets its inputs
        // only after), each with the length covering every applied write.
        let (view, files) = inner.appender.quiesced(|| {
            let files = inner
                .shared
                .with_usage(|u| u.values().map(|f| (f.file_id, f.data_bytes())).collect());
            (inner.keydir.freeze(), files)
        });
        Snapshot {
            inner: Arc::new(SnapshotInner {
                db: db.clone(),
                view,
                files,
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

    pub(super) fn view(&self) -> &FrozenKeyDir {
        &self.inner.view
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.inner.now_ms
    }

    /// Datafiles (id, length) the view may point into, oldest first.
    pub(super) fn files(&self) -> &[(u32, u64)] {
        &self.inner.files
    }

    pub(super) fn db(&self) -> &Db {
        &self.inner.db
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
