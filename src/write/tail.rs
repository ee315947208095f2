//! The unwritten end of the active datafile under the direct-IO writer ([`crate::IoMode::Direct`]
//! with [`crate::SyncPolicy::Always`]).
//!
//! Appends copy their records here, under the append lock, instead of writing them. The tail
//! holds the file's bytes from `base` (a multiple of [`DIRECT_ALIGN`]) to the logical end: the
//! blocks not yet written whole. The writer thread copies them into an aligned buffer, writes
//! them with one `O_DIRECT | O_DSYNC` write at `base` (the last block padded with zeros), and
//! then drops the blocks it wrote whole; the partly filled last block stays and is written
//! again, with whatever follows it, by the next group. Its bytes already on disk are rewritten
//! unchanged, so a torn rewrite (each 512-byte sector old or new) keeps them.
//!
//! A reader finds here every byte at or past `base` of the file the tail belongs to; every byte
//! before `base` is on disk, since `base` moves only after the write that covers it returned.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::io::DIRECT_ALIGN;

/// `v`'s allocation (grown if needed) with `span` initialised bytes from the returned offset,
/// whose address is a multiple of [`DIRECT_ALIGN`].
pub(crate) fn aligned(mut v: Vec<u8>, span: usize) -> (Vec<u8>, usize) {
    v.clear();
    v.reserve(span + DIRECT_ALIGN as usize);
    let at = v.as_ptr().align_offset(DIRECT_ALIGN as usize);
    v.resize(at + span, 0);
    (v, at)
}

/// Copies `bytes` to the start of `out` and zeroes the rest.
pub(crate) fn pad_into(out: &mut [u8], bytes: &[u8]) {
    let n = bytes.len().min(out.len());
    let (head, pad) = out.split_at_mut(n);
    head.copy_from_slice(&bytes[..n]);
    pad.fill(0);
}

/// `file_id` of a tail that holds no file.
const NONE: u64 = u64::MAX;

#[derive(Default)]
struct TailBuf {
    file_id: Option<u32>,
    /// File offset of `bytes[0]`, a multiple of [`DIRECT_ALIGN`].
    base: u64,
    bytes: Vec<u8>,
}

/// The active file's unwritten blocks, shared by the append path, the writer and readers.
pub(crate) struct Tail {
    /// The file the tail holds, or [`NONE`]: lets reads of other files pass without the lock.
    file_id: AtomicU64,
    buf: RwLock<TailBuf>,
}

/// What a group's write covers: the copied bytes start at `base` and end (logically) at `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flush {
    pub file_id: u32,
    pub base: u64,
    pub end: u64,
}

impl Default for Tail {
    fn default() -> Self {
        Tail {
            file_id: AtomicU64::new(NONE),
            buf: RwLock::new(TailBuf::default()),
        }
    }
}

impl Tail {
    // A lock poisoned by a panic is recovered: every change below leaves the fields consistent.
    fn read_lock(&self) -> RwLockReadGuard<'_, TailBuf> {
        self.buf.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, TailBuf> {
        self.buf.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The tail now holds datafile `file_id`, whose first bytes (its header) are `head`.
    pub(crate) fn start(&self, file_id: u32, head: &[u8]) {
        self.start_at(file_id, 0, head);
    }

    /// The tail now holds file `file_id` (a read-path id: a value file has
    /// [`crate::layout::VALS_BIT`]), whose bytes before `base` (a multiple of [`DIRECT_ALIGN`])
    /// are on disk, and whose bytes from `base` on start with `head`.
    pub(crate) fn start_at(&self, file_id: u32, base: u64, head: &[u8]) {
        debug_assert_eq!(base % DIRECT_ALIGN, 0);
        let mut b = self.write_lock();
        b.file_id = Some(file_id);
        b.base = base;
        b.bytes.clear();
        b.bytes.extend_from_slice(head);
        self.file_id.store(u64::from(file_id), Ordering::Release);
    }

    /// The tail holds no file any more (its file was sealed: every byte is on disk).
    pub(crate) fn clear(&self) {
        self.file_id.store(NONE, Ordering::Release);
        let mut b = self.write_lock();
        *b = TailBuf::default();
    }

    /// Whether the tail holds datafile `file_id`.
    pub(crate) fn holds(&self, file_id: u32) -> bool {
        self.file_id.load(Ordering::Acquire) == u64::from(file_id)
    }

    /// Appends `parts` at the file's logical end.
    pub(crate) fn push(&self, parts: &[&[u8]]) {
        let mut b = self.write_lock();
        for p in parts {
            b.bytes.extend_from_slice(p);
        }
    }

    /// Appends `value` at the file's logical end, then zeros up to the next multiple of
    /// [`DIRECT_ALIGN`] (a value file: each value starts a block).
    pub(crate) fn push_block_aligned(&self, value: &[u8]) {
        let mut b = self.write_lock();
        b.bytes.extend_from_slice(value);
        let end = b.base + b.bytes.len() as u64;
        let pad = end.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN - end;
        let n = b.bytes.len() + pad as usize;
        b.bytes.resize(n, 0);
    }

    /// The bytes of `[offset, offset + len)` of `file_id` held here: `Some((from, bytes))` with
    /// the bytes from `from = max(offset, base)` on (fewer than asked if the range passes the
    /// logical end); those before `from` are on disk. `None` when the tail holds none of them.
    pub(crate) fn read(&self, file_id: u32, offset: u64, len: usize) -> Option<(u64, Vec<u8>)> {
        if !self.holds(file_id) {
            return None;
        }
        let b = self.read_lock();
        let end = offset + len as u64;
        if b.file_id != Some(file_id) || end <= b.base {
            return None;
        }
        let from = offset.max(b.base);
        let s = (from - b.base) as usize;
        let e = ((end - b.base) as usize).min(b.bytes.len());
        Some((from, b.bytes.get(s..e).unwrap_or_default().to_vec()))
    }

    /// Copies the unwritten blocks into `buf` (its allocation reused when large enough), from
    /// its first offset at an address aligned to [`DIRECT_ALIGN`], the last block padded with
    /// zeros. Returns the buffer, that offset, the span (whole blocks) and what the write
    /// covers; `None` when the tail holds no file.
    #[cfg(test)]
    pub(crate) fn copy_out(&self, buf: Vec<u8>) -> Option<(Vec<u8>, usize, usize, Flush)> {
        let ((buf, at, span), flush) = self.copy_with(|span, bytes| {
            let (mut buf, at) = aligned(buf, span);
            pad_into(&mut buf[at..at + span], bytes);
            (buf, at, span)
        })?;
        Some((buf, at, span, flush))
    }

    /// Calls `fill` with the span of the unwritten blocks (whole blocks) and their bytes (the
    /// rest of the span is the last block's padding); returns its result and what the write
    /// covers. `None` when the tail holds no file.
    pub(crate) fn copy_with<R>(&self, fill: impl FnOnce(usize, &[u8]) -> R) -> Option<(R, Flush)> {
        let b = self.read_lock();
        let file_id = b.file_id?;
        let n = b.bytes.len();
        let span = n.div_ceil(DIRECT_ALIGN as usize) * DIRECT_ALIGN as usize;
        let r = fill(span, &b.bytes);
        let flush = Flush {
            file_id,
            base: b.base,
            end: b.base + n as u64,
        };
        Some((r, flush))
    }

    /// `done` is written: drops the blocks it covered whole.
    pub(crate) fn written(&self, done: Flush) {
        let mut b = self.write_lock();
        if b.file_id != Some(done.file_id) {
            return;
        }
        let to = done.end / DIRECT_ALIGN * DIRECT_ALIGN;
        if to > b.base {
            let n = ((to - b.base) as usize).min(b.bytes.len());
            b.bytes.drain(..n);
            b.base += n as u64;
        }
    }

    /// Bytes held (the partly written last block included).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.read_lock().bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(out: &[u8], at: usize, span: usize) -> &[u8] {
        &out[at..at + span]
    }

    /// A buffer as the writer reuses one, dirty from an earlier group.
    fn plain() -> Vec<u8> {
        vec![0xEE; 20_000]
    }

    #[test]
    fn a_write_drops_whole_blocks_and_keeps_the_partial_one() {
        let t = Tail::default();
        t.start(7, &[1u8; 20]);
        t.push(&[&[2u8; 5000], &[3u8; 100]]);
        let (out, at, span, f) = t.copy_out(plain()).expect("held");
        assert_eq!((out.as_ptr() as usize + at) % 4096, 0);
        assert_eq!(span, 8192);
        assert_eq!(
            f,
            Flush {
                file_id: 7,
                base: 0,
                end: 5120
            }
        );
        let bytes = written(&out, at, span);
        assert_eq!(bytes[19], 1);
        assert_eq!(bytes[20], 2);
        assert_eq!(bytes[5119], 3);
        assert!(bytes[5120..].iter().all(|&b| b == 0));
        // Appended while the write was in flight: kept.
        t.push(&[&[4u8; 10]]);
        t.written(f);
        assert_eq!(t.held(), 5130 - 4096);
        let (from, got) = t.read(7, 4090, 20).expect("partly held");
        assert_eq!(from, 4096);
        assert_eq!(got.len(), 14);
        assert_eq!(got[0], 2);
        assert_eq!(*got.last().expect("byte"), 2);
        assert_eq!(t.read(7, 100, 20), None, "on disk");
        assert_eq!(t.read(8, 4096, 20), None, "another file");
        let (from, got) = t.read(7, 5125, 20).expect("past the end");
        assert_eq!((from, got.len()), (5125, 5));
        let (out, at, span, f) = t.copy_out(plain()).expect("held");
        assert_eq!((span, f.base, f.end), (4096, 4096, 5130));
        assert_eq!(written(&out, at, span)[0], 2);
        // A buffer too small for the span grows, and is not written short.
        let (small, at2, span2, f2) = t.copy_out(Vec::new()).expect("held");
        assert_eq!((span2, f2), (span, f));
        assert_eq!((small.as_ptr() as usize + at2) % 4096, 0);
        assert_eq!(written(&small, at2, span2), written(&out, at, span));
        t.clear();
        assert!(!t.holds(7));
        assert!(t.copy_out(plain()).is_none());
    }
}
