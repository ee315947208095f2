//! The write path: appends to the active datafile, group commit of syncs, rotation and sealing.
//!
//! Appends are positioned `pwrite`s made under one mutex ([`Appender`]) by whoever submits the
//! write: normally the caller's own thread (an *inline* append: no hop to another thread), or the
//! writer thread for requests that come over its channel (inline writes turned off, a request
//! over [`INLINE_MAX`], or an active file that is full and must be rotated first). In the same
//! critical section, right after the bytes are written, the keydir is updated, so the keydir
//! never points at bytes not yet written and a cancelled caller cannot leave the two apart.
//!
//! The writer thread (an io thread with its own io_uring) does everything that waits on the
//! disk: `fdatasync` groups (every durable writer whose append landed before a sync starts shares
//! it), the interval sync, rotation and sealing (trim, sync, hint file), and close.
//!
//! Why not append through io_uring: on ext4 a buffered io_uring write is punted to an io-wq
//! worker (measured ~50 µs per append, against ~1 µs for `pwrite`; `RWF_NOWAIT` writes are
//! refused), and a hop to the writer thread costs more than the write itself.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::fault::FaultInjector;
use crate::files::hint::HintBuilder;
use crate::format::{self, FileKind, HintRecord, FILE_HEADER_LEN, FLAG_BATCH, FLAG_BATCH_END};
use crate::io::lock::DirLock;
use crate::io::{self, fs, IoFile};
use crate::keydir::{Entry, Installed, KeyDir};
use crate::layout::data_path;
use crate::options::IoBackendKind;
use crate::state::Shared;
use crate::{Error, Options, Result, SyncPolicy};

/// One mutation.
/// One mutation, over owned bytes (`Op`, as queued and batched) or borrowed ones
/// (`Op<&[u8]>`, a caller's single put appended inline without copying its arguments).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op<B = Bytes> {
    Put { key: B, value: B, expiry_ms: u64 },
    Delete { key: B },
}

impl<B: AsRef<[u8]>> Op<B> {
    pub(crate) fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key.as_ref(),
        }
    }

    /// Encoded record length.
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => {
                format::record_len(key.as_ref().len(), value.as_ref().len())
            }
            Op::Delete { key } => format::record_len(key.as_ref().len(), 0),
        }
    }

    /// The same op over borrowed bytes.
    pub(crate) fn view(&self) -> Op<&[u8]> {
        match self {
            Op::Put {
                key,
                value,
                expiry_ms,
            } => Op::Put {
                key: key.as_ref(),
                value: value.as_ref(),
                expiry_ms: *expiry_ms,
            },
            Op::Delete { key } => Op::Delete { key: key.as_ref() },
        }
    }

    /// The same op over owned bytes (copied), for the writer thread's queue.
    pub(crate) fn to_owned_op(&self) -> Op {
        match self.view() {
            Op::Put {
                key,
                value,
                expiry_ms,
            } => Op::Put {
                key: Bytes::copy_from_slice(key),
                value: Bytes::copy_from_slice(value),
                expiry_ms,
            },
            Op::Delete { key } => Op::Delete {
                key: Bytes::copy_from_slice(key),
            },
        }
    }
}

/// A request as the append path reads it: one borrowed op, or an atomic batch.
#[derive(Clone, Copy)]
pub(crate) enum ReqRef<'a> {
    Single(Op<&'a [u8]>),
    Batch(&'a [Op]),
}

impl ReqRef<'_> {
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            ReqRef::Single(op) => op.encoded_len(),
            ReqRef::Batch(ops) => ops.iter().map(Op::encoded_len).sum(),
        }
    }
}

/// What callers send to the writer.
pub(crate) enum WriteMsg {
    /// One op, or an atomic batch of ops.
    Write {
        ops: Request,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Make every record up to seq `upto` durable (`u64::MAX`: everything written so far).
    Sync { upto: u64, reply: SyncSender },
    /// Seal the active file, release the lock and stop.
    Close { reply: oneshot::Sender<Result<()>> },
}

/// The outcome of a sync, shared by every waiter of one group.
#[derive(Clone)]
pub(crate) enum SyncResult {
    Done,
    Io(std::io::ErrorKind, Arc<str>),
    Poisoned(Arc<str>),
}

impl SyncResult {
    fn of(r: &Result<()>) -> Self {
        match r {
            Ok(()) => SyncResult::Done,
            Err(Error::Io(e)) => SyncResult::Io(e.kind(), Arc::from(e.to_string())),
            Err(Error::Poisoned(p)) => SyncResult::Poisoned(Arc::from(p.as_str())),
            Err(e) => SyncResult::Poisoned(Arc::from(e.to_string())),
        }
    }

    /// The caller's result.
    pub(crate) fn into_result(self) -> Result<()> {
        match self {
            SyncResult::Done => Ok(()),
            SyncResult::Io(kind, msg) => Err(Error::Io(std::io::Error::new(kind, msg.to_string()))),
            SyncResult::Poisoned(msg) => Err(Error::Poisoned(msg.to_string())),
        }
    }
}

/// Asks the writer thread behind `tx` to make every record up to seq `upto` durable
/// (`u64::MAX`: everything written so far) and waits for the answer.
pub(crate) async fn request_sync(tx: &mpsc::Sender<WriteMsg>, upto: u64) -> Result<()> {
    let (reply, rx) = oneshot::channel();
    tx.send(WriteMsg::Sync { upto, reply })
        .await
        .map_err(|_| Error::Closed)?;
    let reply = rx.await.map_err(|_| Error::Closed)?;
    // Dropping the reply wakes the waiters it carries.
    reply.result.clone().into_result()
}

/// Asks the writer for an `fdatasync` covering `upto` without waiting for it (a writeback).
/// Skipped when the queue is full: a later append asks again.
pub(crate) fn request_writeback(tx: &mpsc::Sender<WriteMsg>, upto: u64) {
    let (reply, _) = oneshot::channel();
    let _ = tx.try_send(WriteMsg::Sync { upto, reply });
}

/// Where a sync waiter's answer goes.
pub(crate) type SyncSender = oneshot::Sender<SyncReply>;

/// The answer to one sync waiter. It carries part of the group's other waiters: whoever drops
/// it (the waiter after reading it, or `send` failing because the waiter is gone) wakes them.
/// So waking a group of N waiters costs the writer thread about log2(N) wake-ups instead of N,
/// and it can start the next `fdatasync` sooner; the rest of the wake-ups happen in parallel on
/// the woken callers' threads.
pub(crate) struct SyncReply {
    pub(crate) result: SyncResult,
    forward: Vec<SyncSender>,
}

impl Drop for SyncReply {
    fn drop(&mut self) {
        fan_out(std::mem::take(&mut self.forward), &self.result);
    }
}

/// Answers every waiter in `list`: each one reached directly gets half of the remaining list to
/// answer in turn.
pub(crate) fn fan_out(mut list: Vec<SyncSender>, result: &SyncResult) {
    while let Some(first) = list.pop() {
        let half = list.split_off(list.len() / 2);
        // On failure the reply comes back and is dropped here, which answers its half.
        let _ = first.send(SyncReply {
            result: result.clone(),
            forward: half,
        });
    }
}

/// A single op or an atomic batch.
pub(crate) enum Request {
    Single(Op),
    Batch(Vec<Op>),
}

impl Request {
    fn as_ref(&self) -> ReqRef<'_> {
        match self {
            Request::Single(op) => ReqRef::Single(op.view()),
            Request::Batch(ops) => ReqRef::Batch(ops),
        }
    }
}

/// Requests encoding to more bytes than this go to the writer thread instead of being written on
/// the caller's thread, so that a huge value does not stall an async worker thread for long.
pub(crate) const INLINE_MAX: usize = 1 << 20;

/// A keydir update for a record just written (its key is the request's op at the same index).
struct Pending {
    entry: Entry,
    tombstone: bool,
}

/// The active datafile as the append path sees it.
pub(crate) struct ActiveFile {
    id: u32,
    /// A plain descriptor for `pwrite` and `fallocate`.
    fd: std::fs::File,
    /// Bytes of the file already written (header included).
    len: u64,
    /// End of the space reserved with `fallocate`.
    allocated: u64,
    /// `len` when a background writeback was last asked for (see [`WRITEBACK_BYTES`]).
    writeback_from: u64,
    hint: HintBuilder,
}

/// Under [`SyncPolicy::Never`], an append that leaves this many bytes written since the last
/// writeback request asks the writer thread for a background `fdatasync` (the caller does not
/// wait). Without it a 256 MiB file reached sealing with up to 256 MiB dirty, and the seal's
/// sync stalled every append for ~250 ms (4 KiB puts, 125k in a row: 65–108k puts/s, worst put
/// 204–258 ms; with no rotation 111–157k/s). The seal must stay ahead of the next file's first
/// append: a power loss may then tear only the last file.
pub(crate) const WRITEBACK_BYTES: u64 = 16 << 20;

struct AppendState {
    /// `None` while the writer thread rotates, and after close: appends go to the writer.
    active: Option<ActiveFile>,
    next_seq: u64,
    /// Encoding buffer, reused.
    buf: Vec<u8>,
    pending: Vec<Pending>,
    /// Set after an IO failure: no more writes, no hint for the active file.
    poisoned: Option<String>,
    closed: bool,
}

/// The append side of the store, shared by every caller and the writer thread.
pub(crate) struct Appender {
    state: Mutex<AppendState>,
    keydir: Arc<KeyDir>,
    shared: Arc<Shared>,
    max_file_bytes: u64,
    preallocate_bytes: u64,
    /// [`WRITEBACK_BYTES`] under `SyncPolicy::Never`, else 0 (the other policies sync anyway).
    writeback_bytes: u64,
    fault: Option<Arc<FaultInjector>>,
    /// An append passed [`WRITEBACK_BYTES`]: its caller asks for a writeback.
    writeback_due: AtomicBool,
    /// Bytes were appended since the last `fdatasync` started.
    dirty: AtomicBool,
    /// The highest seq whose record is written (in the page cache at least).
    appended_seq: AtomicU64,
    /// Every record with a seq up to this one is on stable storage.
    synced_seq: AtomicU64,
}

fn clone_io_err(e: &std::io::Error) -> Error {
    Error::Io(std::io::Error::new(e.kind(), e.to_string()))
}

impl Appender {
    fn new(opts: &Options, keydir: Arc<KeyDir>, shared: Arc<Shared>, next_seq: u64) -> Self {
        Appender {
            state: Mutex::new(AppendState {
                active: None,
                next_seq,
                buf: Vec::new(),
                pending: Vec::new(),
                poisoned: None,
                closed: false,
            }),
            keydir,
            shared,
            max_file_bytes: opts.max_file_bytes,
            preallocate_bytes: opts.preallocate_bytes,
            writeback_bytes: if opts.sync == SyncPolicy::Never {
                WRITEBACK_BYTES
            } else {
                0
            },
            fault: opts.fault_injector.clone(),
            writeback_due: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            appended_seq: AtomicU64::new(next_seq.saturating_sub(1)),
            synced_seq: AtomicU64::new(next_seq.saturating_sub(1)),
        }
    }

    /// The state; a lock poisoned by a panic is recovered (its fields stay consistent: every
    /// change is made after the system call it depends on returned).
    fn lock(&self) -> MutexGuard<'_, AppendState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an append asked for a background writeback since the last call (clears it).
    pub(crate) fn take_writeback_due(&self) -> bool {
        // A plain load first: the flag is rarely set, so its line stays shared between cores.
        self.writeback_due.load(Ordering::Relaxed)
            && self.writeback_due.swap(false, Ordering::Relaxed)
    }

    /// Whether every record up to `seq` is on stable storage.
    pub(crate) fn is_synced(&self, seq: u64) -> bool {
        self.synced_seq.load(Ordering::Acquire) >= seq
    }

    /// Appends `req` to the active file and applies it to the keydir. `Ok(None)` when it cannot
    /// be done here: the active file is full (or being rotated), so the writer thread must take
    /// the request. Returns the seq of the request's last record.
    pub(crate) fn try_append(&self, req: ReqRef<'_>) -> Result<Option<u64>> {
        let len = req.encoded_len() as u64;
        let room = self.max_file_bytes - FILE_HEADER_LEN as u64;
        if matches!(req, ReqRef::Batch(_)) && len > room {
            return Err(Error::BatchTooLarge { len, max: room });
        }
        let mut guard = self.lock();
        self.append_locked(&mut guard, req)
    }

    /// Makes `active` the file appends go to and, in the same critical section, appends `req`
    /// (the request that found the previous file full), so that no other append can fill the
    /// fresh file first.
    fn install(&self, active: ActiveFile, req: Option<ReqRef<'_>>) -> Result<Option<u64>> {
        let mut guard = self.lock();
        guard.active = Some(active);
        match req {
            Some(req) => self.append_locked(&mut guard, req),
            None => Ok(None),
        }
    }

    fn append_locked(&self, st: &mut AppendState, req: ReqRef<'_>) -> Result<Option<u64>> {
        let len = req.encoded_len() as u64;
        if let Some(p) = &st.poisoned {
            return Err(Error::Poisoned(p.clone()));
        }
        if st.closed {
            return Err(Error::Closed);
        }
        let Some(active) = st.active.as_mut() else {
            return Ok(None);
        };
        if active.len + len > self.max_file_bytes && active.len > FILE_HEADER_LEN as u64 {
            return Ok(None);
        }
        let mut seq = st.next_seq;
        match req {
            ReqRef::Single(op) => Self::encode(active, &mut st.buf, &mut st.pending, seq, op, 0),
            ReqRef::Batch(ops) => {
                let n = ops.len();
                for (i, op) in ops.iter().enumerate() {
                    let end = if i + 1 == n { FLAG_BATCH_END } else { 0 };
                    let flags = FLAG_BATCH | end;
                    let seq = seq + i as u64;
                    Self::encode(active, &mut st.buf, &mut st.pending, seq, op.view(), flags);
                }
                seq += n as u64 - 1;
            }
        }
        st.next_seq = seq + 1;
        let res = self.write_buf(active, &st.buf);
        st.buf.clear();
        if let Err(e) = res {
            st.pending.clear();
            tracing::error!("append failed, refusing further writes until reopen: {e}");
            st.poisoned = Some(e.to_string());
            return Err(clone_io_err(&e));
        }
        self.appended_seq.store(seq, Ordering::Release);
        if self.writeback_bytes > 0 && active.len - active.writeback_from >= self.writeback_bytes {
            active.writeback_from = active.len;
            self.writeback_due.store(true, Ordering::Relaxed);
        }
        match req {
            ReqRef::Single(op) => self.apply(active, std::iter::once(op.key()), &mut st.pending),
            ReqRef::Batch(ops) => self.apply(active, ops.iter().map(Op::key), &mut st.pending),
        }
        Counts::of(req).record(&self.shared);
        Ok(Some(seq))
    }

    fn encode(
        active: &mut ActiveFile,
        buf: &mut Vec<u8>,
        pending: &mut Vec<Pending>,
        seq: u64,
        op: Op<&[u8]>,
        flags: u8,
    ) {
        let offset = active.len + buf.len() as u64;
        let start = buf.len();
        let (key, expiry_ms, tombstone) = match op {
            Op::Put {
                key,
                value,
                expiry_ms,
            } => {
                format::encode_record(buf, seq, expiry_ms, flags, key, value);
                (key, expiry_ms, false)
            }
            Op::Delete { key } => {
                let flags = flags | format::FLAG_TOMBSTONE;
                format::encode_record(buf, seq, 0, flags, key, &[]);
                (key, 0, true)
            }
        };
        let len = (buf.len() - start) as u32;
        active.hint.push(&HintRecord {
            seq,
            expiry_ms,
            offset,
            record_len: len,
            tombstone,
            key,
        });
        pending.push(Pending {
            entry: Entry {
                seq,
                expiry_ms,
                file_id: active.id,
                // Offsets stay below `max_file_bytes` (at most 2 GiB): rotation happens first.
                offset: offset as u32,
                len,
            },
            tombstone,
        });
    }

    /// Writes `buf` at the end of the active file, preallocating ahead first (best effort).
    fn write_buf(&self, active: &mut ActiveFile, buf: &[u8]) -> std::io::Result<()> {
        let need = buf.len() as u64;
        if self.preallocate_bytes != 0 && active.len + need > active.allocated {
            let step = self.preallocate_bytes.max(need).min(
                self.max_file_bytes
                    .saturating_sub(active.allocated)
                    .max(need),
            );
            match io::fallocate(self.fault.as_deref(), &active.fd, active.allocated, step) {
                Ok(()) => active.allocated += step,
                Err(e) => {
                    if self.fault.as_ref().is_some_and(|f| f.has_crashed()) {
                        return Err(e);
                    }
                    // Not fatal: appends simply grow the file. Stop trying for this file.
                    tracing::debug!("preallocation failed ({e}); appending without it");
                    active.allocated = u64::MAX;
                }
            }
        }
        io::pwrite_all(self.fault.as_deref(), &active.fd, buf, active.len)?;
        active.len += need;
        self.dirty.store(true, Ordering::Release);
        self.shared.bytes_written.add(need);
        self.shared.appends.add(1);
        Ok(())
    }

    /// Points the keydir at the records just written (`pending[i]` is the record of `ops[i]`)
    /// and updates the space accounting.
    fn apply<'k>(
        &self,
        active: &ActiveFile,
        keys: impl Iterator<Item = &'k [u8]>,
        pending: &mut Vec<Pending>,
    ) {
        let keydir = &self.keydir;
        // Every record is in the active file: account for it once, after the loop.
        let mut own_dead = 0u64;
        let mut own_min_seq = u64::MAX;
        let mut others: Vec<(u32, u64)> = Vec::new();
        let mut account = |p: &Pending, outcome: Installed| {
            own_min_seq = own_min_seq.min(p.entry.seq);
            if p.tombstone || outcome == Installed::Stale {
                // A tombstone is dead from the start; so is a put that lost to a newer entry.
                own_dead += u64::from(p.entry.len);
            }
            match outcome {
                Installed::Replaced(old) if old.file_id == active.id => {
                    own_dead += u64::from(old.len)
                }
                Installed::Replaced(old) => others.push((old.file_id, u64::from(old.len))),
                Installed::New | Installed::Stale => {}
            }
        };
        if pending.len() > 1 {
            // A batch: one lock per shard.
            let writes = keys
                .zip(pending.iter())
                .map(|(k, p)| (k, p.entry, p.tombstone));
            keydir.apply_many(writes, |i, outcome| account(&pending[i], outcome));
        } else {
            for (key, p) in keys.zip(pending.iter()) {
                let outcome = if p.tombstone {
                    keydir
                        .remove_older(key, p.entry.seq)
                        .map_or(Installed::Stale, Installed::Replaced)
                } else {
                    keydir.install(key, p.entry)
                };
                account(p, outcome);
            }
        }
        pending.clear();
        self.shared.with_usage(|usage| {
            let own = Shared::usage_entry(usage, active.id);
            own.total_bytes = active.len;
            own.dead_bytes += own_dead;
            own.min_seq = own.min_seq.min(own_min_seq);
            for (id, len) in others {
                Shared::add_dead(usage, id, len);
            }
        });
    }

    fn poison(&self, e: &std::io::Error) {
        tracing::error!("write path failed, refusing further writes until reopen: {e}");
        let mut st = self.lock();
        if st.poisoned.is_none() {
            st.poisoned = Some(e.to_string());
        }
    }

    fn poisoned(&self) -> Option<String> {
        self.lock().poisoned.clone()
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    dir: PathBuf,
    kind: IoBackendKind,
    opts: Options,
    shared: Arc<Shared>,
    appender: Arc<Appender>,
    /// The writer's own handle of the active file (syncs and sealing go through io_uring).
    io: IoFile,
    last_sync: Instant,
    lock: Option<Arc<DirLock>>,
}

fn fault(opts: &Options) -> Option<&FaultInjector> {
    opts.fault_injector.as_deref()
}

fn to_io(e: Error) -> std::io::Error {
    match e {
        Error::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

impl Writer {
    /// Creates the first active datafile and returns the writer, ready to run.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        dir: PathBuf,
        kind: IoBackendKind,
        opts: Options,
        keydir: Arc<KeyDir>,
        shared: Arc<Shared>,
        next_seq: u64,
        lock: Arc<DirLock>,
    ) -> Result<Writer> {
        let appender = Arc::new(Appender::new(&opts, keydir, shared.clone(), next_seq));
        let id = shared.allocate_file_id()?;
        let (io, active) = Self::create_active(&dir, kind, &opts, id).await?;
        let mut w = Writer {
            dir,
            kind,
            opts,
            shared,
            appender,
            io,
            last_sync: Instant::now(),
            lock: Some(lock),
        };
        w.install(active, None)?;
        Ok(w)
    }

    /// The append side, for the handle's inline appends.
    pub(crate) fn appender(&self) -> Arc<Appender> {
        self.appender.clone()
    }

    async fn create_active(
        dir: &std::path::Path,
        kind: IoBackendKind,
        opts: &Options,
        id: u32,
    ) -> Result<(IoFile, ActiveFile)> {
        let path = data_path(dir, id);
        let file = IoFile::create_new(kind, &path, opts.fault_injector.clone())?;
        let mut header = Vec::with_capacity(FILE_HEADER_LEN);
        format::encode_file_header(&mut header, FileKind::Data, id);
        let (r, _) = file.write_all_at(header, 0).await;
        r?;
        let fd = file.clone_std()?;
        file.sync_all().await?;
        fs::sync_dir(fault(opts), dir)?;
        tracing::debug!(file = %path.display(), "started a new active datafile");
        let hint =
            HintBuilder::spilling(dir, id, opts.hint_spill_bytes, opts.fault_injector.clone());
        let active = ActiveFile {
            id,
            fd,
            len: FILE_HEADER_LEN as u64,
            // The first append preallocates (see `Appender::write_buf`).
            allocated: FILE_HEADER_LEN as u64,
            writeback_from: FILE_HEADER_LEN as u64,
            hint,
        };
        Ok((file, active))
    }

    /// Makes `active` the file appends go to, appending `req` first thing (see
    /// [`Appender::install`]).
    fn install(&mut self, active: ActiveFile, req: Option<ReqRef<'_>>) -> Result<Option<u64>> {
        let id = active.id;
        self.shared.active_file_id.store(id, Ordering::Relaxed);
        self.shared
            .with_usage(|u| Shared::usage_entry(u, id).total_bytes = active.len);
        self.appender.install(active, req)
    }

    /// Writes the hints of datafiles that recovery had to scan.
    pub(crate) async fn write_recovery_hints(&self, hints: Vec<(u32, u64, HintBuilder)>) {
        for (id, data_len, mut hb) in hints {
            let fault = self.opts.fault_injector.as_ref();
            if let Err(e) = hb.write(self.kind, &self.dir, id, data_len, fault).await {
                tracing::warn!(
                    id,
                    "could not write the hint file of a scanned datafile: {e}"
                );
            }
        }
    }

    /// Serves requests until `Close` or until every sender is gone.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<WriteMsg>) {
        let mut group = Vec::new();
        loop {
            let Some(first) = self.recv(&mut rx).await else {
                if let Err(e) = self.shutdown(false).await {
                    tracing::warn!("closing the store on drop failed: {e}");
                }
                return;
            };
            group.push(first);
            while group.len() < 8192 {
                match rx.try_recv() {
                    Ok(m) => group.push(m),
                    Err(_) => break,
                }
            }
            if let Some(close) = self.process(&mut group).await {
                let res = self.shutdown(true).await;
                let _ = close.send(res);
                // Anything still queued is answered with `Closed` when `rx` drops.
                return;
            }
        }
    }

    /// Waits for the next request, running the interval sync when it is due.
    async fn recv(&mut self, rx: &mut mpsc::Receiver<WriteMsg>) -> Option<WriteMsg> {
        let SyncPolicy::IntervalMs(ms) = self.opts.sync else {
            return rx.recv().await;
        };
        loop {
            let due = self.last_sync + Duration::from_millis(ms);
            let now = Instant::now();
            if now < due {
                if let Ok(m) = tokio::time::timeout(due - now, rx.recv()).await {
                    return m;
                }
            }
            // A failure poisons the store; later writes report it.
            let _ = self.sync_active().await;
        }
    }

    /// `fdatasync` of the active file if anything was appended since the last one.
    async fn sync_active(&mut self) -> Result<()> {
        self.last_sync = Instant::now();
        if let Some(p) = self.appender.poisoned() {
            return Err(Error::Poisoned(p));
        }
        let a = &self.appender;
        let upto = a.appended_seq.load(Ordering::Acquire);
        if a.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.io.sync_data_now() {
                a.poison(&e);
                return Err(Error::Io(e));
            }
            self.shared.syncs.add(1);
        }
        a.synced_seq.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// Serves one group of requests. Returns the reply of a `Close` found in the group.
    async fn process(&mut self, group: &mut Vec<WriteMsg>) -> Option<oneshot::Sender<Result<()>>> {
        let mut waiters = Vec::new();
        let mut syncs = Vec::new();
        let mut close = None;
        for msg in group.drain(..) {
            match msg {
                WriteMsg::Write { ops, reply } => match self.append(&ops).await {
                    Ok(()) => waiters.push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                WriteMsg::Sync { upto, reply } => syncs.push((upto, reply)),
                WriteMsg::Close { reply } => close = Some(reply),
            }
        }
        // Under `Never` and `IntervalMs` a write is acknowledged once appended: answer before
        // any sync below, as inline appends are.
        if self.opts.sync != SyncPolicy::Always {
            for reply in waiters.drain(..) {
                let _ = reply.send(Ok(()));
            }
        }
        // Appends made here (requests of 1 MiB or more) passed the writeback step: the
        // writeback that an inline append would have requested runs now.
        let writeback = self.appender.take_writeback_due();
        let want_sync = !waiters.is_empty()
            || syncs
                .iter()
                .any(|(upto, _)| !self.appender.is_synced(*upto))
            || close.is_some()
            || writeback;
        let res = if want_sync {
            self.sync_active().await
        } else {
            Ok(())
        };
        let answer = |r: &Result<()>| match r {
            Ok(()) => Ok(()),
            Err(Error::Io(io)) => Err(clone_io_err(io)),
            Err(e) => Err(Error::Poisoned(e.to_string())),
        };
        fan_out(
            syncs.into_iter().map(|(_, reply)| reply).collect(),
            &SyncResult::of(&res),
        );
        for reply in waiters {
            let _ = reply.send(answer(&res));
        }
        close
    }

    /// Appends a request that came over the channel, rotating first if the file is full.
    async fn append(&mut self, req: &Request) -> Result<()> {
        if self.appender.try_append(req.as_ref())?.is_some() {
            return Ok(());
        }
        let res = async {
            let (io, active) = self.rotate().await?;
            self.io = io;
            Ok::<_, std::io::Error>(active)
        }
        .await;
        let active = match res {
            Ok(a) => a,
            Err(e) => {
                self.appender.poison(&e);
                return Err(Error::Io(e));
            }
        };
        match self.install(active, Some(req.as_ref()))? {
            Some(_) => Ok(()),
            None => Err(Error::Io(std::io::Error::other(
                "a write did not fit in a fresh datafile",
            ))),
        }
    }

    /// Seals the active file (sync, trim, hint) and creates the next one, which the caller
    /// installs.
    async fn rotate(&mut self) -> std::io::Result<(IoFile, ActiveFile)> {
        let Some(old) = self.appender.lock().active.take() else {
            return Err(std::io::Error::other("no active datafile to rotate"));
        };
        let sealed = old.id;
        self.seal(old).await?;
        // Every keydir update of the sealed file was applied under the append lock, before it
        // was taken away: merge may take it now.
        self.shared.with_usage(|u| {
            if let Some(f) = u.get_mut(&sealed) {
                f.sealed = true;
            }
        });
        let id = self.shared.allocate_file_id()?;
        let created = Self::create_active(&self.dir, self.kind, &self.opts, id)
            .await
            .map_err(to_io)?;
        tracing::debug!(file_id = id, "rotated to a new datafile");
        Ok(created)
    }

    /// Syncs and trims a file taken from the append path and writes its hint file. A failed hint
    /// is only logged: recovery scans a datafile that has none.
    async fn seal(&mut self, mut a: ActiveFile) -> std::io::Result<()> {
        let upto = self.appender.appended_seq.load(Ordering::Acquire);
        io::set_len(fault(&self.opts), &a.fd, a.len)?;
        self.io.sync_all().await?;
        // No append can land meanwhile: the file is out of the append path.
        self.appender.dirty.store(false, Ordering::Release);
        self.appender.synced_seq.fetch_max(upto, Ordering::AcqRel);
        let fault = self.opts.fault_injector.as_ref();
        if let Err(e) = a.hint.write(self.kind, &self.dir, a.id, a.len, fault).await {
            tracing::warn!(file_id = a.id, "could not write a hint file: {e}");
            if fault.is_some_and(|f| f.has_crashed()) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Final sync and seal on close or drop; then, on an explicit close (`snapshot`: the merge
    /// thread has stopped) with `Options::keydir_snapshot`, saves the keydir snapshot. Releases
    /// the directory lock last.
    async fn shutdown(&mut self, snapshot: bool) -> Result<()> {
        let (active, next_seq) = {
            let mut st = self.appender.lock();
            st.closed = true;
            (st.active.take(), st.next_seq)
        };
        let res = match (self.appender.poisoned(), active) {
            (Some(p), _) => Err(Error::Poisoned(p)),
            (None, None) => Ok(()),
            (None, Some(a)) => self.close_active(a).await.map_err(Error::Io),
        };
        let crashed = fault(&self.opts).is_some_and(|f| f.has_crashed());
        if res.is_ok() && snapshot && self.opts.keydir_snapshot && !crashed {
            let started = Instant::now();
            let usage = self.shared.with_usage(|u| u.clone());
            match crate::files::snapshot::save(&self.dir, &self.appender.keydir, next_seq, &usage) {
                Ok(true) => tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "saved the keydir snapshot"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!("could not save the keydir snapshot: {e}"),
            }
        }
        self.lock = None;
        res
    }

    async fn close_active(&mut self, a: ActiveFile) -> std::io::Result<()> {
        if a.hint.count() == 0 {
            // Nothing was written: do not leave an empty file behind.
            let path = data_path(&self.dir, a.id);
            fs::remove_file(fault(&self.opts), &path)?;
            fs::sync_dir(fault(&self.opts), &self.dir)?;
            let id = a.id;
            self.shared.with_usage(|u| u.remove(&id));
            return Ok(());
        }
        self.seal(a).await
    }
}

/// Op counts of one request, recorded in the stats when it is acknowledged.
#[derive(Clone, Copy)]
struct Counts {
    puts: u64,
    deletes: u64,
    batch: bool,
}

impl Counts {
    fn of(req: ReqRef<'_>) -> Counts {
        let (n, deletes) = match req {
            ReqRef::Single(op) => (1, u64::from(matches!(op, Op::Delete { .. }))),
            ReqRef::Batch(ops) => (
                ops.len() as u64,
                ops.iter()
                    .filter(|o| matches!(o, Op::Delete { .. }))
                    .count() as u64,
            ),
        };
        Counts {
            puts: n - deletes,
            deletes,
            batch: matches!(req, ReqRef::Batch(_)),
        }
    }

    fn record(self, s: &Shared) {
        s.puts.add(self.puts);
        s.deletes.add(self.deletes);
        if self.batch {
            s.batches.add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every waiter still listening gets the group's result, whatever waiters in the tree went
    /// away, as long as each reply is dropped after reading (which forwards its part).
    #[test]
    fn fan_out_reaches_every_live_waiter() {
        for n in [0usize, 1, 2, 3, 7, 32, 100] {
            for gone_every in [0usize, 2, 3] {
                let mut senders = Vec::new();
                let mut live = Vec::new();
                for i in 0..n {
                    let (tx, rx) = oneshot::channel();
                    senders.push(tx);
                    if gone_every != 0 && i % gone_every == 0 {
                        drop(rx);
                    } else {
                        live.push(rx);
                    }
                }
                fan_out(senders, &SyncResult::Done);
                // Each reply forwards its part when it is dropped: poll until nothing moves.
                let mut answered = 0;
                let mut pending = live;
                loop {
                    let before = pending.len();
                    let mut still = Vec::new();
                    for mut rx in pending {
                        match rx.try_recv() {
                            Ok(reply) => {
                                assert!(reply.result.clone().into_result().is_ok());
                                answered += 1;
                                drop(reply);
                            }
                            Err(oneshot::error::TryRecvError::Empty) => still.push(rx),
                            Err(e) => panic!("a live waiter lost its answer: {e}"),
                        }
                    }
                    pending = still;
                    if pending.is_empty() || pending.len() == before {
                        break;
                    }
                }
                assert!(
                    pending.is_empty(),
                    "{} waiters never answered",
                    pending.len()
                );
                let expected = (0..n)
                    .filter(|i| gone_every == 0 || i % gone_every != 0)
                    .count();
                assert_eq!(answered, expected, "n={n} gone_every={gone_every}");
            }
        }
    }

    #[test]
    fn sync_errors_keep_their_kind() {
        let io = Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "disk full",
        )));
        match SyncResult::of(&io).into_result() {
            Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::StorageFull),
            other => panic!("unexpected {other:?}"),
        }
        let p = Err(Error::Poisoned("earlier failure".into()));
        assert!(matches!(
            SyncResult::of(&p).into_result(),
            Err(Error::Poisoned(_))
        ));
    }
}
