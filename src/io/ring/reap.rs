//! Reaping the shared ring: taking completions off its queue and waking the callers they
//! belong to.
//!
//! By default a reaper thread does it, waiting in `io_uring_enter`. A read's completion is
//! first run (as task work) on the thread that submitted it, then wakes the reaper, which
//! wakes the caller's task: a parked runtime worker is woken up to three times per read.
//!
//! With a reaper task (`Options::reap_on_tokio`), a caller on a multi-thread tokio runtime
//! starts a task on it that waits on an eventfd the ring signals on every completion, through
//! the runtime's own IO driver. The worker that the completion's task work woke then finds the
//! eventfd ready, runs the reaper task, and wakes the caller's task on its own queue: one
//! wake-up instead of three (measured: cold direct 4 KiB gets at one in flight 8.4k/s through
//! the thread, 13.2k/s through a task; DESIGN §3). The thread stands by meanwhile: it takes
//! over when the task ends (its runtime shut down), and it reaps itself if completions wait
//! on the queue untouched for a while (a runtime whose workers are all blocked), so a read
//! never waits on a runtime that does not run.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use io_uring::IoUring;

use super::{lock, Inner, Slot, ENTER_GETEVENTS, WAKE};

/// The reaper thread reaps.
pub(super) const THREAD: u8 = 0;
/// A reaper task reaps; the thread stands by.
const TASK: u8 = 1;
/// A caller is starting a reaper task.
const STARTING: u8 = 2;

/// How often the standing-by thread looks for completions nobody took, with reads in flight.
const WATCH_BUSY: Duration = Duration::from_millis(5);
/// The same with nothing in flight.
const WATCH_IDLE: Duration = Duration::from_millis(100);

/// An eventfd registered with `ring` (signalled on every completion), or `None` if that fails.
pub(super) fn eventfd(ring: &IoUring) -> Option<OwnedFd> {
    use rustix::event::EventfdFlags;
    let made = rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)
        .map_err(io::Error::from)
        .and_then(|fd| {
            ring.submitter().register_eventfd(fd.as_raw_fd())?;
            Ok(fd)
        });
    match made {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!("cannot set up the shared ring's eventfd ({e}); a thread reaps it");
            None
        }
    }
}

/// Starts a reaper task on the caller's runtime if none runs and the caller is on a
/// multi-thread tokio runtime.
pub(super) fn start_task(inner: &Arc<Inner>) {
    if inner.reaper.load(Ordering::Acquire) != THREAD || inner.task_failed.load(Ordering::Relaxed) {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    // A current-thread runtime runs its tasks only while someone drives it.
    if rt.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return;
    }
    if inner
        .reaper
        .compare_exchange(THREAD, STARTING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    match register(inner) {
        Some(fd) => {
            let guard = TaskGuard(inner.clone());
            inner.reaper.store(TASK, Ordering::Release);
            rt.spawn(reap_task(guard, fd));
            tracing::debug!("the shared ring is reaped by a task on the caller's runtime");
        }
        None => {
            inner.task_failed.store(true, Ordering::Relaxed);
            inner.reaper.store(THREAD, Ordering::Release);
        }
    }
}

/// A copy of the ring's eventfd registered with the current runtime's IO driver.
fn register(inner: &Inner) -> Option<tokio::io::unix::AsyncFd<OwnedFd>> {
    let fd = inner.efd.as_ref()?.try_clone().ok()?;
    // tokio panics here when the runtime was built without IO (`enable_io`); the option's
    // documentation asks for it, and the panic is caught so that the thread reaps instead.
    let registered = std::panic::catch_unwind(|| {
        // SAFETY: `fd` is an open descriptor this `AsyncFd` owns, so it stays open (and names
        // the same eventfd) for the whole life of the `AsyncFd`.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
    });
    match registered {
        Ok(Ok(afd)) => Some(afd),
        Ok(Err(e)) => {
            tracing::warn!("cannot register the shared ring's eventfd with the runtime: {e}");
            None
        }
        Err(_) => {
            tracing::warn!("the caller's runtime has no IO driver; a thread reaps the shared ring");
            None
        }
    }
}

/// Hands reaping back to the thread when the task ends, however it ends (its runtime may drop
/// it at any await point).
struct TaskGuard(Arc<Inner>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.reaper.store(THREAD, Ordering::Release);
        if let Some(t) = self.0.thread.get() {
            t.unpark();
        }
    }
}

/// The reaper task: each time the eventfd is signalled, resets it and reaps.
async fn reap_task(guard: TaskGuard, efd: tokio::io::unix::AsyncFd<OwnedFd>) {
    let inner = &guard.0;
    let mut wake = Vec::new();
    loop {
        if inner.stop.load(Ordering::Acquire) && inner.in_kernel.load(Ordering::Acquire) == 0 {
            return;
        }
        let Ok(mut ready) = efd.readable().await else {
            return;
        };
        // Reset the counter before taking completions: one posted after this signals again.
        // One read resets it; clearing the readiness then (rather than reading again until
        // `EAGAIN`) saves a system call per wake-up, and cannot lose a signal: the runtime
        // keeps a readiness that arrived after the one this guard saw.
        let mut count = [0u8; 8];
        match rustix::io::read(efd.get_ref(), &mut count) {
            Ok(_) => ready.clear_ready(),
            Err(e) if e == rustix::io::Errno::AGAIN => ready.clear_ready(),
            Err(e) => {
                tracing::warn!("reading the shared ring's eventfd failed ({e}); the thread reaps");
                return;
            }
        }
        let reads = inner.drain(&mut wake);
        inner.task_reaped.fetch_add(reads, Ordering::Relaxed);
        for w in wake.drain(..) {
            w.wake();
        }
    }
}

impl Inner {
    /// The reaper thread: waits for completions and wakes the callers they belong to; stands
    /// by while a task reaps.
    pub(super) fn reap(self: Arc<Inner>) {
        let mut wake: Vec<Waker> = Vec::new();
        let mut seen = u64::MAX;
        // The thread took completions at its last look: it looks again soon.
        let mut rescued = false;
        loop {
            if self.stop.load(Ordering::Acquire) && self.in_kernel.load(Ordering::Acquire) == 0 {
                return;
            }
            if self.reaper.load(Ordering::Acquire) != THREAD {
                let busy = rescued || self.in_kernel.load(Ordering::Acquire) > 0;
                std::thread::park_timeout(if busy { WATCH_BUSY } else { WATCH_IDLE });
                // Completions queued and none taken since the last look: the task's runtime
                // is not running it. Reap them here.
                rescued = self.queued() > 0 && self.reaped.load(Ordering::Acquire) == seen;
                if rescued {
                    tracing::debug!("completions left on the shared ring; the thread reaps them");
                    self.drain(&mut wake);
                    wake.drain(..).for_each(Waker::wake);
                }
                seen = self.reaped.load(Ordering::Acquire);
                continue;
            }
            // SAFETY: no pointer is passed (a null argument of size 0): this only waits for at
            // least one completion, and submits nothing (so it never contends with callers
            // for the kernel's submission lock).
            let waited = unsafe {
                self.ring
                    .submitter()
                    .enter::<()>(0, 1, ENTER_GETEVENTS, None)
            };
            match waited {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("the shared ring's reaper cannot wait: {e}");
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            }
            self.drain(&mut wake);
            wake.drain(..).for_each(Waker::wake);
        }
    }

    /// Completions on the queue now.
    fn queued(&self) -> usize {
        let _s = lock(&self.slots);
        // SAFETY: completions are only taken under the slots lock, held here; this takes none
        // (the queue's head is written back unchanged).
        unsafe { self.ring.completion_shared() }.len()
    }

    /// Takes every completion queued and marks its slot done; the wakers to wake go to `wake`.
    /// Returns how many reads completed.
    pub(super) fn drain(&self, wake: &mut Vec<Waker>) -> u64 {
        let mut s = lock(&self.slots);
        // SAFETY: completions are only taken under the slots lock, held here.
        let cq = unsafe { self.ring.completion_shared() };
        let (mut n, mut reads) = (0u64, 0u64);
        for cqe in cq {
            n += 1;
            let idx = cqe.user_data();
            if idx == WAKE {
                continue;
            }
            reads += 1;
            self.in_kernel.fetch_sub(1, Ordering::AcqRel);
            let idx = idx as usize;
            let Some(slot) = s.slots.get_mut(idx) else {
                continue;
            };
            match std::mem::replace(slot, Slot::Free) {
                Slot::Pending { waker, keep } => {
                    *slot = Slot::Done {
                        res: cqe.result(),
                        keep,
                    };
                    wake.extend(waker);
                }
                Slot::Abandoned => {
                    s.orphans[idx] = None;
                    s.free.push(idx);
                }
                other => *slot = other,
            }
        }
        self.reaped.fetch_add(n, Ordering::AcqRel);
        reads
    }
}
