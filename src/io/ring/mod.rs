//! A ring shared by every caller thread: callers submit their reads to it themselves, and one
//! reaper thread wakes them as the reads complete.
//!
//! Through a read thread a cold `get` waits on three wake-ups (the caller's request wakes the
//! read thread, the completion wakes it again, its reply wakes the caller), each 15–25 µs on
//! this class of machine against a 4 KiB device read of ~55 µs (DESIGN §3). Here the caller
//! pushes the read into the submission queue and enters the kernel (`io_uring_enter`, which
//! does not wait for the device: io_uring issues the read without blocking, or hands it to its
//! own workers), so only two wake-ups remain: the completion wakes the reaper, the reaper wakes
//! the caller's task.
//!
//! Buffers and descriptors of reads in flight belong to the ring until the kernel completes
//! them: a caller's future that is dropped early leaves its slot to the reaper, which frees it
//! when the completion arrives, and the reaper thread (which owns the ring too) ends only when
//! nothing is in flight any more.
//!
//! The direct-IO writer's `O_DIRECT | O_DSYNC` writes go through the same ring (see
//! `crate::write::group`), submitted by whoever leads a group commit, on slots of their own
//! ([`WRITE_SLOTS`]) so that reads in flight never hold a durable write back.

// The only `unsafe` of the crate: handing buffers to the kernel through a ring shared by threads.
#![allow(unsafe_code)]

mod fixed;
mod reap;

pub(crate) use fixed::{FixedBuf, FixedPool};

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, squeue, types, IoUring};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a submission failed.
enum Submit {
    /// The submission queue was full: nothing was queued.
    NotQueued,
    /// Queued, but entering the kernel failed: a later entry submits it.
    Queued(io::Error),
}

/// `IORING_ENTER_GETEVENTS`: wait for completions.
const ENTER_GETEVENTS: u32 = 1;

/// Alignment of the registered buffers (that of `O_DIRECT` reads).
const FIXED_ALIGN: usize = 4096;

/// `user_data` of the no-op that wakes the reaper to stop.
const WAKE: u64 = u64::MAX;

/// Slots kept for writes, beyond the reads': a group write and a zero write ahead of it, for
/// a datafile and for its value file.
pub(crate) const WRITE_SLOTS: usize = 4;

/// A read's buffer: an ordinary allocation, or one registered with the ring.
pub(crate) enum RingBuf {
    Plain(Vec<u8>),
    Fixed(FixedBuf),
}

impl RingBuf {
    /// The plain allocation (empty for a registered buffer).
    pub(crate) fn plain(self) -> Vec<u8> {
        match self {
            RingBuf::Plain(v) => v,
            RingBuf::Fixed(_) => Vec::new(),
        }
    }
}

/// A read's buffer and descriptor, kept alive until its completion.
struct Keep {
    buf: RingBuf,
    _file: Arc<File>,
    _permit: OwnedSemaphorePermit,
}

enum Slot {
    Free,
    /// Submitted; `waker` is the caller's task once it has polled.
    Pending {
        waker: Option<Waker>,
        keep: Keep,
    },
    /// Completed with `res` (bytes read, or `-errno`); the caller has not taken it yet.
    Done {
        res: i32,
        keep: Keep,
    },
    /// The caller's future was dropped: the reaper frees the slot at completion.
    Abandoned,
}

/// The slots of reads in flight, indexed by `user_data`.
struct Slots {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// `Keep`s of abandoned reads, by slot, until their completion.
    orphans: Vec<Option<Keep>>,
}

struct Inner {
    ring: IoUring,
    /// Buffers registered with `ring` (declared after it: dropped after it).
    fixed: Option<Arc<FixedPool>>,
    /// Serialises pushing to the submission queue (and entering the kernel with it).
    sq: Mutex<()>,
    slots: Mutex<Slots>,
    /// One permit per read slot: a read waits for one before it takes a slot.
    permits: Arc<Semaphore>,
    /// One permit per write slot ([`WRITE_SLOTS`]).
    write_permits: Arc<Semaphore>,
    /// Reads the kernel has been given and not completed.
    in_kernel: AtomicUsize,
    stop: AtomicBool,
    /// Who reaps: the reaper thread, or a task on a caller's tokio runtime (see [`reap`]).
    reaper: AtomicU8,
    /// The eventfd the ring signals on every completion, for a reaper task; `None` unless
    /// asked for (or where it could not be set up).
    efd: Option<OwnedFd>,
    /// Set once starting a reaper task failed: the thread reaps from then on.
    task_failed: AtomicBool,
    /// The reaper thread, unparked when a reaper task ends.
    thread: OnceLock<std::thread::Thread>,
    /// Completions taken off the queue so far (the thread watches it while a task reaps).
    reaped: AtomicU64,
    /// Reads whose completion a reaper task took.
    task_reaped: AtomicU64,
}

/// The shared ring and its reaper thread; the reaper stops when this is dropped (once the reads
/// in flight have completed).
pub(crate) struct SharedRing {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves consistent state (every update is one
    // assignment), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SharedRing {
    /// A ring with room for `depth` reads in flight, and its reaper thread (named `name`).
    /// With `on_tokio`, a caller on a multi-thread tokio runtime starts a reaper task on it
    /// (see [`reap`]), and the thread only stands by. `fixed: Some((n, size))` registers `n`
    /// buffers of `size` bytes, aligned for `O_DIRECT` (none if the kernel refuses).
    pub(crate) fn new(
        depth: usize,
        name: &str,
        on_tokio: bool,
        fixed: Option<(usize, usize)>,
    ) -> io::Result<SharedRing> {
        let depth = depth.clamp(1, 4096);
        let slots = depth + WRITE_SLOTS;
        let entries = (slots + 1).next_power_of_two() as u32;
        // Twice as many completion entries as reads can be in flight: the queue cannot overflow.
        let ring = IoUring::builder()
            .setup_cqsize(entries * 2)
            .build(entries)?;
        let inner = Arc::new(Inner {
            sq: Mutex::new(()),
            slots: Mutex::new(Slots {
                slots: (0..slots).map(|_| Slot::Free).collect(),
                free: (0..slots).rev().collect(),
                orphans: (0..slots).map(|_| None).collect(),
            }),
            permits: Arc::new(Semaphore::new(depth)),
            write_permits: Arc::new(Semaphore::new(WRITE_SLOTS)),
            in_kernel: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            reaper: AtomicU8::new(reap::THREAD),
            efd: if on_tokio { reap::eventfd(&ring) } else { None },
            fixed: fixed.and_then(|(n, size)| FixedPool::register(&ring, n, size, FIXED_ALIGN)),
            ring,
            task_failed: AtomicBool::new(false),
            thread: OnceLock::new(),
            reaped: AtomicU64::new(0),
            task_reaped: AtomicU64::new(0),
        });
        let reaper = inner.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || reaper.reap())?;
        let _ = inner.thread.set(thread.thread().clone());
        Ok(SharedRing { inner })
    }

    /// Reads whose completion a reaper task on a caller's runtime took (the reaper thread took
    /// the others).
    pub(crate) fn task_reaped(&self) -> u64 {
        self.inner.task_reaped.load(Ordering::Relaxed)
    }

    /// The registered buffers' size, if the ring has registered buffers.
    pub(crate) fn fixed_size(&self) -> Option<usize> {
        self.inner.fixed.as_ref().map(|f| f.size())
    }

    /// Reads `len` bytes (at most [`SharedRing::fixed_size`]) at `pos` of `file` into a
    /// registered buffer; `None` (nothing submitted) when none is free. Returns the bytes read
    /// and the buffer, whose first bytes hold them.
    pub(crate) async fn read_fixed(
        &self,
        file: Arc<File>,
        len: usize,
        pos: u64,
    ) -> Option<(io::Result<usize>, FixedBuf)> {
        let buf = self.inner.fixed.as_ref()?.take()?;
        if len > buf.pool_size() {
            return None;
        }
        let (res, buf) = self.read(file, RingBuf::Fixed(buf), 0, len, pos).await;
        match buf {
            RingBuf::Fixed(b) => Some((res, b)),
            // Only when the submission failed before anything was queued.
            RingBuf::Plain(_) => None,
        }
    }

    /// Reads into `buf[at..at + len]` (`buf` fully initialised) at `pos` of `file`; returns the
    /// bytes read (fewer at the end of the file) and the buffer. For `O_DIRECT` descriptors the
    /// caller aligns `at`'s address, `len` and `pos`.
    pub(crate) async fn read_at(
        &self,
        file: Arc<File>,
        buf: Vec<u8>,
        at: usize,
        len: usize,
        pos: u64,
    ) -> (io::Result<usize>, Vec<u8>) {
        if at.checked_add(len).is_none_or(|end| end > buf.len()) {
            return (Err(io::ErrorKind::InvalidInput.into()), buf);
        }
        let (res, buf) = self.read(file, RingBuf::Plain(buf), at, len, pos).await;
        (res, buf.plain())
    }

    /// Submits a read into `buf` (at `at`, `len` bytes, checked by the caller to lie within it)
    /// and waits for it.
    async fn read(
        &self,
        file: Arc<File>,
        mut buf: RingBuf,
        at: usize,
        len: usize,
        pos: u64,
    ) -> (io::Result<usize>, RingBuf) {
        if len > u32::MAX as usize {
            return (Err(io::ErrorKind::InvalidInput.into()), buf);
        }
        if self.inner.efd.is_some() {
            reap::start_task(&self.inner);
        }
        let Ok(permit) = self.inner.permits.clone().acquire_owned().await else {
            return (Err(io::ErrorKind::BrokenPipe.into()), buf);
        };
        // The read lands in `buf`'s heap allocation (within its bounds: `at + len` is checked
        // by the caller; a registered buffer is `fixed_size` long), which moves into the slot's
        // `Keep` below and stays there (or in the orphan list, if the caller's future is
        // dropped) until the reaper has seen the read's completion.
        let fd = types::Fd(file.as_raw_fd());
        let sqe = match &mut buf {
            RingBuf::Plain(v) => opcode::Read::new(fd, v[at..].as_mut_ptr(), len as u32)
                .offset(pos)
                .build(),
            RingBuf::Fixed(f) => {
                let (index, ptr) = f.target();
                opcode::ReadFixed::new(fd, ptr, len as u32, index)
                    .offset(pos)
                    .build()
            }
        };
        let keep = Keep {
            buf,
            _file: file,
            _permit: permit,
        };
        match self.submit_op(sqe, keep) {
            Ok(op) => op.await,
            Err((e, buf)) => (Err(e), buf),
        }
    }

    /// Takes a slot for `sqe` (whose buffer and descriptor `keep` holds; a permit for the slot
    /// is in it) and submits it. The returned completion owns the slot: dropped early, it
    /// leaves the slot (and `keep`) to the reaper until the kernel is done with them.
    fn submit_op(
        &self,
        sqe: squeue::Entry,
        keep: Keep,
    ) -> Result<Completion, (io::Error, RingBuf)> {
        let idx = {
            let mut s = lock(&self.inner.slots);
            let Some(idx) = s.free.pop() else {
                // Unreachable: a permit is held for every slot taken.
                return Err((io::ErrorKind::WouldBlock.into(), keep.buf));
            };
            s.slots[idx] = Slot::Pending { waker: None, keep };
            idx
        };
        let op = Completion {
            inner: self.inner.clone(),
            idx,
            done: false,
        };
        match self.inner.submit(&sqe.user_data(idx as u64)) {
            Ok(()) => Ok(op),
            Err(Submit::NotQueued) => {
                let mut op = op;
                op.done = true;
                let mut s = lock(&self.inner.slots);
                let buf = match std::mem::replace(&mut s.slots[idx], Slot::Free) {
                    Slot::Pending { keep, .. } => keep.buf,
                    _ => RingBuf::Plain(Vec::new()),
                };
                s.free.push(idx);
                Err((io::ErrorKind::WouldBlock.into(), buf))
            }
            // The kernel may still use the buffer: it stays with the slot (dropping `op`
            // leaves it to the reaper).
            Err(Submit::Queued(e)) => Err((e, RingBuf::Plain(Vec::new()))),
        }
    }

    /// A registered buffer for a write of `len` bytes, if one is free and large enough.
    pub(crate) fn take_fixed(&self, len: usize) -> Option<FixedBuf> {
        let pool = self.inner.fixed.as_ref()?;
        if len > pool.size() {
            return None;
        }
        pool.take()
    }

    /// Starts writing `len` bytes of `buf` at `pos` of `file`: of a plain buffer from `at`
    /// (for an `O_DIRECT` descriptor the caller aligns `at`'s address, `len` and `pos`), of a
    /// registered one from its start (`at` must be 0), as a fixed-buffer write. Takes one of
    /// the [`WRITE_SLOTS`], waiting for a free one. The write is submitted when this returns;
    /// the [`RingWrite`] yields the bytes written (fewer on a short write) and the buffer.
    /// Dropping it does not cancel the write: its buffer stays with the ring until the kernel
    /// completes it.
    pub(crate) async fn start_write(
        &self,
        file: Arc<File>,
        buf: RingBuf,
        at: usize,
        len: usize,
        pos: u64,
    ) -> Result<RingWrite, (io::Error, RingBuf)> {
        if self.inner.efd.is_some() {
            reap::start_task(&self.inner);
        }
        let Ok(permit) = self.inner.write_permits.clone().acquire_owned().await else {
            return Err((io::ErrorKind::BrokenPipe.into(), buf));
        };
        self.write_with(permit, file, buf, at, len, pos)
    }

    /// [`SharedRing::start_write`] if a write slot is free now; `WouldBlock` otherwise.
    pub(crate) fn try_start_write(
        &self,
        file: Arc<File>,
        buf: RingBuf,
        at: usize,
        len: usize,
        pos: u64,
    ) -> Result<RingWrite, (io::Error, RingBuf)> {
        let Ok(permit) = self.inner.write_permits.clone().try_acquire_owned() else {
            return Err((io::ErrorKind::WouldBlock.into(), buf));
        };
        self.write_with(permit, file, buf, at, len, pos)
    }

    fn write_with(
        &self,
        permit: OwnedSemaphorePermit,
        file: Arc<File>,
        buf: RingBuf,
        at: usize,
        len: usize,
        pos: u64,
    ) -> Result<RingWrite, (io::Error, RingBuf)> {
        let fits = match &buf {
            RingBuf::Plain(v) => at.checked_add(len).is_some_and(|end| end <= v.len()),
            RingBuf::Fixed(f) => at == 0 && len <= f.pool_size(),
        };
        if len > u32::MAX as usize || !fits {
            return Err((io::ErrorKind::InvalidInput.into(), buf));
        }
        // The write reads `len` bytes (in bounds, checked above) from `buf`'s heap allocation
        // (a registered buffer: from its registered address), which moves into the slot's
        // `Keep` and stays there until the reaper has seen the completion.
        let fd = types::Fd(file.as_raw_fd());
        let sqe = match &buf {
            RingBuf::Plain(v) => opcode::Write::new(fd, v[at..].as_ptr(), len as u32)
                .offset(pos)
                .build(),
            RingBuf::Fixed(f) => {
                let (index, ptr) = f.target();
                opcode::WriteFixed::new(fd, ptr.cast_const(), len as u32, index)
                    .offset(pos)
                    .build()
            }
        };
        let keep = Keep {
            buf,
            _file: file,
            _permit: permit,
        };
        self.submit_op(sqe, keep).map(RingWrite)
    }
}

/// A write submitted to the shared ring (see [`SharedRing::start_write`]).
pub(crate) struct RingWrite(Completion);

impl Future for RingWrite {
    type Output = (io::Result<usize>, RingBuf);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl Drop for SharedRing {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        // Wakes the reaper, which sees `stop` and ends once nothing is in flight.
        let nop = opcode::Nop::new().build().user_data(WAKE);
        if self.inner.submit(&nop).is_err() {
            tracing::warn!("cannot wake the shared ring's reaper to stop");
        }
    }
}

impl Inner {
    /// Pushes `sqe` and enters the kernel with it.
    fn submit(&self, sqe: &squeue::Entry) -> Result<(), Submit> {
        let counted = sqe.get_user_data() != WAKE;
        if counted {
            // Before the push: the reaper may see the completion before this thread runs on.
            self.in_kernel.fetch_add(1, Ordering::AcqRel);
        }
        {
            let _sq = lock(&self.sq);
            // SAFETY: `sq` serialises every use of the submission queue; the reaper never
            // touches it. What `sqe` points at is kept alive by its slot (a no-op points at
            // nothing).
            let mut q = unsafe { self.ring.submission_shared() };
            // SAFETY: as above; the entry's buffer and descriptor outlive the operation.
            if unsafe { q.push(sqe) }.is_err() {
                if counted {
                    self.in_kernel.fetch_sub(1, Ordering::AcqRel);
                }
                return Err(Submit::NotQueued);
            }
        }
        // Entering the kernel outside the lock: each entry submits every entry queued by then
        // (two callers entering side by side each submit what they find; none is lost).
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::ResourceBusy
                    ) =>
                {
                    std::thread::yield_now()
                }
                Err(e) => {
                    // The entry stays queued: the next submission (or the reaper's next wait)
                    // hands it to the kernel, and its completion frees the slot as usual.
                    tracing::warn!("io_uring_enter failed on the shared ring: {e}");
                    return Err(Submit::Queued(e));
                }
            }
        }
    }
}

/// Waits for the operation in slot `idx`.
struct Completion {
    inner: Arc<Inner>,
    idx: usize,
    done: bool,
}

impl Future for Completion {
    type Output = (io::Result<usize>, RingBuf);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let idx = this.idx;
        let mut s = lock(&this.inner.slots);
        match &mut s.slots[idx] {
            Slot::Pending { waker, .. } => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Slot::Done { .. } => {
                let Slot::Done { res, keep } = std::mem::replace(&mut s.slots[idx], Slot::Free)
                else {
                    return Poll::Pending;
                };
                s.free.push(idx);
                drop(s);
                this.done = true;
                let res = if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(res as usize)
                };
                Poll::Ready((res, keep.buf))
            }
            Slot::Free | Slot::Abandoned => {
                this.done = true;
                Poll::Ready((
                    Err(io::ErrorKind::BrokenPipe.into()),
                    RingBuf::Plain(Vec::new()),
                ))
            }
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut s = lock(&self.inner.slots);
        let idx = self.idx;
        match std::mem::replace(&mut s.slots[idx], Slot::Abandoned) {
            Slot::Pending { keep, .. } => s.orphans[idx] = Some(keep),
            Slot::Done { .. } => {
                s.slots[idx] = Slot::Free;
                s.free.push(idx);
            }
            other => s.slots[idx] = other,
        }
    }
}

#[cfg(test)]
mod tests;
