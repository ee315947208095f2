//! The writer thread: group commit of syncs, the interval sync, rotation, sealing and close.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::appender::{clone_io_err, ActiveFile, ActiveVals, Appender};
use super::direct::DirectFile;
use super::lead::Leads;
use super::own::{register_writer_buffers, OwnFiles};
use super::request::{fan_out, Appended, ReqRef, Request, SyncResult, WriteMsg};
use crate::fault::FaultInjector;
use crate::files::hint::HintBuilder;
use crate::format::{self, FileKind, FILE_HEADER_LEN};
use crate::io::direct::DirectWriteFile;
use crate::io::lock::DirLock;
use crate::io::DIRECT_ALIGN;
use crate::io::{self, fs, IoFile, Registered};
use crate::keydir::KeyDir;
use crate::layout::{data_path, vals_path, VALS_BIT};
use crate::options::IoBackendKind;
use crate::state::Shared;
use crate::{Error, GroupFlush, Options, Result, SyncPolicy};

/// A new active file: the writer's handle, the direct-IO writers of the datafile and of its
/// value file, and the file as the append path sees it.
type Created = (IoFile, (Leads, Option<OwnFiles>), ActiveFile);

/// The writer thread's state.
pub(crate) struct Writer {
    dir: PathBuf,
    kind: IoBackendKind,
    opts: Options,
    shared: Arc<Shared>,
    appender: Arc<Appender>,
    /// The writer's own handle of the active file (syncs and sealing go through io_uring).
    io: IoFile,
    /// Its `O_DIRECT | O_DSYNC` handles of the active file and its value file, under the
    /// direct-IO writer.
    own: Option<OwnFiles>,
    /// Buffers registered with this thread's ring for its group writes.
    regs: Option<Rc<Registered>>,
    last_sync: Instant,
    lock: Option<Arc<DirLock>>,
}

fn fault(opts: &Options) -> Option<&FaultInjector> {
    opts.fault_injector.as_deref()
}

/// Whether a group writing the datafile and its value file makes both durable with one
/// `fdatasync` ([`GroupFlush::Once`]; `Auto` is resolved when the writer starts).
fn one_flush(opts: &Options) -> bool {
    opts.group_flush == GroupFlush::Once
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
        let mut opts = opts;
        if opts.direct_writes() && opts.values_apart && opts.group_flush == GroupFlush::Auto {
            opts.group_flush = match io::device::one_flush_fits(&dir) {
                true => GroupFlush::Once,
                false => GroupFlush::EachWrite,
            };
        }
        let appender = Arc::new(Appender::new(&opts, keydir, shared.clone(), next_seq));
        let id = shared.allocate_file_id()?;
        let regs = match kind {
            IoBackendKind::IoUring if opts.direct_writes() => register_writer_buffers(),
            _ => None,
        };
        let (io, (leads, own), active) = Self::create_active(&dir, kind, &opts, id).await?;
        let mut w = Writer {
            dir,
            kind,
            opts,
            shared,
            appender,
            io,
            own,
            regs,
            last_sync: Instant::now(),
            lock: Some(lock),
        };
        *w.appender.group.lock().await = leads;
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
    ) -> Result<Created> {
        let path = data_path(dir, id);
        let creating = |e: std::io::Error| io::context(e, format!("creating {}", path.display()));
        let file =
            IoFile::create_new(kind, &path, opts.fault_injector.clone()).map_err(creating)?;
        let mut header = Vec::with_capacity(FILE_HEADER_LEN);
        format::encode_file_header(&mut header, FileKind::Data, id);
        let (r, _) = file.write_all_at(header, 0).await;
        r.map_err(creating)?;
        let fd = file.clone_std()?;
        file.sync_all().await.map_err(creating)?;
        fs::sync_dir(fault(opts), dir).map_err(creating)?;
        let direct = match opts.direct_writes() {
            true => Self::open_direct(kind, &path, opts),
            false => None,
        };
        let (vals, active_vals) = match &direct {
            Some(_) if opts.values_apart => match Self::create_vals(dir, kind, opts, id).await {
                Ok((d, a)) => (Some(d), Some(a)),
                Err(e) => {
                    tracing::warn!(
                        file = %vals_path(dir, id).display(),
                        "could not create the value file ({e}); keeping values in the datafile"
                    );
                    let _ = fs::remove_file(fault(opts), &vals_path(dir, id));
                    (None, None)
                }
            },
            _ => (None, None),
        };
        tracing::debug!(file = %path.display(), "started a new active datafile");
        let hint =
            HintBuilder::spilling(dir, id, opts.hint_spill_bytes, opts.fault_injector.clone());
        let active = ActiveFile {
            id,
            fd,
            len: FILE_HEADER_LEN as u64,
            // The first append preallocates (see `Appender::write_buf`).
            allocated: FILE_HEADER_LEN as u64,
            writeback_from: FILE_HEADER_LEN as u64 + active_vals.as_ref().map_or(0, |v| v.len),
            hint,
            direct: direct.is_some(),
            vals: active_vals,
        };
        let mut leads = Leads::none();
        let own = direct.map(|(d, (own, plain))| {
            leads.data = Some(d);
            let (v, own_vals) = vals.unzip();
            leads.vals = v;
            OwnFiles {
                data: own,
                data_plain: plain,
                vals: own_vals,
            }
        });
        Ok((file, (leads, own), active))
    }

    /// The direct-IO writer's handles of the datafile at `path`, just created (see
    /// [`OwnFiles`]); `None` where the file system refuses `O_DIRECT`.
    fn open_direct(
        kind: IoBackendKind,
        path: &std::path::Path,
        opts: &Options,
    ) -> Option<(DirectFile, (IoFile, Option<IoFile>))> {
        let fault = || opts.fault_injector.clone();
        let opened = DirectWriteFile::open(path, fault()).and_then(|f| {
            let own = IoFile::open_direct_write(kind, path, fault(), true)?;
            let plain = match one_flush(opts) {
                true => Some(IoFile::open_direct_write(kind, path, fault(), false)?),
                false => None,
            };
            Ok((f, (own, plain)))
        });
        match opened {
            // The header's block is on disk; the first group write rewrites it.
            Ok((f, own)) => Some((DirectFile::new(f, DIRECT_ALIGN, opts.max_file_bytes), own)),
            Err(e) => {
                tracing::info!(
                    file = %path.display(),
                    "O_DIRECT refused ({e}); writing this datafile buffered"
                );
                None
            }
        }
    }

    /// Creates the value file of datafile `id` (its header block written and synced) and
    /// opens it for the direct-IO writer.
    async fn create_vals(
        dir: &std::path::Path,
        kind: IoBackendKind,
        opts: &Options,
        id: u32,
    ) -> std::io::Result<((DirectFile, IoFile), ActiveVals)> {
        let path = vals_path(dir, id);
        let file = IoFile::create_new(kind, &path, opts.fault_injector.clone())?;
        let mut header = Vec::with_capacity(format::VALS_ALIGN as usize);
        format::encode_file_header(&mut header, FileKind::Vals, id);
        header.resize(format::VALS_ALIGN as usize, 0);
        let (r, _) = file.write_all_at(header, 0).await;
        r?;
        let fd = file.clone_std()?;
        file.sync_all().await?;
        fs::sync_dir(fault(opts), dir)?;
        let direct = DirectWriteFile::open(&path, opts.fault_injector.clone())?;
        let dsync = !one_flush(opts);
        let own = IoFile::open_direct_write(kind, &path, opts.fault_injector.clone(), dsync)?;
        let d = DirectFile::new(direct, format::VALS_ALIGN, opts.max_file_bytes);
        Ok((
            (d, own),
            ActiveVals {
                fd,
                len: format::VALS_ALIGN,
            },
        ))
    }

    /// Makes `active` the file appends go to, appending `req` first thing (see
    /// [`Appender::install`]).
    fn install(&mut self, active: ActiveFile, req: Option<ReqRef<'_>>) -> Result<Option<Appended>> {
        let id = active.id;
        if active.direct {
            // The header is on disk already; the first group's write rewrites its block.
            let mut header = Vec::with_capacity(FILE_HEADER_LEN);
            format::encode_file_header(&mut header, FileKind::Data, id);
            self.appender.tail.start(id, &header);
        }
        if let Some(v) = &active.vals {
            self.appender.vals_tail.start_at(id | VALS_BIT, v.len, &[]);
        }
        self.shared.active_file_id.store(id, Ordering::Relaxed);
        // A value file's header block counts as dead, as recovery counts it.
        let header_block = active.vals.as_ref().map_or(0, |v| v.len);
        self.shared.with_usage(|u| {
            let f = Shared::usage_entry(u, id);
            f.total_bytes = active.total_len();
            f.vals_bytes = header_block;
            f.dead_bytes = header_block;
        });
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

    /// `fdatasync` of the active file (the direct-IO writer: its group write) if anything was
    /// appended since the last one.
    async fn sync_active(&mut self) -> Result<()> {
        self.last_sync = Instant::now();
        if let Some(p) = self.appender.poisoned() {
            return Err(Error::Poisoned(p));
        }
        let a = self.appender.clone();
        {
            let mut leads = a.group.lock().await;
            if let (Some(_), Some(own)) = (&leads.data, &self.own) {
                return a
                    .sync_group_own(&mut leads, own, self.regs.as_deref())
                    .await
                    .map_err(Error::Io);
            }
        }
        let upto = a.appended_seq.load(Ordering::Acquire);
        if a.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.io.sync_data_now() {
                let id = self.shared.active_file_id.load(Ordering::Relaxed);
                let file = data_path(&self.dir, id);
                let e = io::context(e, format!("syncing {}", file.display()));
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
                    Ok(true) => waiters.push(reply),
                    // Refused: nothing was written, nothing to sync.
                    Ok(false) => {
                        let _ = reply.send(Ok(false));
                    }
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
                let _ = reply.send(Ok(true));
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
            Ok(()) => Ok(true),
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

    /// Appends a request that came over the channel, rotating first if the file is full;
    /// `Ok(false)` when a conditional request was refused.
    async fn append(&mut self, req: &Request) -> Result<bool> {
        if let Some(done) = self.appender.try_append(req.as_ref())? {
            return Ok(done != Appended::Refused);
        }
        let res = async {
            let (io, (leads, own), active) = self.rotate().await?;
            self.io = io;
            self.own = own;
            *self.appender.group.lock().await = leads;
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
            Some(done) => Ok(done != Appended::Refused),
            None => Err(Error::Io(std::io::Error::other(
                "a write did not fit in a fresh datafile",
            ))),
        }
    }

    /// Seals the active file (sync, trim, hint) and creates the next one, which the caller
    /// installs.
    async fn rotate(&mut self) -> std::io::Result<Created> {
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
        let appender = self.appender.clone();
        let upto = appender.appended_seq.load(Ordering::Acquire);
        // Held to the end of the seal: no caller leads a group meanwhile (waiters wake when
        // it is released, and find their records synced).
        let mut leads = appender.group.lock().await;
        if let (Some(_), Some(own)) = (&leads.data, &self.own) {
            appender
                .sync_group_own(&mut leads, own, self.regs.as_deref())
                .await?;
        }
        // A write landing after the trim would extend the file again.
        leads.settle_all().await;
        io::set_len(fault(&self.opts), &a.fd, a.len)?;
        self.io.sync_all().await?;
        if let Some(v) = &a.vals {
            io::set_len(fault(&self.opts), &v.fd, v.len)?;
            io::sync_file(fault(&self.opts), &v.fd)?;
        }
        // Every byte is on disk: reads of this file go there now.
        *leads = Leads::default();
        self.own = None;
        appender.tail.clear();
        appender.vals_tail.clear();
        // No append can land meanwhile: the file is out of the append path.
        appender.dirty.store(false, Ordering::Release);
        appender.synced_seq.fetch_max(upto, Ordering::AcqRel);
        drop(leads);
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
        if res.is_ok() && snapshot && self.opts.keydir_snapshot {
            let started = Instant::now();
            let usage = self.shared.with_usage(|u| u.clone());
            let saved = crate::files::snapshot::save(
                &self.dir,
                &self.appender.keydir,
                next_seq,
                &usage,
                fault(&self.opts),
            );
            match saved {
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
            let appender = self.appender.clone();
            let mut leads = appender.group.lock().await;
            leads.settle_all().await;
            *leads = Leads::default();
            drop(leads);
            if a.vals.is_some() {
                fs::remove_file(fault(&self.opts), &vals_path(&self.dir, a.id))?;
            }
            let path = data_path(&self.dir, a.id);
            fs::remove_file(fault(&self.opts), &path)?;
            fs::sync_dir(fault(&self.opts), &self.dir)?;
            self.appender.tail.clear();
            self.appender.vals_tail.clear();
            let id = a.id;
            self.shared.with_usage(|u| u.remove(&id));
            return Ok(());
        }
        self.seal(a).await
    }
}
