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

/// A read's buffer: an ordinary allocation, or one registered with the ring.
pub(crate) enum RingBuf {
    Plain(Vec<u8>),
    Fixed(FixedBuf),
}

impl RingBuf {
    fn plain(self) -> Vec<u8> {
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
    /// One permit per slot: a read waits for one before it takes a slot.
    permits: Arc<Semaphore>,
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
        let entries = (depth + 1).next_power_of_two() as u32;
        // Twice as many completion entries as reads can be in flight: the queue cannot overflow.
        let ring = IoUring::builder()
            .setup_cqsize(entries * 2)
            .build(entries)?;
        let inner = Arc::new(Inner {
            sq: Mutex::new(()),
            slots: Mutex::new(Slots {
                slots: (0..depth).map(|_| Slot::Free).collect(),
                free: (0..depth).rev().collect(),
                orphans: (0..depth).map(|_| None).collect(),
            }),
            permits: Arc::new(Semaphore::new(depth)),
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
        let idx = {
            let mut s = lock(&self.inner.slots);
            let Some(idx) = s.free.pop() else {
                // Unreachable: a permit is held for every slot taken.
                return (Err(io::ErrorKind::WouldBlock.into()), keep.buf);
            };
            s.slots[idx] = Slot::Pending { waker: None, keep };
            idx
        };
        match self.inner.submit(&sqe.user_data(idx as u64)) {
            Ok(()) => {}
            Err(Submit::NotQueued) => {
                let mut s = lock(&self.inner.slots);
                let buf = match std::mem::replace(&mut s.slots[idx], Slot::Free) {
                    Slot::Pending { keep, .. } => keep.buf,
                    _ => RingBuf::Plain(Vec::new()),
                };
                s.free.push(idx);
                return (Err(io::ErrorKind::WouldBlock.into()), buf);
            }
            Err(Submit::Queued(e)) => {
                // The kernel may still read into the buffer: it stays with the slot.
                drop(Completion {
                    inner: &self.inner,
                    idx,
                    done: false,
                });
                return (Err(e), RingBuf::Plain(Vec::new()));
            }
        }
        Completion {
            inner: &self.inner,
            idx,
            done: false,
        }
        .await
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

/// Waits for the read in slot `idx`.
struct Completion<'a> {
    inner: &'a Inner,
    idx: usize,
    done: bool,
}

impl Future for Completion<'_> {
    type Output = (io::Result<usize>, RingBuf);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let idx = self.idx;
        let mut s = lock(&self.inner.slots);
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
                self.done = true;
                let res = if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(res as usize)
                };
                Poll::Ready((res, keep.buf))
            }
            Slot::Free | Slot::Abandoned => {
                self.done = true;
                Poll::Ready((
                    Err(io::ErrorKind::BrokenPipe.into()),
                    RingBuf::Plain(Vec::new()),
                ))
            }
        }
    }
}

impl Drop for Completion<'_> {
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
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, Arc<File>) {
        let dir = tempfile::tempdir().expect("ok");
        let path = dir.path().join("f");
        std::fs::File::create(&path)
            .expect("ok")
            .write_all(bytes)
            .expect("ok");
        (dir, Arc::new(File::open(&path).expect("ok")))
    }

    #[test]
    fn reads_land_in_place_short_at_the_end_and_errors_come_back() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let (_d, f) = file_with(&data);
        let ring = SharedRing::new(4, "test-reaper", false, None).expect("ok");
        futures::executor::block_on(async {
            let (n, buf) = ring.read_at(f.clone(), vec![0; 200], 50, 100, 1234).await;
            assert_eq!(n.expect("ok"), 100);
            assert_eq!(&buf[50..150], &data[1234..1334]);
            assert!(buf[..50].iter().all(|&b| b == 0));
            // Past the end: short, then zero.
            let (n, _) = ring.read_at(f.clone(), vec![0; 100], 0, 100, 9950).await;
            assert_eq!(n.expect("ok"), 50);
            let (n, _) = ring.read_at(f.clone(), vec![0; 100], 0, 100, 20_000).await;
            assert_eq!(n.expect("ok"), 0);
            // Out of the buffer's bounds: refused before anything is submitted.
            let (n, _) = ring.read_at(f.clone(), vec![0; 10], 5, 10, 0).await;
            assert_eq!(n.expect_err("an error").kind(), io::ErrorKind::InvalidInput);
            // A descriptor not open for reading: the kernel's error comes back.
            let w = Arc::new(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(_d.path().join("f"))
                    .expect("ok"),
            );
            let (n, _) = ring.read_at(w, vec![0; 10], 0, 10, 0).await;
            assert_eq!(n.expect_err("an error").raw_os_error(), Some(9));
        });
    }

    #[test]
    fn many_reads_in_flight_from_threads_and_dropped_ones_free_their_slots() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (_d, f) = file_with(&data);
        let ring = Arc::new(SharedRing::new(8, "test-reaper", false, None).expect("ok"));
        // Futures dropped before completion (after their first poll submitted them) must give
        // their slots back, or the reads below would wait for permits forever.
        for i in 0..32u64 {
            let mut fut = Box::pin(ring.read_at(f.clone(), vec![0; 4096], 0, 4096, i * 4096));
            let waker = futures::task::noop_waker();
            let _ = fut.as_mut().poll(&mut Context::from_waker(&waker));
        }
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (ring, f, data) = (ring.clone(), f.clone(), data.clone());
                std::thread::spawn(move || {
                    futures::executor::block_on(async {
                        let reads = (0..200u64).map(|i| {
                            let pos = (t * 200 + i) * 997 % 990_000;
                            let ring = &ring;
                            let f = f.clone();
                            async move {
                                let (n, buf) = ring.read_at(f, vec![0; 1000], 0, 1000, pos).await;
                                (n.expect("ok"), buf, pos)
                            }
                        });
                        for (n, buf, pos) in futures::future::join_all(reads).await {
                            assert_eq!(n, 1000);
                            assert_eq!(&buf[..], &data[pos as usize..pos as usize + 1000]);
                        }
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().expect("ok");
        }
        assert_eq!(ring.inner.permits.available_permits(), 8);
    }

    #[test]
    fn registered_buffers_are_read_into_lent_once_and_given_back() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let (_d, f) = file_with(&data);
        let ring = SharedRing::new(8, "test-reaper", false, Some((2, 8192))).expect("ring");
        assert_eq!(
            ring.fixed_size(),
            Some(8192),
            "registered (this test needs the memlock)"
        );
        futures::executor::block_on(async {
            let (n, a) = ring
                .read_fixed(f.clone(), 8192, 4096)
                .await
                .expect("a buffer");
            assert_eq!(n.expect("read"), 8192);
            a.with(|b| assert_eq!(b, &data[4096..4096 + 8192]));
            let (n, b) = ring
                .read_fixed(f.clone(), 100, 99_950)
                .await
                .expect("a buffer");
            assert_eq!(n.expect("read"), 50, "short at the end of the file");
            b.with(|x| assert_eq!(&x[..50], &data[99_950..]));
            // Both lent: none for a third read, and none larger than the buffers.
            assert!(ring.read_fixed(f.clone(), 10, 0).await.is_none());
            drop(a);
            assert!(ring.read_fixed(f.clone(), 8193, 0).await.is_none());
            let (n, c) = ring
                .read_fixed(f.clone(), 4096, 0)
                .await
                .expect("given back");
            assert_eq!(n.expect("read"), 4096);
            c.with(|x| assert_eq!(&x[..4096], &data[..4096]));
        });
        // A read whose future is dropped in flight gives its buffer back at completion.
        for _ in 0..2 {
            let mut fut = Box::pin(ring.read_fixed(f.clone(), 8192, 0));
            let waker = futures::task::noop_waker();
            let _ = fut.as_mut().poll(&mut Context::from_waker(&waker));
        }
        let mut back = false;
        for _ in 0..1000 {
            let got = futures::executor::block_on(ring.read_fixed(f.clone(), 10, 0));
            if let Some((n, _)) = got {
                assert_eq!(n.expect("read"), 10);
                back = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(back, "the dropped reads' buffers came back");
    }
}
