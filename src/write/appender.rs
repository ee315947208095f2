//! The append side: positioned `pwrite`s to the active datafile under one mutex, made by whoever
//! submits a write, with the keydir updated in the same critical section.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::request::{Appended, BatchIf, Cond, Counts, Op, ReqRef};
use super::tail::Tail;
use crate::fault::FaultInjector;
use crate::files::hint::HintBuilder;
use crate::format::{self, HintRecord, FILE_HEADER_LEN, FLAG_BATCH, FLAG_BATCH_END};
use crate::io::{self};
use crate::keydir::{Entry, Installed, KeyDir};
use crate::state::Shared;
use crate::{Error, Options, Result, SyncPolicy};

/// A keydir update for a record just written (its key is the request's op at the same index).
struct Pending {
    entry: Entry,
    key_len: usize,
    tombstone: bool,
}

/// The value file of the active datafile (format v2, direct-IO writer only): values of the
/// sizes [`format::goes_apart`] takes, each from a block boundary, written by the writer
/// thread from [`Appender::vals_tail`].
pub(crate) struct ActiveVals {
    /// A plain descriptor, for the trim at sealing.
    pub(super) fd: std::fs::File,
    /// Bytes of the file (its header block included): the offset of the next value.
    pub(super) len: u64,
}

/// The active datafile as the append path sees it.
pub(crate) struct ActiveFile {
    pub(super) id: u32,
    /// A plain descriptor for `pwrite` and `fallocate`.
    pub(super) fd: std::fs::File,
    /// Bytes of the file already written (header included).
    pub(super) len: u64,
    /// End of the space reserved with `fallocate`.
    pub(super) allocated: u64,
    /// [`ActiveFile::total_len`] when a background writeback was last asked for (see
    /// [`WRITEBACK_BYTES`]).
    pub(super) writeback_from: u64,
    pub(super) hint: HintBuilder,
    /// Written by the direct-IO writer: appends go to the [`Tail`], the writer thread writes
    /// them (see [`crate::write::tail`]).
    pub(super) direct: bool,
    /// The datafile's value file, when its values may be kept apart.
    pub(super) vals: Option<ActiveVals>,
}

impl ActiveFile {
    /// Bytes of the datafile and its value file.
    pub(super) fn total_len(&self) -> u64 {
        self.len + self.vals.as_ref().map_or(0, |v| v.len)
    }
}

/// Under [`SyncPolicy::Never`], an append that leaves this many bytes written since the last
/// writeback request asks the writer thread for a background `fdatasync` (the caller does not
/// wait). Without it a 256 MiB file reached sealing with up to 256 MiB dirty, and the seal's
/// sync stalled every append for ~250 ms (4 KiB puts, 125k in a row: 65–108k puts/s, worst put
/// 204–258 ms; with no rotation 111–157k/s). The seal must stay ahead of the next file's first
/// append: a power loss may then tear only the last file.
pub(crate) const WRITEBACK_BYTES: u64 = 16 << 20;

/// A single put's value of this many bytes or more is written from the caller's buffer (a
/// second `pwrite` after its header and key) instead of being copied into the encode buffer.
const SPLIT_VALUE_BYTES: usize = 64 << 10;

/// The encode buffer is dropped rather than kept when a write grew it past this.
const KEEP_BUF_BYTES: usize = 4 << 20;

pub(super) struct AppendState {
    /// `None` while the writer thread rotates, and after close: appends go to the writer.
    pub(super) active: Option<ActiveFile>,
    pub(super) next_seq: u64,
    /// Encoding buffer, reused.
    buf: Vec<u8>,
    pending: Vec<Pending>,
    /// Set after an IO failure: no more writes, no hint for the active file.
    poisoned: Option<String>,
    pub(super) closed: bool,
}

/// The append side of the store, shared by every caller and the writer thread.
pub(crate) struct Appender {
    state: Mutex<AppendState>,
    pub(super) keydir: Arc<KeyDir>,
    pub(super) shared: Arc<Shared>,
    max_file_bytes: u64,
    preallocate_bytes: u64,
    /// [`WRITEBACK_BYTES`] under `SyncPolicy::Never`, else 0 (the other policies sync anyway).
    writeback_bytes: u64,
    fault: Option<Arc<FaultInjector>>,
    /// An append passed [`WRITEBACK_BYTES`]: its caller asks for a writeback.
    writeback_due: AtomicBool,
    /// Bytes were appended since the last `fdatasync` started.
    pub(super) dirty: AtomicBool,
    /// The highest seq whose record is written (in the page cache at least).
    pub(super) appended_seq: AtomicU64,
    /// Every record with a seq up to this one is on stable storage.
    pub(super) synced_seq: AtomicU64,
    /// The active file's unwritten blocks when it is written directly.
    pub(super) tail: Arc<Tail>,
    /// The unwritten blocks of the active file's value file.
    pub(super) vals_tail: Arc<Tail>,
    /// The direct-IO writers of the active file, and who leads the next group write.
    pub(crate) group: super::lead::GroupCommit,
}

pub(super) fn clone_io_err(e: &std::io::Error) -> Error {
    Error::Io(std::io::Error::new(e.kind(), e.to_string()))
}

impl Appender {
    pub(super) fn new(
        opts: &Options,
        keydir: Arc<KeyDir>,
        shared: Arc<Shared>,
        next_seq: u64,
    ) -> Self {
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
            // Under the direct writer a writeback flushes the tail, so a tail whose appenders
            // never ask for a sync (cancelled puts) still stays bounded.
            writeback_bytes: if opts.sync == SyncPolicy::Never || opts.direct_writes() {
                WRITEBACK_BYTES
            } else {
                0
            },
            fault: opts.fault_injector.clone(),
            writeback_due: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            appended_seq: AtomicU64::new(next_seq.saturating_sub(1)),
            synced_seq: AtomicU64::new(next_seq.saturating_sub(1)),
            tail: Arc::new(Tail::default()),
            vals_tail: Arc::new(Tail::default()),
            group: Default::default(),
        }
    }

    /// The append side of a read-only store: closed, so every append is refused (the handle
    /// refuses writes before they get here).
    pub(crate) fn read_only(opts: &Options, keydir: Arc<KeyDir>, shared: Arc<Shared>) -> Self {
        let a = Self::new(opts, keydir, shared, 1);
        a.lock().closed = true;
        a
    }

    /// The state; a lock poisoned by a panic is recovered (its fields stay consistent: every
    /// change is made after the system call it depends on returned).
    pub(super) fn lock(&self) -> MutexGuard<'_, AppendState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an append asked for a background writeback since the last call (clears it).
    pub(crate) fn take_writeback_due(&self) -> bool {
        // A plain load first: the flag is rarely set, so its line stays shared between cores.
        self.writeback_due.load(Ordering::Relaxed)
            && self.writeback_due.swap(false, Ordering::Relaxed)
    }

    /// Runs `f` while no write can be appended or applied to the keydir: what `f` sees of the
    /// keydir holds each write whole or not at all.
    pub(crate) fn quiesced<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = self.lock();
        f()
    }

    /// The seq of the last record appended (every write acknowledged so far has one at most
    /// this).
    pub(crate) fn appended_seq(&self) -> u64 {
        self.appended_seq.load(Ordering::Acquire)
    }

    /// The unwritten blocks of file `fid` (a read-path id, see [`crate::layout::VALS_BIT`])
    /// under the direct-IO writer, for readers: the tail of the active datafile or of its
    /// value file.
    pub(crate) fn tail_for(&self, fid: u32) -> &Tail {
        if fid & crate::layout::VALS_BIT != 0 {
            &self.vals_tail
        } else {
            &self.tail
        }
    }

    /// Whether every record up to `seq` is on stable storage.
    pub(crate) fn is_synced(&self, seq: u64) -> bool {
        self.synced_seq.load(Ordering::Acquire) >= seq
    }

    /// Appends `req` to the active file and applies it to the keydir. `Ok(None)` when it cannot
    /// be done here: the active file is full (or being rotated), so the writer thread must take
    /// the request. Returns the seq of the request's last record.
    pub(crate) fn try_append(&self, req: ReqRef<'_>) -> Result<Option<Appended>> {
        let len = req.encoded_len() as u64;
        let room = self.max_file_bytes - FILE_HEADER_LEN as u64;
        if matches!(req, ReqRef::Batch(..)) && len > room {
            return Err(Error::BatchTooLarge { len, max: room });
        }
        let mut guard = self.lock();
        self.append_locked(&mut guard, req)
    }

    /// Makes `active` the file appends go to and, in the same critical section, appends `req`
    /// (the request that found the previous file full), so that no other append can fill the
    /// fresh file first.
    pub(super) fn install(
        &self,
        active: ActiveFile,
        req: Option<ReqRef<'_>>,
    ) -> Result<Option<Appended>> {
        let mut guard = self.lock();
        guard.active = Some(active);
        match req {
            Some(req) => self.append_locked(&mut guard, req),
            None => Ok(None),
        }
    }

    fn append_locked(&self, st: &mut AppendState, req: ReqRef<'_>) -> Result<Option<Appended>> {
        let len = req.encoded_len() as u64;
        if let Some(p) = &st.poisoned {
            return Err(Error::Poisoned(p.clone()));
        }
        if st.closed {
            return Err(Error::Closed);
        }
        let holds = match req {
            ReqRef::If(op, cond) => self.holds(op.key(), cond),
            ReqRef::Batch(ops, BatchIf::AllAbsent) => {
                ops.iter().all(|op| self.holds(op.key(), Cond::Absent))
            }
            ReqRef::Single(_) | ReqRef::Batch(_, BatchIf::Always) => true,
        };
        if !holds {
            return Ok(Some(Appended::Refused));
        }
        let Some(active) = st.active.as_mut() else {
            return Ok(None);
        };
        // Values kept apart take whole blocks (up to an eighth more) and a reference each.
        let need = match &active.vals {
            Some(_) => len + len / 8 + (format::VALUE_REF_LEN as u64) * req.ops() as u64,
            None => len,
        };
        let total = active.total_len();
        if total + need > self.max_file_bytes && active.len > FILE_HEADER_LEN as u64 {
            return Ok(None);
        }
        // A lone durable writer keeps its values in their records: its group write is then
        // one write, not one per file (the value file's write would double the device's
        // flushes); a merge moves them apart.
        let apart = active.vals.is_some() && !self.group.lone_writer();
        let (seq, tail) = self.encode_req(
            active,
            apart,
            &mut st.buf,
            &mut st.pending,
            st.next_seq,
            req,
        );
        st.next_seq = seq + 1;
        let res = self.write_buf(active, &[&st.buf, tail]);
        st.buf.clear();
        if st.buf.capacity() > KEEP_BUF_BYTES {
            // A large batch passed: do not keep its buffer for the life of the store.
            st.buf = Vec::new();
        }
        if let Err(e) = res {
            st.pending.clear();
            tracing::error!("append failed, refusing further writes until reopen: {e}");
            st.poisoned = Some(e.to_string());
            return Err(clone_io_err(&e));
        }
        self.appended_seq.store(seq, Ordering::Release);
        // Both files count: values kept apart grow the value file's tail, not the datafile's.
        let written = active.total_len();
        if self.writeback_bytes > 0 && written - active.writeback_from >= self.writeback_bytes {
            active.writeback_from = written;
            self.writeback_due.store(true, Ordering::Relaxed);
        }
        match req {
            ReqRef::Single(op) | ReqRef::If(op, _) => {
                self.apply(active, std::iter::once(op.key()), &mut st.pending)
            }
            ReqRef::Batch(ops, _) => self.apply(active, ops.iter().map(Op::key), &mut st.pending),
        }
        Counts::of(req).record(&self.shared);
        Ok(Some(Appended::Seq(seq)))
    }

    /// Encodes the records of `req`, the first with seq `seq`, into `buf`; returns the seq of
    /// the last one, and a large value to write from the caller's buffer after `buf` (empty
    /// when there is none).
    fn encode_req<'r>(
        &self,
        active: &mut ActiveFile,
        apart: bool,
        buf: &mut Vec<u8>,
        pending: &mut Vec<Pending>,
        seq: u64,
        req: ReqRef<'r>,
    ) -> (u64, &'r [u8]) {
        let vals = &self.vals_tail;
        match req {
            ReqRef::Single(op) | ReqRef::If(op, _) => {
                // A large value is written from the caller's buffer, after its header and key
                // (unless it goes to the value file).
                let mut tail: &[u8] = &[];
                if let Op::Put { value, .. } = op {
                    if value.len() >= SPLIT_VALUE_BYTES
                        && !(apart && format::goes_apart(value.len()))
                    {
                        tail = value;
                    }
                }
                let inline = tail.is_empty();
                Self::encode(active, apart, vals, buf, pending, seq, op, 0, inline);
                (seq, tail)
            }
            ReqRef::Batch(ops, _) => {
                let n = ops.len();
                for (i, op) in ops.iter().enumerate() {
                    let end = if i + 1 == n { FLAG_BATCH_END } else { 0 };
                    let flags = FLAG_BATCH | end;
                    let seq = seq + i as u64;
                    Self::encode(
                        active,
                        apart,
                        vals,
                        buf,
                        pending,
                        seq,
                        op.view(),
                        flags,
                        true,
                    );
                }
                (seq + n as u64 - 1, &[])
            }
        }
    }

    /// Whether `key`'s current entry meets `cond` (called under the append lock, which every
    /// write of the key takes: nothing can change it before the append that follows).
    fn holds(&self, key: &[u8], cond: Cond) -> bool {
        let live = self
            .keydir
            .get(key)
            .filter(|e| e.expiry_ms == 0 || !e.is_expired(crate::clock::now_ms()));
        match cond {
            Cond::Absent => live.is_none(),
            Cond::SeqIs(seq) => live.is_some_and(|e| e.seq == seq),
        }
    }

    /// Encodes the record of `op` into `buf` (its value into the value file's tail when it
    /// goes apart) and queues its keydir update and hint.
    #[allow(clippy::too_many_arguments)]
    fn encode(
        active: &mut ActiveFile,
        apart: bool,
        vals_tail: &Tail,
        buf: &mut Vec<u8>,
        pending: &mut Vec<Pending>,
        seq: u64,
        op: Op<&[u8]>,
        flags: u8,
        inline_value: bool,
    ) {
        let offset = active.len + buf.len() as u64;
        let (key, expiry_ms, tombstone, len) = match op {
            Op::Put {
                key,
                value,
                expiry_ms,
            } if apart && format::goes_apart(value.len()) => {
                let at = Self::put_apart(active, vals_tail, value);
                format::encode_record_apart(buf, seq, expiry_ms, flags, key, at);
                let len = format::record_len(key.len(), format::VALUE_REF_LEN);
                let rec = (offset, len, false);
                return Self::queue(active, pending, seq, expiry_ms, key, rec, Some(at));
            }
            Op::Put {
                key,
                value,
                expiry_ms,
            } => {
                if inline_value {
                    format::encode_record(buf, seq, expiry_ms, flags, key, value);
                } else {
                    format::encode_record_head(buf, seq, expiry_ms, flags, key, value);
                }
                (
                    key,
                    expiry_ms,
                    false,
                    format::record_len(key.len(), value.len()),
                )
            }
            Op::Delete { key } => {
                let flags = flags | format::FLAG_TOMBSTONE;
                format::encode_record(buf, seq, 0, flags, key, &[]);
                (key, 0, true, format::record_len(key.len(), 0))
            }
        };
        let rec = (offset, len, tombstone);
        Self::queue(active, pending, seq, expiry_ms, key, rec, None);
    }

    /// Appends `value` to the value file's tail, from a block boundary; returns where it lies.
    fn put_apart(active: &mut ActiveFile, vals_tail: &Tail, value: &[u8]) -> format::Apart {
        let Some(vals) = active.vals.as_mut() else {
            unreachable!("only called with a value file");
        };
        let at = format::Apart {
            offset: vals.len,
            // `goes_apart` bounds it by the format's value limit.
            len: value.len() as u32,
            crc: format::value_crc(value),
        };
        vals_tail.push_block_aligned(value);
        vals.len += format::vals_span(value.len() as u64);
        at
    }

    /// Queues the hint and keydir update of the record `(offset, len, tombstone)` of the
    /// active file.
    fn queue(
        active: &mut ActiveFile,
        pending: &mut Vec<Pending>,
        seq: u64,
        expiry_ms: u64,
        key: &[u8],
        (offset, len, tombstone): (u64, usize, bool),
        apart: Option<format::Apart>,
    ) {
        // Bounded by `max_file_bytes` (< 4 GiB), checked by `Options::validate`.
        let len = len as u32;
        // A put whose TTL has already passed reads as absent: the keydir applies it as a delete
        // (it still hides older values of its key), so the key count stays exact.
        let expired = expiry_ms != 0 && expiry_ms <= crate::clock::now_ms();
        active.hint.push(&HintRecord {
            seq,
            expiry_ms,
            offset,
            record_len: len,
            tombstone,
            key,
            apart,
        });
        // Offsets stay below `max_file_bytes` (at most 2 GiB): rotation happens first, and
        // it counts the value file.
        let entry = Entry::located(seq, expiry_ms, active.id, (offset, len), apart);
        pending.push(Pending {
            entry,
            key_len: key.len(),
            tombstone: tombstone || expired,
        });
    }

    /// Writes `parts`, one after the other, at the end of the active file, preallocating
    /// ahead first (best effort).
    fn write_buf(&self, active: &mut ActiveFile, parts: &[&[u8]]) -> std::io::Result<()> {
        let need: u64 = parts.iter().map(|p| p.len() as u64).sum();
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
        if active.direct {
            // The writer thread writes it (see `tail`); nothing to wait for here.
            self.tail.push(parts);
            self.appended(active, need);
            return Ok(());
        }
        let mut at = active.len;
        for part in parts.iter().filter(|p| !p.is_empty()) {
            io::pwrite_all(self.fault.as_deref(), &active.fd, part, at).map_err(|e| {
                let file = crate::layout::data_path(std::path::Path::new(""), active.id);
                let what = format!(
                    "appending {need} bytes at offset {} of {}",
                    active.len,
                    file.display()
                );
                io::context(e, what)
            })?;
            at += part.len() as u64;
        }
        self.appended(active, need);
        Ok(())
    }

    /// Accounts for `need` bytes appended to the active file.
    fn appended(&self, active: &mut ActiveFile, need: u64) {
        active.len += need;
        self.dirty.store(true, Ordering::Release);
        self.shared.bytes_written.add(need);
        self.shared.appends.add(1);
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
                own_dead += p.entry.footprint(p.key_len);
            }
            match outcome {
                Installed::Replaced(old) if old.data_id() == active.id => {
                    own_dead += old.footprint(p.key_len)
                }
                Installed::Replaced(old) => others.push((old.data_id(), old.footprint(p.key_len))),
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
            own.total_bytes = active.total_len();
            own.vals_bytes = active.vals.as_ref().map_or(0, |v| v.len);
            own.dead_bytes += own_dead;
            own.min_seq = own.min_seq.min(own_min_seq);
            for (id, len) in others {
                Shared::add_dead(usage, id, len);
            }
        });
    }

    pub(super) fn poison(&self, e: &std::io::Error) {
        tracing::error!("write path failed, refusing further writes until reopen: {e}");
        let mut st = self.lock();
        if st.poisoned.is_none() {
            st.poisoned = Some(e.to_string());
        }
    }

    pub(super) fn poisoned(&self) -> Option<String> {
        self.lock().poisoned.clone()
    }
}
