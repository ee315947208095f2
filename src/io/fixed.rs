//! Buffers registered with an io thread's ring (io_uring "fixed buffers") for the `O_DIRECT`
//! paths: the read threads' direct reads and the direct-IO writer's group and zero writes.
//!
//! A direct read or write through an unregistered buffer makes the kernel look up and pin the
//! buffer's pages for every operation; a registered buffer was pinned once, when it was
//! registered, and the operation names it by index (`IORING_OP_READ_FIXED` /
//! `IORING_OP_WRITE_FIXED`). Each io thread registers its own set (a ring holds one set at a
//! time). Registration can fail — a user without `CAP_IPC_LOCK` is bound by `RLIMIT_MEMLOCK`,
//! and the `pread` backend has no ring — and a thread then uses plain buffers, as it does for an
//! operation larger than its registered buffers or when all of them are in flight.

use std::ops::{Deref, DerefMut};

use tokio_uring::buf::fixed::{FixedBuf, FixedBufPool};

use super::DIRECT_ALIGN;

/// A buffer of the direct-IO paths: one registered with the ring, or a plain allocation.
pub(crate) enum DirectBuf {
    /// A plain allocation.
    Plain(Vec<u8>),
    /// A registered buffer, checked out of a [`Registered`] set (back in it when dropped).
    Fixed(FixedBuf),
}

impl DirectBuf {
    /// Whether this is a registered buffer.
    pub(crate) fn is_fixed(&self) -> bool {
        matches!(self, DirectBuf::Fixed(_))
    }

    /// A plain buffer with `span` bytes (zeroed) from its aligned offset on; reuses `v`'s
    /// allocation when it is large enough.
    pub(crate) fn plain(mut v: Vec<u8>, span: usize) -> DirectBuf {
        v.clear();
        v.reserve(span + DIRECT_ALIGN as usize);
        let at = v.as_ptr().align_offset(DIRECT_ALIGN as usize);
        v.resize(at + span, 0);
        DirectBuf::Plain(v)
    }

    /// The offset of its first byte at an address aligned to [`DIRECT_ALIGN`].
    pub(crate) fn aligned_at(&self) -> usize {
        let p = match self {
            DirectBuf::Plain(v) => v.as_ptr(),
            DirectBuf::Fixed(f) => f.as_ptr(),
        };
        p.align_offset(DIRECT_ALIGN as usize)
    }
}

impl Deref for DirectBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            DirectBuf::Plain(v) => v,
            DirectBuf::Fixed(f) => f,
        }
    }
}

impl DerefMut for DirectBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            DirectBuf::Plain(v) => v,
            DirectBuf::Fixed(f) => f,
        }
    }
}

/// One io thread's registered buffers, in up to two sizes. Each is zeroed when it is made, so
/// all its bytes are initialised and [`DirectBuf`]'s slices cover the whole buffer.
pub(crate) struct Registered {
    pool: FixedBufPool<Vec<u8>>,
    /// Whole capacity of each size class (aligned span + alignment slack), ascending.
    caps: Vec<usize>,
}

impl Registered {
    /// Allocates `count` buffers for each `(count, span)` class — `span` bytes at an aligned
    /// address — and registers them with the current thread's ring. `None`, logged, where the
    /// ring refuses them (callers then use plain buffers). Must run inside a `tokio_uring`
    /// runtime.
    pub(crate) fn register(classes: &[(usize, usize)]) -> Option<Registered> {
        let mut bufs = Vec::new();
        let mut caps = Vec::new();
        for &(count, span) in classes {
            let cap = span + DIRECT_ALIGN as usize;
            for _ in 0..count {
                let v = vec![0u8; cap];
                // `try_next` finds buffers by their exact capacity.
                caps.push(v.capacity());
                bufs.push(v);
            }
        }
        caps.sort_unstable();
        caps.dedup();
        let pool = FixedBufPool::new(bufs);
        match pool.register() {
            Ok(()) => Some(Registered { pool, caps }),
            Err(e) => {
                tracing::debug!("registering io buffers with the ring failed ({e}); plain buffers");
                None
            }
        }
    }

    /// A free registered buffer of the smallest class whose aligned stretch holds `span`
    /// bytes. `None` when that class has none free (a larger class is never lent out: a class
    /// may have a purpose, such as staying all zeroes) or `span` is larger than every class.
    pub(crate) fn take(&self, span: usize) -> Option<DirectBuf> {
        let cap = *self
            .caps
            .iter()
            .find(|&&cap| cap >= span + DIRECT_ALIGN as usize)?;
        self.pool.try_next(cap).map(DirectBuf::Fixed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::IoFile;
    use crate::options::IoBackendKind;

    /// Reads `len` bytes at `off` of `f` directly, checks them against `data`, and returns
    /// whether a registered buffer was used.
    async fn read(
        f: &IoFile,
        data: &[u8],
        len: usize,
        off: usize,
        regs: Option<&Registered>,
    ) -> bool {
        let (got, fixed) = f.read_direct(len, off as u64, regs).await.expect("read");
        assert_eq!(got, data[off..off + len], "{len} bytes at {off}");
        fixed
    }

    /// Registered and plain buffers through `IoFile`'s direct paths: a read within a class uses
    /// a registered buffer; one larger than every class, one arriving when all are checked out,
    /// or one without a set uses a plain buffer; a second set on the same ring is refused; a
    /// write from a registered buffer lands where it should. Every read returns the file's bytes.
    #[test]
    fn reads_and_writes_use_registered_buffers_when_they_fit_and_plain_ones_otherwise() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        tokio_uring::start(async {
            let Ok(f) = IoFile::open_direct(IoBackendKind::IoUring, &path, None) else {
                panic!("this test needs O_DIRECT under {}", dir.path().display());
            };
            let regs = Registered::register(&[(2, 16 << 10)]).expect("registered");
            assert!(
                Registered::register(&[(1, 4096)]).is_none(),
                "a ring holds one set"
            );
            assert!(
                read(&f, &data, 5000, 3000, Some(&regs)).await,
                "within the class"
            );
            assert!(
                !read(&f, &data, 40_000, 100, Some(&regs)).await,
                "larger than the class"
            );
            assert!(!read(&f, &data, 100, 10, None).await, "no set");
            let held = (regs.take(4096), regs.take(4096));
            assert!(held.0.is_some() && held.1.is_some());
            assert!(regs.take(4096).is_none());
            assert!(
                !read(&f, &data, 100, 10, Some(&regs)).await,
                "all checked out"
            );
            drop(held);
            assert!(
                read(&f, &data, 100, 10, Some(&regs)).await,
                "checked in again"
            );

            // A write from a registered buffer, then read back.
            let w =
                IoFile::open_direct_write(IoBackendKind::IoUring, &path, None, true).expect("open");
            let mut buf = regs.take(8192).expect("free");
            let at = buf.aligned_at();
            buf[at..at + 8192].fill(0x5A);
            let (res, buf) = w.write_direct(buf, at, 8192, 8192).await;
            res.expect("write");
            assert!(buf.is_fixed());
            drop(buf);
        });
        let back = std::fs::read(&path).expect("read back");
        assert_eq!(back[..8192], data[..8192]);
        assert!(back[8192..16384].iter().all(|&b| b == 0x5A));
        assert_eq!(back[16384..], data[16384..]);
    }
}
