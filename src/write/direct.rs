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
use crate::io::{IoFile, DIRECT_ALIGN};

/// Bytes of zeroes per write ahead of the tail.
pub(crate) const ZERO_CHUNK: u64 = 1 << 20;

/// A new zero write starts when less than this much written space is left past the tail.
const ZERO_LOW_WATER: u64 = 1 << 20;

/// The group write's buffer is dropped rather than kept when a group grew it past this.
const KEEP_WBUF_BYTES: usize = 4 << 20;

type ZeroTask = JoinHandle<(io::Result<()>, Vec<u8>)>;

/// The active file as the direct-IO writer writes it.
pub(crate) struct DirectFile {
    file: Rc<IoFile>,
    /// The aligned buffer the tail is copied into, reused.
    wbuf: Vec<u8>,
    /// Every block below this offset has been written and synced (zeroes or records).
    written_end: u64,
    /// The zero write in flight, and the end of its range.
    zeroing: Option<(u64, ZeroTask)>,
    /// An aligned buffer of zeroes, [`ZERO_CHUNK`] long past its aligned start (moved into the
    /// zero write in flight and back).
    zeroes: Option<Vec<u8>>,
    /// No zeroes past this offset (the file's size limit); 0 after a zero write failed.
    zero_limit: u64,
}

impl DirectFile {
    /// The direct-IO writer of a file just created; zeroes up to `limit` at most.
    pub(crate) fn new(file: IoFile, limit: u64) -> DirectFile {
        DirectFile {
            file: Rc::new(file),
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
    /// the written space ahead runs low.
    pub(crate) async fn flush(&mut self, tail: &Tail) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.wbuf);
        let Some((at, span, done)) = tail.copy_out(&mut buf) else {
            self.wbuf = buf;
            return Ok(());
        };
        let end = done.base + span as u64;
        if end > self.written_end {
            // The group reaches past the written space: into the zero write in flight, which
            // must land first, or into space never written.
            self.finish_zeroing().await;
        }
        let (res, mut buf) = self.file.write_direct(buf, at, span, done.base).await;
        if buf.capacity() > KEEP_WBUF_BYTES {
            buf = Vec::new();
        }
        self.wbuf = buf;
        res?;
        tail.written(done);
        self.written_end = self.written_end.max(end);
        self.zero_ahead(end);
        Ok(())
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
        let align = DIRECT_ALIGN as usize;
        let mut zeroes = self.zeroes.take().unwrap_or_default();
        if zeroes.len() < ZERO_CHUNK as usize + align {
            zeroes = vec![0u8; ZERO_CHUNK as usize + align];
        }
        let at = zeroes.as_ptr().align_offset(align);
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
