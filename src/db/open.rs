//! The io threads a store runs on, and the writer thread's start: lock, recover, serve.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::Db;
use crate::io::lock::DirLock;
use crate::io::Runtime;
use crate::keydir::KeyDir;
use crate::options::IoBackendKind;
use crate::read::reader::{self, ReaderMsg};
use crate::recovery;
use crate::state::Shared;
use crate::write::{Appender, WriteMsg, Writer};
use crate::{Error, Options, Result};

pub(super) struct Threads(pub(super) Vec<JoinHandle<()>>, pub(super) Arc<Shared>);

impl Threads {
    /// Waits for every thread to end.
    pub(super) fn join(&mut self) {
        for t in self.0.drain(..) {
            if t.join().is_err() {
                tracing::error!("a ringcask io thread panicked");
            }
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        // A merge in progress stops at its next step.
        self.1.stopping.store(true, Ordering::SeqCst);
        self.join();
    }
}

/// Directories whose store is being closed in the background (its last handle was dropped
/// without `close`), with the opens waiting for that close to release the lock.
static CLOSING: std::sync::Mutex<BTreeMap<PathBuf, Vec<oneshot::Sender<()>>>> =
    std::sync::Mutex::new(BTreeMap::new());

fn closing() -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, Vec<oneshot::Sender<()>>>> {
    CLOSING.lock().unwrap_or_else(|p| p.into_inner())
}

/// The key of `dir` in [`CLOSING`].
fn closing_key(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Notes that the store in `dir` is being closed in the background.
pub(super) fn begin_background_close(dir: &Path) {
    closing().entry(closing_key(dir)).or_default();
}

/// The background close of `dir` is over (its lock is released): wakes the waiting opens.
pub(super) fn end_background_close(dir: &Path) {
    if let Some(waiters) = closing().remove(&closing_key(dir)) {
        for w in waiters {
            let _ = w.send(());
        }
    }
}

/// Waits (without blocking the thread) until a background close of the store in `dir`, if one
/// is running in this process, has released its lock: an open right after the last handle was
/// dropped gets the store, not [`Error::Locked`]. The wait lasts as long as that close (a
/// final sync and seal).
pub(super) async fn wait_for_background_close(dir: &Path) {
    let rx = {
        let mut map = closing();
        match map.get_mut(&closing_key(dir)) {
            Some(waiters) => {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                rx
            }
            None => return,
        }
    };
    tracing::debug!(dir = %dir.display(), "waiting for the dropped handle's close");
    // Bounded: a close stuck on a dead disk must not hang the open forever (it then fails
    // with `Locked`, as another process's open would).
    let (timer_tx, timer_rx) = oneshot::channel::<()>();
    let timer = std::thread::Builder::new()
        .name("ringcask-open-wait".into())
        .spawn(move || {
            std::thread::sleep(BACKGROUND_CLOSE_WAIT);
            let _ = timer_tx.send(());
        });
    if timer.is_err() {
        let _ = rx.await;
        return;
    }
    if let futures::future::Either::Right(_) = futures::future::select(rx, timer_rx).await {
        tracing::warn!(
            dir = %dir.display(),
            "the dropped handle's close still runs after {BACKGROUND_CLOSE_WAIT:?}"
        );
    }
}

/// Longest an open waits for the background close of a dropped handle of its directory.
const BACKGROUND_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the writer thread reports once the store is open.
pub(super) struct Ready {
    pub(super) kind: IoBackendKind,
    pub(super) fallback_reason: Option<String>,
    pub(super) keydir: Arc<KeyDir>,
    pub(super) appender: Arc<Appender>,
    pub(super) lock: Arc<DirLock>,
}

/// Body of the writer thread: lock, recover, then serve writes.
pub(super) fn writer_main(
    dir: PathBuf,
    opts: Options,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<WriteMsg>,
    ready: oneshot::Sender<Result<Ready>>,
) {
    let (rt, kind, reason) = match Runtime::choose(opts.io_backend) {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let prepared = DirLock::acquire(&dir).and_then(|lock| {
        let (keydir, rec) = recovery::open(&dir, &opts, false)?;
        Ok((Arc::new(lock), rec, Arc::new(keydir)))
    });
    let (lock, rec, keydir) = match prepared {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    shared.with_usage(|u| *u = rec.usage);
    shared.has_ttl.store(rec.has_ttl, Ordering::Relaxed);
    shared
        .next_file_id
        .store(rec.next_file_id, Ordering::SeqCst);
    *shared.recovery.lock().unwrap_or_else(|p| p.into_inner()) = rec.report;
    rt.block_on(async move {
        let w = Writer::start(
            dir,
            kind,
            opts,
            keydir.clone(),
            shared,
            rec.next_seq,
            lock.clone(),
        )
        .await;
        match w {
            Ok(w) => {
                let _ = ready.send(Ok(Ready {
                    kind,
                    fallback_reason: reason,
                    keydir,
                    appender: w.appender(),
                    lock,
                }));
                w.write_recovery_hints(rec.hints_to_write).await;
                w.run(rx).await;
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        }
    });
}

/// Starts the writer thread, which locks the directory and recovers the store, and waits until
/// the store is open.
pub(super) async fn start_writer(
    dir: &Path,
    opts: &Options,
    shared: &Arc<Shared>,
    write_rx: mpsc::Receiver<WriteMsg>,
) -> Result<(JoinHandle<()>, Ready)> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let writer = {
        let (dir, opts, shared) = (dir.to_path_buf(), opts.clone(), shared.clone());
        std::thread::Builder::new()
            .name("ringcask-writer".into())
            .spawn(move || writer_main(dir, opts, shared, write_rx, ready_tx))?
    };
    match ready_rx.await {
        Ok(Ok(ready)) => Ok((writer, ready)),
        Ok(Err(e)) => {
            let _ = writer.join();
            Err(e)
        }
        Err(_) => {
            let _ = writer.join();
            Err(Error::Io(std::io::Error::other(
                "the writer thread stopped during open",
            )))
        }
    }
}

/// What a read-only open prepares on its own thread: the lock, the backend, the keydir.
struct ReadOnlyReady {
    lock: DirLock,
    kind: IoBackendKind,
    fallback_reason: Option<String>,
    keydir: Arc<KeyDir>,
    rec: crate::state::Recovered,
}

fn prepare_read_only(dir: &Path, opts: &Options) -> Result<ReadOnlyReady> {
    let lock = DirLock::acquire_shared(dir)?;
    // Probe the backend as a read-write open does (the runtime is only needed to know).
    let (rt, kind, fallback_reason) = Runtime::choose(opts.io_backend)?;
    drop(rt);
    let (keydir, rec) = recovery::open(dir, opts, true)?;
    Ok(ReadOnlyReady {
        lock,
        kind,
        fallback_reason,
        keydir: Arc::new(keydir),
        rec,
    })
}

impl Db {
    /// Opens the store in `path` for reading only.
    ///
    /// Takes a shared lock: any number of read-only handles (in this or other processes) may
    /// have the store open at once, while [`Db::open`] gets [`Error::Locked`] until they
    /// close, and a read-only open gets [`Error::Locked`] while a read-write handle is open.
    /// Modifies no file and creates none (not even `LOCK`): a store left by a crash opens as
    /// it would read-write — a committed merge is finished in memory, a torn tail is ignored
    /// in memory, leftovers stay — and the next read-write open repairs it on disk. Runs no
    /// merge and no expiry sweep. Writes, [`Db::merge`] and the other changes return
    /// [`Error::ReadOnly`]; [`Db::sync`] does nothing; reads, snapshots, iterators, scans and
    /// checkpoints work.
    ///
    /// ```
    /// # fn main() -> Result<(), ringcask::Error> {
    /// # let tmp = tempfile::tempdir()?;
    /// # futures::executor::block_on(async {
    /// use ringcask::{Db, Error, Options};
    /// let db = Db::open(tmp.path(), Options::default()).await?;
    /// db.put("k", "v").await?;
    /// db.close().await?;
    /// let a = Db::open_read_only(tmp.path(), Options::default()).await?;
    /// let b = Db::open_read_only(tmp.path(), Options::default()).await?;
    /// assert_eq!(b.get("k").await?.as_deref(), Some(&b"v"[..]));
    /// assert!(matches!(a.put("k", "w").await, Err(Error::ReadOnly)));
    /// assert!(matches!(Db::open(tmp.path(), Options::default()).await, Err(Error::Locked { .. })));
    /// # a.close().await?;
    /// # b.close().await })
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Locked`] while a read-write handle has the store open; [`Error::Io`] if the
    /// directory does not exist; otherwise as [`Db::open`].
    pub async fn open_read_only(path: impl AsRef<Path>, opts: Options) -> Result<Db> {
        opts.validate()?;
        let dir = path.as_ref().to_path_buf();
        wait_for_background_close(&dir).await;
        let (tx, rx) = oneshot::channel();
        {
            let (dir, opts) = (dir.clone(), opts.clone());
            std::thread::Builder::new()
                .name("ringcask-open".into())
                .spawn(move || {
                    let _ = tx.send(prepare_read_only(&dir, &opts));
                })?;
        }
        let ready = rx
            .await
            .map_err(|_| Error::Io(std::io::Error::other("the open thread stopped")))??;
        let ReadOnlyReady {
            lock,
            kind,
            fallback_reason,
            keydir,
            rec,
        } = ready;
        let shared = Arc::new(Shared::default());
        shared.with_usage(|u| *u = rec.usage);
        shared.has_ttl.store(rec.has_ttl, Ordering::Relaxed);
        *shared.recovery.lock().unwrap_or_else(|p| p.into_inner()) = rec.report;
        let mut threads = Threads(Vec::new(), shared.clone());
        let readers = threads.spawn_readers(&dir, &opts, kind)?;
        let files = Arc::new(crate::read::filetable::FileTable::new(
            dir.clone(),
            opts.fault_injector.clone(),
        ));
        let appender = Arc::new(Appender::read_only(&opts, keydir.clone(), shared.clone()));
        // Channels nobody serves: nothing is ever sent on them by a read-only handle, and a
        // snapshot's note to the merge thread finds it closed.
        let (write_tx, _) = mpsc::channel(1);
        let (merge_tx, _) = mpsc::channel(1);
        tracing::info!(dir = %dir.display(), keys = keydir.len(), "opened read-only");
        let ring_reads = crate::read::ring::RingReads::for_store(&dir, &opts, kind, false);
        Ok(Db {
            inner: Arc::new(super::Inner {
                cache: crate::read::cache::ValueCache::new(opts.value_cache_budget()).map(Arc::new),
                dir,
                opts,
                keydir,
                shared,
                files,
                kind,
                fallback_reason,
                appender,
                write_tx,
                merge_tx,
                readers,
                next_reader: std::sync::atomic::AtomicUsize::new(0),
                ring_reads,
                reads_in_flight: std::sync::atomic::AtomicUsize::new(0),
                closed: std::sync::atomic::AtomicBool::new(false),
                read_only: true,
                ro_lock: std::sync::Mutex::new(Some(lock)),
                _threads: threads,
            }),
        })
    }
}

impl Threads {
    /// Starts the read threads (`Options::read_threads`) and returns their channels.
    pub(super) fn spawn_readers(
        &mut self,
        dir: &Path,
        opts: &Options,
        kind: IoBackendKind,
    ) -> Result<Vec<mpsc::Sender<ReaderMsg>>> {
        let mut readers = Vec::with_capacity(opts.read_thread_count());
        for i in 0..opts.read_thread_count() {
            let (tx, rx) = mpsc::channel(opts.write_queue_depth);
            self.0.push(reader::spawn(
                i,
                kind,
                dir.to_path_buf(),
                opts.fault_injector.clone(),
                rx,
            )?);
            readers.push(tx);
        }
        Ok(readers)
    }
}
