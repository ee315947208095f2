//! The single writer: owns the active datafile, runs group commit, rotates and seals files.
//!
//! It runs as one task on its own io thread. Each turn it drains every waiting request into one
//! buffer, appends the buffer with one write (one `fdatasync` under `SyncPolicy::Always`), then
//! updates the keydir and only then acknowledges each caller.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::datafile::data_path;
use crate::hint::{self, HintBuilder};
use crate::io::{self, FaultInjector, IoFile, Kind};
use crate::keydir::{Entry, Installed, KeyDir};
use crate::lock::DirLock;
use crate::record::{self, FileKind, HintRecord, FILE_HEADER_LEN, FLAG_BATCH, FLAG_BATCH_END};
use crate::stats::Shared;
use crate::{Error, Options, Result, SyncPolicy};

/// One mutation.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Put {
        key: Bytes,
        value: Bytes,
        expiry_ms: u64,
    },
    Delete {
        key: Bytes,
    },
}

impl Op {
    fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }

    /// Encoded record length.
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => record::record_len(key.len(), value.len()),
            Op::Delete { key } => record::record_len(key.len(), 0),
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
    /// Force an `fdatasync` of everything acknowledged so far.
    Sync { reply: oneshot::Sender<Result<()>> },
    /// Seal the active file, release the lock and stop.
    Close { reply: oneshot::Sender<Result<()>> },
}

/// A single op or an atomic batch.
pub(crate) enum Request {
    Single(Op),
    Batch(Vec<Op>),
}

impl Request {
    fn encoded_len(&self) -> usize {
        match self {
            Request::Single(op) => op.encoded_len(),
            Request::Batch(ops) => ops.iter().map(Op::encoded_len).sum(),
        }
    }
}

/// A keydir update waiting for its group's append (and sync) to finish.
struct Pending {
    key: Bytes,
    entry: Entry,
    tombstone: bool,
}

struct Active {
    id: u32,
    file: IoFile,
    /// Bytes of the file already written (header included).
    len: u64,
    /// End of the space reserved with `fallocate`.
    allocated: u64,
    hint: HintBuilder,
}

/// The writer's state.
pub(crate) struct Writer {
    dir: PathBuf,
    kind: Kind,
    opts: Options,
    keydir: Arc<KeyDir>,
    shared: Arc<Shared>,
    active: Active,
    next_seq: u64,
    /// Files sealed during the current group: merge may take them once its keydir updates are
    /// applied.
    just_sealed: Vec<u32>,
    /// Records of the current group not yet written, to go at `active.len`.
    buf: Vec<u8>,
    pending: Vec<Pending>,
    /// Set after an IO failure: no more writes, no hint for the active file.
    poisoned: Option<String>,
    /// Whether written bytes are waiting for an `fdatasync`.
    dirty: bool,
    last_sync: Instant,
    lock: Option<Arc<DirLock>>,
}

fn fault(opts: &Options) -> Option<&FaultInjector> {
    opts.fault_injector.as_deref()
}

fn clone_io_err(e: &std::io::Error) -> Error {
    Error::Io(std::io::Error::new(e.kind(), e.to_string()))
}

impl Writer {
    /// Creates the first active datafile and returns the writer, ready to run.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        dir: PathBuf,
        kind: Kind,
        opts: Options,
        keydir: Arc<KeyDir>,
        shared: Arc<Shared>,
        next_seq: u64,
        lock: Arc<DirLock>,
    ) -> Result<Writer> {
        let id = shared.allocate_file_id()?;
        let active = Self::create_active(&dir, kind, &opts, id).await?;
        shared.active_file_id.store(active.id, Ordering::Relaxed);
        shared.with_usage(|u| Shared::usage_entry(u, active.id).total_bytes = active.len);
        Ok(Writer {
            dir,
            kind,
            opts,
            keydir,
            shared,
            active,
            next_seq,
            just_sealed: Vec::new(),
            buf: Vec::new(),
            pending: Vec::new(),
            poisoned: None,
            dirty: false,
            last_sync: Instant::now(),
            lock: Some(lock),
        })
    }

    async fn create_active(
        dir: &std::path::Path,
        kind: Kind,
        opts: &Options,
        id: u32,
    ) -> Result<Active> {
        let path = data_path(dir, id);
        let file = IoFile::create_new(kind, &path, opts.fault_injector.clone())?;
        let mut header = Vec::with_capacity(FILE_HEADER_LEN);
        record::encode_file_header(&mut header, FileKind::Data, id);
        let (r, _) = file.write_all_at(header, 0).await;
        r?;
        let mut active = Active {
            id,
            file,
            len: FILE_HEADER_LEN as u64,
            allocated: FILE_HEADER_LEN as u64,
            hint: HintBuilder::spilling(
                dir,
                id,
                opts.hint_spill_bytes,
                opts.fault_injector.clone(),
            ),
        };
        Self::reserve(&mut active, opts, 0);
        active.file.sync_all().await?;
        io::sync_dir(fault(opts), dir)?;
        tracing::debug!(file = %path.display(), "started a new active datafile");
        Ok(active)
    }

    /// Makes sure `need` bytes past the written end are preallocated (best effort).
    fn reserve(active: &mut Active, opts: &Options, need: u64) {
        if opts.preallocate_bytes == 0 || active.len + need <= active.allocated {
            return;
        }
        let step = opts.preallocate_bytes.max(need).min(
            opts.max_file_bytes
                .saturating_sub(active.allocated)
                .max(need),
        );
        match active.file.allocate(active.allocated, step) {
            Ok(()) => active.allocated += step,
            Err(e) => {
                // Not fatal: appends simply grow the file. Stop trying for this file.
                tracing::debug!("preallocation failed ({e}); appending without it");
                active.allocated = u64::MAX;
            }
        }
    }

    /// Writes the hints of datafiles that recovery had to scan.
    pub(crate) async fn write_recovery_hints(&self, hints: Vec<(u32, Vec<u8>)>) {
        for (id, bytes) in hints {
            let fault = self.opts.fault_injector.as_ref();
            if let Err(e) = hint::write(self.kind, &self.dir, id, bytes, fault).await {
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
                if let Err(e) = self.shutdown().await {
                    tracing::warn!("closing the store on drop failed: {e}");
                }
                return;
            };
            let mut bytes = 0usize;
            group.push(first);
            while bytes < self.opts.max_group_bytes && group.len() < 8192 {
                match rx.try_recv() {
                    Ok(m) => {
                        if let WriteMsg::Write { ops, .. } = &m {
                            bytes += ops.encoded_len();
                        }
                        group.push(m);
                    }
                    Err(_) => break,
                }
            }
            if let Some(close) = self.process(&mut group).await {
                let res = self.shutdown().await;
                let _ = close.send(res);
                // Anything still queued is answered with `Closed` when `rx` drops.
                return;
            }
        }
    }

    /// Waits for the next request, running the interval sync when it is due.
    async fn recv(&mut self, rx: &mut mpsc::Receiver<WriteMsg>) -> Option<WriteMsg> {
        loop {
            let SyncPolicy::IntervalMs(ms) = self.opts.sync else {
                return rx.recv().await;
            };
            if !self.dirty || self.poisoned.is_some() {
                return rx.recv().await;
            }
            let due = self.last_sync + Duration::from_millis(ms);
            let now = Instant::now();
            if now < due {
                if let Ok(m) = tokio::time::timeout(due - now, rx.recv()).await {
                    return m;
                }
            }
            if let Err(e) = self.sync_active().await {
                self.poison(&e);
            }
        }
    }

    fn poison(&mut self, e: &std::io::Error) {
        tracing::error!("write path failed, refusing further writes until reopen: {e}");
        self.poisoned = Some(e.to_string());
    }

    async fn sync_active(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.active.file.sync_data().await?;
            Shared::add(&self.shared.syncs, 1);
            self.dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Runs one group commit. Returns the reply of a `Close` found in the group.
    async fn process(&mut self, group: &mut Vec<WriteMsg>) -> Option<oneshot::Sender<Result<()>>> {
        let mut waiters: Vec<(oneshot::Sender<Result<()>>, Counts)> = Vec::new();
        let mut syncs = Vec::new();
        let mut close = None;
        for msg in group.drain(..) {
            match msg {
                WriteMsg::Write { ops, reply } => {
                    if let Some(p) = &self.poisoned {
                        let _ = reply.send(Err(Error::Poisoned(p.clone())));
                        continue;
                    }
                    let counts = Counts::of(&ops);
                    match self.stage(ops).await {
                        Ok(()) => waiters.push((reply, counts)),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                WriteMsg::Sync { reply } => syncs.push(reply),
                WriteMsg::Close { reply } => close = Some(reply),
            }
        }
        let want_sync =
            self.opts.sync == SyncPolicy::Always || !syncs.is_empty() || close.is_some();
        let res = if let Some(p) = &self.poisoned {
            Err(Error::Poisoned(p.clone()))
        } else {
            self.commit(want_sync).await
        };
        match res {
            Ok(()) => {
                for (reply, counts) in waiters {
                    counts.record(&self.shared);
                    let _ = reply.send(Ok(()));
                }
                for reply in syncs {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (reply, _) in waiters {
                    let _ = reply.send(Err(match &e {
                        Error::Io(io) => clone_io_err(io),
                        _ => Error::Poisoned(msg.clone()),
                    }));
                }
                for reply in syncs {
                    let _ = reply.send(Err(Error::Poisoned(msg.clone())));
                }
            }
        }
        close
    }

    /// Encodes one request into the group buffer, rotating first if it would overflow the file.
    async fn stage(&mut self, req: Request) -> Result<()> {
        let len = req.encoded_len() as u64;
        let max = self.opts.max_file_bytes;
        if let Request::Batch(_) = req {
            if len > max - FILE_HEADER_LEN as u64 {
                return Err(Error::BatchTooLarge {
                    len,
                    max: max - FILE_HEADER_LEN as u64,
                });
            }
        }
        let pos = self.active.len + self.buf.len() as u64;
        if pos + len > max && pos > FILE_HEADER_LEN as u64 {
            if let Err(e) = self.rotate().await {
                self.poison(&e);
                return Err(Error::Io(e));
            }
        }
        match req {
            Request::Single(op) => self.encode(&op, 0),
            Request::Batch(ops) => {
                let n = ops.len();
                for (i, op) in ops.iter().enumerate() {
                    let end = if i + 1 == n { FLAG_BATCH_END } else { 0 };
                    self.encode(op, FLAG_BATCH | end);
                }
            }
        }
        Ok(())
    }

    fn encode(&mut self, op: &Op, flags: u8) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let offset = self.active.len + self.buf.len() as u64;
        let start = self.buf.len();
        let (expiry_ms, tombstone) = match op {
            Op::Put {
                key,
                value,
                expiry_ms,
            } => {
                record::encode_record(&mut self.buf, seq, *expiry_ms, flags, key, value);
                (*expiry_ms, false)
            }
            Op::Delete { key } => {
                record::encode_record(
                    &mut self.buf,
                    seq,
                    0,
                    flags | record::FLAG_TOMBSTONE,
                    key,
                    &[],
                );
                (0, true)
            }
        };
        let len = (self.buf.len() - start) as u32;
        self.active.hint.push(&HintRecord {
            seq,
            expiry_ms,
            offset,
            record_len: len,
            tombstone,
            key: op.key(),
        });
        let key = match op {
            Op::Put { key, .. } | Op::Delete { key } => key.clone(),
        };
        self.pending.push(Pending {
            key,
            entry: Entry {
                seq,
                expiry_ms,
                file_id: self.active.id,
                // Offsets stay below `max_file_bytes` (at most 2 GiB): rotation happens first.
                offset: offset as u32,
                len,
            },
            tombstone,
        });
    }

    /// Appends the group buffer to the active file.
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        Self::reserve(&mut self.active, &self.opts, self.buf.len() as u64);
        let buf = std::mem::take(&mut self.buf);
        let n = buf.len() as u64;
        let (res, mut buf) = self.active.file.write_all_at(buf, self.active.len).await;
        buf.clear();
        self.buf = buf;
        res?;
        self.active.len += n;
        self.dirty = true;
        Shared::add(&self.shared.bytes_written, n);
        let id = self.active.id;
        let len = self.active.len;
        self.shared
            .with_usage(|u| Shared::usage_entry(u, id).total_bytes = len);
        Ok(())
    }

    /// Writes the group, syncs if asked, then makes it visible in the keydir.
    async fn commit(&mut self, sync: bool) -> Result<()> {
        let res = async {
            self.flush().await?;
            if sync {
                self.sync_active().await?;
            }
            Ok::<(), std::io::Error>(())
        }
        .await;
        if let Err(e) = res {
            self.pending.clear();
            self.poison(&e);
            return Err(Error::Io(e));
        }
        Shared::add(&self.shared.group_commits, 1);
        self.apply_pending();
        Ok(())
    }

    fn apply_pending(&mut self) {
        let keydir = &self.keydir;
        let pending = &mut self.pending;
        let just_sealed = &mut self.just_sealed;
        self.shared.with_usage(|usage| {
            for p in pending.drain(..) {
                let own = Shared::usage_entry(usage, p.entry.file_id);
                own.min_seq = own.min_seq.min(p.entry.seq);
                let old = if p.tombstone {
                    own.dead_bytes += u64::from(p.entry.len);
                    keydir.remove_older(&p.key, p.entry.seq)
                } else {
                    match keydir.install(&p.key, p.entry) {
                        Installed::Replaced(old) => Some(old),
                        Installed::New => None,
                        Installed::Stale => {
                            own.dead_bytes += u64::from(p.entry.len);
                            None
                        }
                    }
                };
                if let Some(old) = old {
                    Shared::add_dead(usage, old.file_id, u64::from(old.len));
                }
            }
            // Every keydir update of these files is applied: merge may take them now.
            for id in just_sealed.drain(..) {
                if let Some(f) = usage.get_mut(&id) {
                    f.sealed = true;
                }
            }
        });
    }

    /// Seals the active file (sync, trim, hint) and starts the next one.
    async fn rotate(&mut self) -> std::io::Result<()> {
        self.flush().await?;
        self.seal().await?;
        self.just_sealed.push(self.active.id);
        let id = self.shared.allocate_file_id()?;
        let active = Self::create_active(&self.dir, self.kind, &self.opts, id)
            .await
            .map_err(|e| match e {
                Error::Io(e) => e,
                other => std::io::Error::other(other.to_string()),
            })?;
        self.active = active;
        self.dirty = false;
        self.shared.active_file_id.store(id, Ordering::Relaxed);
        self.shared
            .with_usage(|u| Shared::usage_entry(u, id).total_bytes = FILE_HEADER_LEN as u64);
        tracing::debug!(file_id = id, "rotated to a new datafile");
        Ok(())
    }

    /// Syncs and trims the active file and writes its hint file. A failed hint is only logged:
    /// recovery scans a datafile that has none.
    async fn seal(&mut self) -> std::io::Result<()> {
        let a = &self.active;
        a.file.set_len(a.len)?;
        a.file.sync_all().await?;
        self.dirty = false;
        let fault = self.opts.fault_injector.as_ref();
        let (id, len) = (a.id, a.len);
        if let Err(e) = self
            .active
            .hint
            .write(self.kind, &self.dir, id, len, fault)
            .await
        {
            tracing::warn!(file_id = id, "could not write a hint file: {e}");
            if fault.is_some_and(|f| f.has_crashed()) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Final sync and seal on close or drop; releases the directory lock.
    async fn shutdown(&mut self) -> Result<()> {
        let res = if let Some(p) = &self.poisoned {
            Err(Error::Poisoned(p.clone()))
        } else {
            self.close_active().await.map_err(Error::Io)
        };
        self.lock = None;
        res
    }

    async fn close_active(&mut self) -> std::io::Result<()> {
        self.flush().await?;
        if self.active.hint.count() == 0 {
            // Nothing was written: do not leave an empty file behind.
            let path = data_path(&self.dir, self.active.id);
            io::remove_file(fault(&self.opts), &path)?;
            io::sync_dir(fault(&self.opts), &self.dir)?;
            let id = self.active.id;
            self.shared.with_usage(|u| u.remove(&id));
            return Ok(());
        }
        self.seal().await
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
    fn of(req: &Request) -> Counts {
        let ops: &[Op] = match req {
            Request::Single(op) => std::slice::from_ref(op),
            Request::Batch(ops) => ops,
        };
        let deletes = ops
            .iter()
            .filter(|o| matches!(o, Op::Delete { .. }))
            .count() as u64;
        Counts {
            puts: ops.len() as u64 - deletes,
            deletes,
            batch: matches!(req, Request::Batch(_)),
        }
    }

    fn record(self, s: &Shared) {
        Shared::add(&s.puts, self.puts);
        Shared::add(&s.deletes, self.deletes);
        if self.batch {
            Shared::add(&s.batches, 1);
        }
    }
}
