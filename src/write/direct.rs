//! The direct-IO writer's side of the active file: its `O_DIRECT | O_DSYNC` handle, the group
//! write of the [`Tail`], and the zeroes written ahead of it.
//!
//! A durable write into space that was allocated but never written costs a journalled extent
//! conversion on every group (fio on this disk: an `fdatasync` after writing into `fallocate`d
//! space takes about twice as long as one over written blocks). So the writer keeps the next
//! stretch of the file written with zeroes, [`ZERO_CHUNK`] bytes at a time, as its own
//! `O_DIRECT | O_DSYNC` writes in flight beside the group writes: one conversion per chunk, and
//! group writes into that stretch are overwrites. A zero write never overlaps bytes a group
//! wrote or will write while it is in flight: it starts past the end of the last group write,
//! and a group write that would reach into it waits for it first.

use std::io;
use std::rc::Rc;

use tokio::task::JoinHandle;

use super::tail::Tail;
use crate::io::{DirectBuf, IoFile, Registered, DIRECT_ALIGN};

/// Bytes of zeroes per write ahead of the tail.
pub(crate) const ZERO_CHUNK: u64 = 1 << 20;

/// A new zero write starts when less than this much written space is left past the tail.
const ZERO_LOW_WATER: u64 = 1 << 20;

/// The group write's buffer is dropped rather than kept when a group grew it past this.
const KEEP_WBUF_BYTES: usize = 4 << 20;

/// Group writes of up to this many bytes go from a buffer registered with the writer's ring
/// (larger ones from a plain allocation): at 4 KiB a record, 256 records.
pub(crate) const REGISTERED_GROUP_SPAN: usize = 1 << 20;

/// The writer thread's registered buffers: one for group writes (the writer has one in flight
/// at a time) and one of zeroes, for the zero writes ahead. Must run on the writer's ring.
pub(crate) fn register_writer_buffers() -> Option<Rc<Registered>> {
    Registered::register(&[
        (1, REGISTERED_GROUP_SPAN),
        (1, ZERO_CHUNK as usize + DIRECT_ALIGN as usize),
    ])
    .map(Rc::new)
}

type ZeroTask = JoinHandle<(io::Result<()>, DirectBuf)>;

/// The active file as the direct-IO writer writes it.
pub(crate) struct DirectFile {
    file: Rc<IoFile>,
    /// The writer thread's registered buffers (`None` where registering failed).
    regs: Option<Rc<Registered>>,
    /// The plain buffer the tail is copied into when no registered one fits, reused.
    wbuf: Vec<u8>,
    /// Every block below this offset has been written and synced (zeroes or records).
    written_end: u64,
    /// The zero write in flight, and the end of its range.
    zeroing: Option<(u64, ZeroTask)>,
    /// An aligned buffer of zeroes, [`ZERO_CHUNK`] long past its aligned start (moved into the
    /// zero write in flight and back).
    zeroes: Option<DirectBuf>,
    /// No zeroes past this offset (the file's size limit); 0 after a zero write failed.
    zero_limit: u64,
}

impl DirectFile {
    /// The direct-IO writer of a file just created; zeroes up to `limit` at most.
    pub(crate) fn new(file: IoFile, limit: u64, regs: Option<Rc<Registered>>) -> DirectFile {
        DirectFile {
            file: Rc::new(file),
            regs,
            wbuf: Vec::new(),
            // The header's block, written and synced at creation.
            written_end: DIRECT_ALIGN,
            zeroing: None,
            zeroes: None,
            zero_limit: limit.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN,
        }
    }

    /// Writes the tail's unwritten blocks as one write (see [`crate::write::tail`]): covers
    /// every record appended before it copied the tail. Then starts the next zero write if
    /// the written space ahead runs low. Returns whether the write went from a registered
    /// buffer (`false` also when there was nothing to write).
    pub(crate) async fn flush(&mut self, tail: &Tail) -> io::Result<bool> {
        let regs = self.regs.as_deref();
        let wbuf = &mut self.wbuf;
        let take = |span: usize| {
            match regs.filter(|_| span <= REGISTERED_GROUP_SPAN) {
                Some(r) => r.take(span),
                None => None,
            }
            .unwrap_or_else(|| DirectBuf::plain(std::mem::take(wbuf), span))
        };
        let Some((buf, at, span, done)) = tail.copy_out(take) else {
            return Ok(false);
        };
        let end = done.base + span as u64;
        if end > self.written_end {
            // The group reaches past the written space: into the zero write in flight, which
            // must land first, or into space never written.
            self.finish_zeroing().await;
        }
        let (res, buf) = self.file.write_direct(buf, at, span, done.base).await;
        let registered = buf.is_fixed();
        if let DirectBuf::Plain(v) = buf {
            if v.capacity() <= KEEP_WBUF_BYTES {
                self.wbuf = v;
            }
        }
        res?;
        tail.written(done);
        self.written_end = self.written_end.max(end);
        self.zero_ahead(end);
        Ok(registered)
    }

    /// Starts a zero write past `data_end` (the end of the last group write) when the written
    /// space ahead of it is below [`ZERO_LOW_WATER`] and none is in flight.
    fn zero_ahead(&mut self, data_end: u64) {
        if self.zeroing.is_some() || self.written_end >= data_end + ZERO_LOW_WATER {
            return;
        }
        let start = self.written_end.max(data_end);
        let len = ZERO_CHUNK.min(self.zero_limit.saturating_sub(start));
        if len == 0 {
            return;
        }
        let chunk = ZERO_CHUNK as usize;
        let zeroes = self
            .zeroes
            .take()
            .or_else(|| self.regs.as_deref()?.take(chunk + DIRECT_ALIGN as usize))
            .unwrap_or_else(|| DirectBuf::plain(Vec::new(), chunk));
        let at = zeroes.aligned_at();
        let file = self.file.clone();
        let task = tokio::task::spawn_local(async move {
            file.write_direct(zeroes, at, len as usize, start).await
        });
        self.zeroing = Some((start + len, task));
    }

    /// Waits for the zero write in flight, if any. A failed one only stops the zeroes for this
    /// file (group writes into unwritten space are slower, not wrong).
    pub(crate) async fn finish_zeroing(&mut self) {
        let Some((end, task)) = self.zeroing.take() else {
            return;
        };
        match task.await {
            Ok((Ok(()), zeroes)) => {
                self.written_end = self.written_end.max(end);
                self.zeroes = Some(zeroes);
            }
            Ok((Err(e), _)) => {
                tracing::debug!("writing zeroes ahead of the active file failed ({e}); stopped");
                self.zero_limit = 0;
            }
            Err(e) => {
                tracing::debug!("the zero write task ended ({e}); zeroes stopped");
                self.zero_limit = 0;
            }
        }
    }
}
