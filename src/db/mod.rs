//! The public handle.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::clock::{expiry_after, now_ms};
use crate::keydir::{Entry, KeyDir};
use crate::merge::{self, MergeMsg, MergeReport, Merger};
use crate::options::IoBackendKind;
use crate::read::cache::ValueCache;
use crate::read::filetable::FileTable;
use crate::read::reader::ReaderMsg;
use crate::read::ring::RingReads;
use crate::state::Shared;
use crate::write::batch;
use crate::write::WriteBatch;
use crate::write::{self, Appended, Appender, BatchIf, Op, ReqRef, Request, WriteMsg, INLINE_MAX};
use crate::{Error, Options, Result};

mod checkpoint;
mod close;
mod conditional;
mod iter;
mod open;
mod read;
mod snapshot;
mod stats;
mod update;

pub use checkpoint::CheckpointReport;
pub use iter::Iter;
pub use snapshot::Snapshot;
pub use update::{Current, Expiry, Update};

use open::{start_writer, Ready, Threads};

/// An open store: a small, cloneable handle (`Clone + Send + Sync + 'static`).
///
/// Every clone refers to the same store. The store closes when [`Db::close`] is called on any
/// clone (which returns once the store is closed and its lock released), or when the last clone
/// (and the last [`Snapshot`] or [`Iter`]) is dropped: the drop returns at once and the close
/// (final sync, seal, keydir snapshot) runs on an engine thread. An open of the same directory
/// in this process waits for that close (up to 30 s); another process gets [`Error::Locked`] until it is
/// done, so call `close` before handing the store to another process.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("dir", &self.inner.dir).finish()
    }
}

// Field order matters: the channels drop (stopping the io threads) before `threads` joins them.
struct Inner {
    dir: PathBuf,
    opts: Options,
    keydir: Arc<KeyDir>,
    shared: Arc<Shared>,
    files: Arc<FileTable>,
    kind: IoBackendKind,
    fallback_reason: Option<String>,
    /// The append path, shared with the writer thread.
    appender: Arc<Appender>,
    /// Recently read values, if `Options::value_cache_bytes` asks for them.
    cache: Option<Arc<ValueCache>>,
    write_tx: mpsc::Sender<WriteMsg>,
    merge_tx: mpsc::Sender<MergeMsg>,
    readers: Vec<mpsc::Sender<ReaderMsg>>,
    next_reader: AtomicUsize,
    /// Direct reads the caller submits itself (see [`Options::caller_submits_reads`]).
    ring_reads: Option<Arc<RingReads>>,
    /// Reads at the io threads now (see `read::regime`).
    reads_in_flight: AtomicUsize,
    closed: AtomicBool,
    /// Opened with [`Db::open_read_only`]: writes return [`Error::ReadOnly`].
    read_only: bool,
    /// A read-only handle's shared directory lock (a read-write store's lock is held by its
    /// writer and merge threads), released by `close`.
    ro_lock: std::sync::Mutex<Option<crate::io::lock::DirLock>>,
    /// Joined on drop, after the channels above have closed.
    _threads: Threads,
}

impl Db {
    /// Opens the store in `path`, creating the directory if needed, and recovers its contents.
    ///
    /// Works from any async runtime: the engine runs its own io threads.
    ///
    /// # Errors
    /// [`Error::Locked`] if another handle (in this or another process) has the directory open;
    /// [`Error::Corrupt`] / [`Error::UnsupportedVersion`] for damaged or foreign files;
    /// [`Error::InvalidOptions`]; [`Error::Io`].
    pub async fn open(path: impl AsRef<Path>, opts: Options) -> Result<Db> {
        opts.validate()?;
        let dir = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| {
            crate::io::context(e, format!("creating the store directory {}", dir.display()))
        })?;
        open::wait_for_background_close(&dir).await;
        let shared = Arc::new(Shared::default());
        let (write_tx, write_rx) = mpsc::channel(opts.write_queue_depth);
        let (writer, ready) = start_writer(&dir, &opts, &shared, write_rx).await?;
        let Ready {
            kind,
            fallback_reason,
            keydir,
            appender,
            lock,
        } = ready;
        let mut threads = Threads(vec![writer], shared.clone());
        let readers = threads.spawn_readers(&dir, &opts, kind)?;
        let files = Arc::new(FileTable::new(dir.clone(), opts.fault_injector.clone()));
        let ring = RingReads::for_store(&dir, &opts, kind, opts.direct_writes());
        if let Some(ring) = ring.as_ref().filter(|_| opts.direct_writes()) {
            appender.group.attach_ring(ring.clone());
        }
        let ring_reads = ring.filter(|_| opts.caller_submits_reads);
        let (merge_tx, merge_rx) = mpsc::channel(16);
        let cache = ValueCache::new(opts.value_cache_budget()).map(Arc::new);
        let merger = Merger {
            cache: cache.clone(),
            files: files.clone(),
            dir: dir.clone(),
            kind,
            opts: opts.clone(),
            keydir: keydir.clone(),
            shared: shared.clone(),
            readers: readers.clone(),
            ring_reads: ring_reads.clone(),
            writer: write_tx.clone(),
            broken: None,
        };
        threads.0.push(merge::spawn(merger, lock, merge_rx)?);
        Ok(Db {
            inner: Arc::new(Inner {
                dir,
                opts,
                keydir,
                shared,
                files,
                kind,
                fallback_reason,
                appender,
                cache,
                write_tx,
                merge_tx,
                readers,
                next_reader: AtomicUsize::new(0),
                ring_reads,
                reads_in_flight: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                read_only: false,
                ro_lock: std::sync::Mutex::new(None),
                _threads: threads,
            }),
        })
    }

    fn live(&self) -> Result<&Inner> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(&self.inner)
    }

    /// As [`Db::live`], for a call that changes the store.
    fn writable(&self) -> Result<&Inner> {
        let inner = self.live()?;
        if inner.read_only {
            return Err(Error::ReadOnly);
        }
        Ok(inner)
    }

    /// Whether this handle was opened with [`Db::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// The value of `key`, or `None` if it is absent, deleted or expired.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the record on disk fails its checksum; [`Error::Io`];
    /// [`Error::Closed`].
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let key = key.as_ref();
        let inner = self.live()?;
        inner.shared.gets.add(1);
        let Some(e) = inner.keydir.get(key) else {
            return Ok(None);
        };
        if e.expiry_ms != 0 && e.is_expired(now_ms()) {
            inner.reclaim_expired(key, e);
            return Ok(None);
        }
        Self::read_current(inner, key, e).await
    }

    /// Retries a read whose file a merge deleted meanwhile: the keydir then points elsewhere.
    async fn read_current(inner: &Inner, key: &[u8], mut e: Entry) -> Result<Option<Bytes>> {
        for _ in 0..8 {
            match inner.read_value(key, e).await {
                Err(Error::Io(err)) if err.kind() == std::io::ErrorKind::NotFound => {
                    match inner.keydir.get(key) {
                        None => return Ok(None),
                        Some(now) if now != e => e = now,
                        Some(_) => return Err(Error::Io(err)),
                    }
                }
                other => return other.map(Some),
            }
        }
        Err(Error::Io(std::io::Error::other(
            "the record kept moving during a read",
        )))
    }

    /// Whether `key` has a live (present, unexpired) value. Answered from memory; `false` once
    /// the store is closed.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> bool {
        self.live().is_ok()
            && self
                .inner
                .keydir
                .get(key.as_ref())
                .is_some_and(|e| e.expiry_ms == 0 || !e.is_expired(now_ms()))
    }

    /// Number of keys, in constant time: every live key, plus keys whose TTL passed after they
    /// were written and that no read, expiry sweep (`merge_check_interval_ms`) or merge has
    /// reclaimed yet. A put whose TTL had already passed is never counted. 0 once the store is
    /// closed.
    pub fn len(&self) -> usize {
        match self.live() {
            Ok(inner) => inner.keydir.len(),
            Err(_) => 0,
        }
    }

    /// Whether the store holds no live key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All live keys, in no particular order; none once the store is closed.
    pub fn keys(&self) -> Vec<Bytes> {
        self.keys_with_prefix([])
    }

    /// All live keys starting with `prefix`, in no particular order; none once the store is
    /// closed.
    pub fn keys_with_prefix(&self, prefix: impl AsRef<[u8]>) -> Vec<Bytes> {
        let prefix = prefix.as_ref();
        let now = now_ms();
        let mut out = Vec::new();
        if self.live().is_err() {
            return out;
        }
        self.inner.keydir.for_each(|k, e| {
            if k.starts_with(prefix) && !e.is_expired(now) {
                out.push(Bytes::copy_from_slice(k));
            }
        });
        out
    }

    /// A point-in-time view of the store: see [`Snapshot`]. Taking one costs a pause of the
    /// appends for 64 reference-count increments; it never fails (on a closed store its reads
    /// return [`Error::Closed`]).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::take(self)
    }

    /// A stream of every live `(key, value)`, as of now: the iterator of a fresh
    /// [`Db::snapshot`] (see [`Snapshot::iter`]).
    ///
    /// ```
    /// # fn main() -> Result<(), ringcask::Error> {
    /// # let tmp = tempfile::tempdir()?;
    /// use futures::StreamExt;
    /// # futures::executor::block_on(async {
    /// let db = ringcask::Db::open(tmp.path(), ringcask::Options::default()).await?;
    /// db.put("a", "1").await?;
    /// db.put("b", "2").await?;
    /// let mut total = 0;
    /// let mut it = db.iter();
    /// while let Some(item) = it.next().await {
    ///     let (_key, value) = item?;
    ///     total += value.len();
    /// }
    /// assert_eq!(total, 2);
    /// # db.close().await })
    /// # }
    /// ```
    pub fn iter(&self) -> Iter {
        self.snapshot().iter()
    }

    /// As [`Db::iter`], over the keys that start with `prefix` only.
    pub fn iter_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        self.snapshot().iter_prefix(prefix)
    }

    /// One page of a stateless cursor scan over the keys, with Redis `SCAN`'s promises: start
    /// with cursor 0 and pass each returned cursor back in; the scan is done when the
    /// returned cursor is 0. Every key present (and unexpired) for the whole scan is returned
    /// exactly once, even while the store grows, shrinks or merges; keys written or deleted
    /// during the scan may or may not be. `count` is a hint of the keys per page (a page may
    /// hold fewer, or a few more). Holds no state between calls and no lock across pages.
    /// Cursors are opaque: one not returned by this store's current run ends the scan (0).
    /// A closed store returns `(0, [])`.
    ///
    /// ```
    /// # fn main() -> Result<(), ringcask::Error> {
    /// # let tmp = tempfile::tempdir()?;
    /// # futures::executor::block_on(async {
    /// let db = ringcask::Db::open(tmp.path(), ringcask::Options::default()).await?;
    /// for i in 0..100 {
    ///     db.put(format!("k{i}"), "v").await?;
    /// }
    /// let (mut cursor, mut seen) = (0, 0);
    /// loop {
    ///     let (next, keys) = db.scan(cursor, 10);
    ///     seen += keys.len();
    ///     if next == 0 {
    ///         break;
    ///     }
    ///     cursor = next;
    /// }
    /// assert_eq!(seen, 100);
    /// # db.close().await })
    /// # }
    /// ```
    pub fn scan(&self, cursor: u64, count: usize) -> (u64, Vec<Bytes>) {
        let mut keys = Vec::new();
        let Ok(inner) = self.live() else {
            return (0, keys);
        };
        let now = now_ms();
        let next = inner.keydir.scan(cursor, count, |k, e| {
            if !e.is_expired(now) {
                keys.push(Bytes::copy_from_slice(k));
            }
        });
        (next, keys)
    }

    /// Stores `value` under `key`. Both are only read (`&[u8]`, `Vec<u8>`, `String`, `Bytes`,
    /// ...): the bytes are encoded straight into the datafile append, and copied only when the
    /// write has to be queued for the writer thread.
    ///
    /// # Errors
    /// [`Error::EmptyKey`], [`Error::KeyTooLarge`], [`Error::ValueTooLarge`];
    /// [`Error::Io`] / [`Error::Poisoned`] if the append or sync fails; [`Error::Closed`].
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.submit_one(Op::Put {
            key: key.as_ref(),
            value: value.as_ref(),
            expiry_ms: 0,
        })
        .await
    }

    /// Stores `value` under `key`; it reads as absent once `ttl` has passed.
    ///
    /// # Errors
    /// As [`Db::put`].
    pub async fn put_with_ttl(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> Result<()> {
        self.writable()?;
        self.inner.shared.has_ttl.store(true, Ordering::Relaxed);
        self.submit_one(Op::Put {
            key: key.as_ref(),
            value: value.as_ref(),
            expiry_ms: expiry_after(ttl),
        })
        .await
    }

    /// Deletes `key` (writes a tombstone). Deleting an absent key is not an error.
    ///
    /// # Errors
    /// As [`Db::put`].
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        self.submit_one(Op::Delete { key: key.as_ref() }).await
    }

    /// Applies every operation of `batch` atomically: after a crash, all or none are found.
    ///
    /// # Errors
    /// As [`Db::put`] for any operation (then nothing is applied), and
    /// [`Error::BatchTooLarge`] if the batch does not fit in one datafile.
    pub async fn write(&self, batch: WriteBatch) -> Result<()> {
        self.write_when(batch, BatchIf::Always).await.map(drop)
    }

    /// Applies `batch` atomically if `when` holds; whether it did.
    pub(super) async fn write_when(&self, batch: WriteBatch, when: BatchIf) -> Result<bool> {
        let inner = self.writable()?;
        for op in &batch.ops {
            batch::validate(op, &inner.opts)?;
            if let Op::Put { expiry_ms, .. } = op {
                if *expiry_ms != 0 {
                    inner.shared.has_ttl.store(true, Ordering::Relaxed);
                }
            }
        }
        if batch.ops.is_empty() {
            return Ok(true);
        }
        let ops = &batch.ops;
        inner
            .submit(ReqRef::Batch(ops, when), || {
                Request::Batch(ops.clone(), when)
            })
            .await
    }

    async fn submit_one(&self, op: Op<&[u8]>) -> Result<()> {
        let inner = self.writable()?;
        batch::validate(&op, &inner.opts)?;
        inner
            .submit(ReqRef::Single(op), || Request::Single(op.to_owned_op()))
            .await
            .map(drop)
    }

    /// Forces everything acknowledged so far to stable storage (`fdatasync`).
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Poisoned`]; [`Error::Closed`].
    pub async fn sync(&self) -> Result<()> {
        let inner = self.live()?;
        if inner.read_only {
            // Nothing was written through this handle.
            return Ok(());
        }
        // Up to the last append now, not "everything, whenever the request is served": a sync
        // that starts after this call and covers it (another caller's) answers it too, so
        // concurrent callers share fdatasyncs instead of queueing one each.
        let upto = inner.appender.appended_seq();
        if inner.appender.is_synced(upto) {
            return Ok(());
        }
        write::request_sync(&inner.write_tx, upto).await
    }

    /// Merges every sealed datafile now: live records are rewritten into new files (with hint
    /// files) and the old files deleted, reclaiming the space of overwritten, deleted and expired
    /// records. Reads and writes continue meanwhile. Crash-safe at every step.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if an input is damaged (nothing is changed then); [`Error::Io`];
    /// [`Error::Closed`] if the store closes meanwhile.
    pub async fn merge(&self) -> Result<MergeReport> {
        let inner = self.writable()?;
        let (reply, rx) = oneshot::channel();
        inner
            .merge_tx
            .send(MergeMsg::Run { reply })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// Syncs, seals the active datafile (writing its hint file) and releases the directory lock.
    /// Every clone of this handle is closed; their calls return [`Error::Closed`]. Calling it
    /// again is a no-op.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Poisoned`] if the final sync or seal fails.
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        tracing::info!(dir = %self.inner.dir.display(), "closing the store");
        if self.inner.read_only {
            drop(
                self.inner
                    .ro_lock
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(),
            );
            tracing::info!(dir = %self.inner.dir.display(), "read-only store closed");
            return Ok(());
        }
        let inner = &self.inner;
        let res = close::close_engine(&inner.shared, &inner.write_tx, &inner.merge_tx).await;
        tracing::info!(dir = %self.inner.dir.display(), ok = res.is_ok(), "store closed");
        res
    }
}

impl Inner {
    /// Appends `req` on this thread when it can (see [`crate::write`]): `Ok(Some(..))` once
    /// appended (or refused, for a conditional request), `Ok(None)` when the writer thread must
    /// take it.
    fn append_inline(&self, req: ReqRef<'_>) -> Result<Option<Appended>> {
        if !self.opts.inline_writes || req.encoded_len() > INLINE_MAX {
            return Ok(None);
        }
        let appended = self.appender.try_append(req)?;
        if let Some(Appended::Seq(seq)) = appended {
            if self.appender.take_writeback_due() {
                write::request_writeback(&self.write_tx, seq);
            }
            self.fill_cache(req, seq);
        }
        Ok(appended)
    }

    /// Appends `req` (inline, or through the writer thread) and waits until it is acknowledged
    /// under the sync policy; `Ok(false)` when its condition did not hold.
    async fn submit(&self, req: ReqRef<'_>, owned: impl FnOnce() -> Request) -> Result<bool> {
        match self.append_inline(req)? {
            Some(Appended::Seq(seq)) => self.await_durable(seq).await.map(|()| true),
            Some(Appended::Refused) => Ok(false),
            None => self.queue(owned()).await,
        }
    }

    /// Under [`crate::SyncPolicy::Always`], waits for a sync covering seq `seq`: under the
    /// direct-IO writer with a shared ring, a group write this caller leads or waits for
    /// (see `write::group`); otherwise an `fdatasync` group of the writer thread.
    async fn await_durable(&self, seq: u64) -> Result<()> {
        if self.opts.sync != crate::SyncPolicy::Always || self.appender.is_synced(seq) {
            return Ok(());
        }
        let alone = self.appender.waiting();
        if self.opts.direct_writes() && self.appender.sync_led(seq, &alone).await? {
            return Ok(());
        }
        write::request_sync(&self.write_tx, seq).await
    }

    /// Hands `req` to the writer thread and waits for its acknowledgement; `Ok(false)` when a
    /// conditional request was refused.
    async fn queue(&self, ops: Request) -> Result<bool> {
        let (reply, rx) = oneshot::channel();
        self.write_tx
            .send(WriteMsg::Write { ops, reply })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}
