//! Buffers registered with the shared ring (io_uring "fixed buffers") for its `O_DIRECT` reads.
//!
//! A direct read into an ordinary buffer makes the kernel look up and pin the buffer's pages
//! for each read; a registered buffer was pinned once, when it was registered, and the read
//! names it by index (`IORING_OP_READ_FIXED`). Registering pins memory: where the kernel
//! refuses (`RLIMIT_MEMLOCK` without `CAP_IPC_LOCK`) the ring reads into ordinary buffers.

use std::sync::{Arc, Mutex};

use io_uring::IoUring;

use super::lock;

/// Buffers registered with one ring, each `size` bytes from an address aligned to `align`.
pub(crate) struct FixedPool {
    /// Each buffer's allocation (`size + align` bytes; the buffer starts at `starts[i]`).
    /// Never resized or freed while the pool lives, so the addresses registered stay valid.
    bufs: Vec<Mutex<Box<[u8]>>>,
    starts: Vec<usize>,
    /// The registered addresses, for the read operations.
    ptrs: Vec<usize>,
    size: usize,
    free: Mutex<Vec<u16>>,
}

/// One registered buffer, taken from its pool until dropped.
pub(crate) struct FixedBuf {
    pool: Arc<FixedPool>,
    index: u16,
}

impl FixedPool {
    /// `count` buffers of `size` bytes aligned to `align`, registered with `ring`; `None` if
    /// the kernel refuses to register them.
    pub(super) fn register(
        ring: &IoUring,
        count: usize,
        size: usize,
        align: usize,
    ) -> Option<Arc<FixedPool>> {
        let count = count.min(usize::from(u16::MAX));
        let mut bufs = Vec::with_capacity(count);
        let (mut starts, mut ptrs, mut iovecs) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..count {
            let mut b = vec![0u8; size + align].into_boxed_slice();
            let at = b.as_ptr().align_offset(align);
            let ptr = b[at..].as_mut_ptr();
            iovecs.push(libc_iovec(ptr, size));
            starts.push(at);
            ptrs.push(ptr as usize);
            bufs.push(Mutex::new(b));
        }
        // SAFETY: each iovec names `size` bytes inside one of `bufs`' heap allocations, which
        // the pool owns and never frees, moves or resizes while it lives; the ring that keeps
        // them registered is dropped before the pool (the pool outlives its ring: the ring's
        // owner holds an `Arc` of it, declared after the ring).
        let registered = unsafe { ring.submitter().register_buffers(&iovecs) };
        if let Err(e) = registered {
            tracing::debug!("cannot register the shared ring's buffers ({e}); plain buffers");
            return None;
        }
        Some(Arc::new(FixedPool {
            bufs,
            starts,
            ptrs,
            size,
            free: Mutex::new((0..count as u16).rev().collect()),
        }))
    }

    /// Each buffer's size.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// A free buffer, if any.
    pub(super) fn take(self: &Arc<Self>) -> Option<FixedBuf> {
        let index = lock(&self.free).pop()?;
        Some(FixedBuf {
            pool: self.clone(),
            index,
        })
    }
}

impl FixedBuf {
    /// The size of the buffer.
    pub(super) fn pool_size(&self) -> usize {
        self.pool.size
    }

    /// The registered index and address of this buffer.
    pub(super) fn target(&self) -> (u16, *mut u8) {
        (
            self.index,
            self.pool.ptrs[usize::from(self.index)] as *mut u8,
        )
    }

    /// Calls `f` with the buffer's bytes (no read into it may be in flight: the ring hands a
    /// buffer back only after its read completed).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        let i = usize::from(self.index);
        let b = lock(&self.pool.bufs[i]);
        let at = self.pool.starts[i];
        f(&b[at..at + self.pool.size])
    }
}

impl FixedBuf {
    /// Calls `f` with the buffer's bytes to fill (no operation on it may be in flight, as for
    /// [`FixedBuf::with`]).
    pub(crate) fn with_mut<R>(&mut self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let i = usize::from(self.index);
        let mut b = lock(&self.pool.bufs[i]);
        let at = self.pool.starts[i];
        f(&mut b[at..at + self.pool.size])
    }
}

impl Drop for FixedBuf {
    fn drop(&mut self) {
        lock(&self.pool.free).push(self.index);
    }
}

fn libc_iovec(ptr: *mut u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: ptr.cast(),
        iov_len: len,
    }
}
