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

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::task::Poll;

use super::tail::{aligned, pad_into, Flush, Tail};
use crate::io::direct::{DirectWrite, DirectWriteFile, Slot};
use crate::io::ring::{RingBuf, SharedRing};
use crate::io::DIRECT_ALIGN;

/// Bytes of zeroes per write ahead of the tail.
pub(crate) const ZERO_CHUNK: u64 = 1 << 20;

/// A new zero write starts when less than this much written space is left past the tail.
const ZERO_LOW_WATER: u64 = 1 << 20;

/// The group write's buffer is dropped rather than kept when a group grew it past this.
const KEEP_WBUF_BYTES: usize = 4 << 20;

/// A group write in flight: what it covers, and where it ends.
struct GroupWrite {
    op: DirectWrite,
    done: Flush,
    end: u64,
}

/// The active file (or its value file) as the direct-IO writer writes it. Its writes in flight
/// are kept here, not in the future of whoever started them: a leader whose future is dropped
/// mid-write leaves the write to the next one, who waits for it before writing the same
/// blocks again (two writes of one block in flight together could land in either order).
pub(crate) struct DirectFile {
    file: Arc<DirectWriteFile>,
    /// The plain buffer the tail is copied into, reused.
    wbuf: Vec<u8>,
    /// The group write in flight, if its leader went away before it completed.
    group: Option<GroupWrite>,
    /// Every block below this offset has been written and synced (zeroes or records).
    written_end: u64,
    /// The zero write in flight, and the end of its range.
    zeroing: Option<(u64, DirectWrite)>,
    /// A buffer of zeroes, [`ZERO_CHUNK`] long past its aligned start (moved into the zero
    /// write in flight and back).
    zeroes: Option<Vec<u8>>,
    /// No zeroes past this offset (the file's size limit); 0 after a zero write failed.
    zero_limit: u64,
}

/// The buffer of a group write of `span` bytes starting with `bytes` (the rest zeroes): a
/// registered buffer of `ring` if one is free and large enough, else `wbuf` (reused). Returns
/// it with the offset the write starts at and the span.
fn fill(
    ring: Option<&SharedRing>,
    wbuf: Vec<u8>,
    span: usize,
    bytes: &[u8],
) -> (RingBuf, usize, usize) {
    if let Some(mut f) = ring.and_then(|r| r.take_fixed(span)) {
        f.with_mut(|out| pad_into(&mut out[..span], bytes));
        return (RingBuf::Fixed(f), 0, span);
    }
    let (mut v, at) = aligned(wbuf, span);
    pad_into(&mut v[at..at + span], bytes);
    (RingBuf::Plain(v), at, span)
}

/// Polls the write kept in `slot` until it completes, then empties the slot.
async fn settle<T>(
    slot: &mut Option<T>,
    op: fn(&mut T) -> &mut DirectWrite,
) -> Option<(T, io::Result<()>, RingBuf)> {
    let (res, buf) = poll_fn(|cx| match slot.as_mut() {
        Some(t) => op(t).as_mut().poll(cx).map(Some),
        None => Poll::Ready(None),
    })
    .await?;
    let t = slot.take()?;
    Some((t, res, buf))
}

impl DirectFile {
    /// The direct-IO writer of a file just created whose first `written` bytes (its header
    /// block) are on disk; zeroes up to `limit` at most.
    pub(crate) fn new(file: DirectWriteFile, written: u64, limit: u64) -> DirectFile {
        DirectFile {
            file: Arc::new(file),
            wbuf: Vec::new(),
            group: None,
            written_end: written,
            zeroing: None,
            zeroes: None,
            zero_limit: limit.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN,
        }
    }

    /// Starts writing the tail's unwritten blocks as one write (see [`crate::write::tail`]), on
    /// `ring` when there is one (from one of its registered buffers when the group fits in
    /// one): it covers every record appended before this copied the tail. A group that
    /// reaches into the zero write in flight waits for that first. The write is kept here
    /// until [`DirectFile::settle`] (a group write still in flight is settled first). Returns
    /// whether a write was started.
    pub(crate) async fn start(
        &mut self,
        tail: &Tail,
        ring: Option<&SharedRing>,
    ) -> io::Result<bool> {
        if let Some(Err(e)) = self.settle(tail, ring).await {
            return Err(e);
        }
        let wbuf = std::mem::take(&mut self.wbuf);
        let Some(((buf, at, span), done)) =
            tail.copy_with(|span, bytes| fill(ring, wbuf, span, bytes))
        else {
            return Ok(false);
        };
        let end = done.base + span as u64;
        if end > self.written_end {
            // The group reaches past the written space: into the zero write in flight, which
            // must land first, or into space never written.
            self.finish_zeroing().await;
        }
        let op = self
            .file
            .write(ring, Slot::Wait, buf, (at, span), done.base)
            .await;
        self.group = Some(GroupWrite { op, done, end });
        Ok(true)
    }

    /// For a group write made elsewhere (the writer thread's own ring): settles a group write
    /// left in flight here first (see [`DirectFile::settle`]), then copies the tail's unwritten
    /// blocks with `fill(span, bytes)`; returns its result, what the write covers and where it
    /// ends. Then [`DirectFile::make_room`], the write, and [`DirectFile::wrote`].
    pub(crate) fn copy_tail<B>(
        &mut self,
        tail: &Tail,
        fill: impl FnOnce(usize, &[u8]) -> B,
    ) -> Option<(B, Flush, u64)> {
        let mut span = 0;
        let (b, done) = tail.copy_with(|s, bytes| {
            span = s;
            fill(s, bytes)
        })?;
        Some((b, done, done.base + span as u64))
    }

    /// Before a group write ending at `end`: waits for the zero write in flight if the group
    /// reaches past the written space.
    pub(crate) async fn make_room(&mut self, end: u64) {
        if end > self.written_end {
            self.finish_zeroing().await;
        }
    }

    /// Whether every block below `end` was written before (zeroes or records), so that a
    /// write ending there changes no metadata of the file (see [`crate::GroupFlush::Once`]).
    pub(crate) fn written_through(&self, end: u64) -> bool {
        end <= self.written_end
    }

    /// After a group write covering `done` (ending at `end`) succeeded: the tail lets go of the
    /// blocks it wrote whole, and the next zero write starts if the space ahead runs low.
    pub(crate) async fn wrote(
        &mut self,
        tail: &Tail,
        done: Flush,
        end: u64,
        ring: Option<&SharedRing>,
    ) {
        tail.written(done);
        self.written_end = self.written_end.max(end);
        self.zero_ahead(end, ring).await;
    }

    /// Waits for the group write in flight, if any (started by [`DirectFile::start`], possibly
    /// by a leader that went away since): on success the tail lets go of the blocks it wrote
    /// whole, and the next zero write starts if the written space ahead runs low. Returns its
    /// result and whether it went from a registered buffer; `None` when none was in flight.
    pub(crate) async fn settle(
        &mut self,
        tail: &Tail,
        ring: Option<&SharedRing>,
    ) -> Option<io::Result<bool>> {
        let (g, res, buf) = settle(&mut self.group, |g| &mut g.op).await?;
        let registered = matches!(buf, RingBuf::Fixed(_));
        if let RingBuf::Plain(v) = buf {
            if v.capacity() <= KEEP_WBUF_BYTES {
                self.wbuf = v;
            }
        }
        if let Err(e) = res {
            return Some(Err(e));
        }
        self.wrote(tail, g.done, g.end, ring).await;
        Some(Ok(registered))
    }

    /// Starts a zero write past `data_end` (the end of the last group write) when the written
    /// space ahead of it is below [`ZERO_LOW_WATER`] and none is in flight (none either when
    /// every write slot of the ring is taken: the next group tries again).
    async fn zero_ahead(&mut self, data_end: u64, ring: Option<&SharedRing>) {
        if self.zeroing.is_some() || self.written_end >= data_end + ZERO_LOW_WATER {
            return;
        }
        let start = self.written_end.max(data_end);
        let len = ZERO_CHUNK.min(self.zero_limit.saturating_sub(start));
        if len == 0 {
            return;
        }
        let chunk = ZERO_CHUNK as usize;
        let zeroes = match self.zeroes.take() {
            Some(z) => z,
            None => aligned(Vec::new(), chunk).0,
        };
        let at = zeroes.as_ptr().align_offset(DIRECT_ALIGN as usize);
        if zeroes.len() < at + len as usize {
            return;
        }
        let op = self
            .file
            .write(
                ring,
                Slot::IfFree,
                RingBuf::Plain(zeroes),
                (at, len as usize),
                start,
            )
            .await;
        self.zeroing = Some((start + len, op));
    }

    /// Waits for the zero write in flight, if any. A failed one only stops the zeroes for this
    /// file (group writes into unwritten space are slower, not wrong).
    pub(crate) async fn finish_zeroing(&mut self) {
        let Some(((end, _), res, zeroes)) = settle(&mut self.zeroing, |z| &mut z.1).await else {
            return;
        };
        let zeroes = zeroes.plain();
        match res {
            Ok(()) => {
                self.written_end = self.written_end.max(end);
                self.zeroes = Some(zeroes);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Every write slot was taken: nothing was written; a later group tries again.
                self.zeroes = Some(zeroes);
            }
            Err(e) => {
                tracing::debug!("writing zeroes ahead of the active file failed ({e}); stopped");
                self.zero_limit = 0;
            }
        }
    }

    /// Waits for every write in flight (before the file is trimmed and sealed: a write landing
    /// after the trim would extend the file again).
    pub(crate) async fn settle_all(&mut self) {
        let _ = settle(&mut self.group, |g| &mut g.op).await;
        self.finish_zeroing().await;
    }
}
