//! Fault injection for crash-safety tests: every state-changing IO of the engine counts against
//! an optional [`FaultInjector`], which can fail, tear or "crash" it, and in power-loss mode
//! also tells it what became durable, so that a simulated power cut can put the directory back
//! to what the disk would hold.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

mod power;

pub use power::PowerCut;
use power::PowerModel;

/// Injects faults into the engine's IO, for crash-safety tests.
///
/// Every state-changing operation (write, sync, preallocate, truncate, create, rename, remove,
/// directory sync) counts as one operation. After [`FaultInjector::crash_after`]`(n)`, the first
/// `n` operations succeed and every later one fails without touching the disk, as if the process
/// had died at that instant; with [`FaultInjector::tear_writes`] the write that crosses the limit
/// first writes the leading half of its bytes. Reads are never failed.
///
/// In power-loss mode ([`FaultInjector::power_loss`]) it also keeps the durable image of the
/// store directory: data not yet `fsync`ed and directory changes not yet followed by a
/// directory fsync are lost at [`FaultInjector::cut_power`], and the last unsynced write may be
/// torn at 512-byte sector granularity.
#[derive(Debug)]
pub struct FaultInjector {
    ops: AtomicU64,
    limit: AtomicU64,
    tear: AtomicBool,
    crashed: AtomicBool,
    /// Reads to let through before failing any.
    reads_before_failing: AtomicU64,
    /// Reads still to fail with `EIO` after those.
    failing_reads: AtomicU64,
    power: Option<Mutex<PowerModel>>,
    /// While set, every state-changing operation waits (a disk that stalls).
    held: Mutex<bool>,
    released: std::sync::Condvar,
    /// The same for operations that wait asynchronously (writes submitted to the shared ring,
    /// which never block their thread).
    released_async: tokio::sync::Notify,
}

impl FaultInjector {
    /// A new injector that lets every operation through.
    pub fn new() -> Arc<Self> {
        Arc::new(FaultInjector::with_power(None))
    }

    fn with_power(power: Option<Mutex<PowerModel>>) -> FaultInjector {
        FaultInjector {
            ops: AtomicU64::new(0),
            limit: AtomicU64::new(u64::MAX),
            tear: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
            reads_before_failing: AtomicU64::new(0),
            failing_reads: AtomicU64::new(0),
            power,
            held: Mutex::new(false),
            released: std::sync::Condvar::new(),
            released_async: tokio::sync::Notify::new(),
        }
    }

    /// An injector in power-loss mode for the store directory `dir` (created if missing),
    /// whose files as they are now are taken as durable; `seed` picks how the last unsynced
    /// write tears.
    ///
    /// # Errors
    /// Reading the directory failed.
    pub fn power_loss(dir: impl AsRef<Path>, seed: u64) -> io::Result<Arc<Self>> {
        let model = PowerModel::new(dir.as_ref(), seed)?;
        Ok(Arc::new(FaultInjector::with_power(Some(Mutex::new(model)))))
    }

    /// Cuts the power: from now on every operation fails (the machine is off), and the
    /// directory is rewritten to what the disk holds durably. Drop every handle of the store
    /// first, so that no io thread is still writing. The injector can then be used for the
    /// next open, with its directory image as it is after the cut.
    ///
    /// # Errors
    /// Not in power-loss mode, or rewriting the directory failed.
    pub fn cut_power(&self) -> io::Result<PowerCut> {
        self.crashed.store(true, Ordering::SeqCst);
        self.limit.store(0, Ordering::SeqCst);
        let cut = match &self.power {
            Some(m) => m.lock().unwrap_or_else(|p| p.into_inner()).cut()?,
            None => return Err(io::Error::other("not a power-loss injector")),
        };
        Ok(cut)
    }

    /// Powers the machine back on after [`FaultInjector::cut_power`] or a crash: operations
    /// succeed again (and are counted from now).
    pub fn restart(&self) {
        self.limit.store(u64::MAX, Ordering::SeqCst);
        self.crashed.store(false, Ordering::SeqCst);
    }

    fn model(&self, f: impl FnOnce(&mut PowerModel)) {
        if let Some(m) = &self.power {
            f(&mut m.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// `path` was just created.
    pub(crate) fn note_created(&self, path: &Path) {
        self.model(|m| m.created(path));
    }

    /// `data` was just written to `file` at `offset`.
    pub(crate) fn note_write(&self, file: &File, offset: u64, data: &[u8]) {
        self.model(|m| m.wrote(file, offset, data));
    }

    /// `file`'s length was just set.
    pub(crate) fn note_set_len(&self, file: &File, len: u64) {
        self.model(|m| m.set_len(file, len));
    }

    /// `file` was just preallocated up to `end`.
    pub(crate) fn note_allocate(&self, file: &File, end: u64) {
        self.model(|m| m.allocated(file, end));
    }

    /// `file` was just synced.
    pub(crate) fn note_sync(&self, file: &File) {
        self.model(|m| m.synced(file));
    }

    /// Directory `dir` was just synced.
    pub(crate) fn note_dir_sync(&self, dir: &Path) {
        self.model(|m| m.dir_synced(dir));
    }

    /// Lets `n` more operations succeed (counted from now), then fails all later ones.
    pub fn crash_after(&self, n: u64) {
        let now = self.ops.load(Ordering::SeqCst);
        self.limit.store(now.saturating_add(n), Ordering::SeqCst);
    }

    /// Lets `after` more reads of datafiles, hint files and the keydir snapshot (a `get`'s, a
    /// merge's, recovery's) through, then makes the next `n` fail with `EIO`, without reading.
    pub fn fail_reads(&self, after: u64, n: u64) {
        self.reads_before_failing.store(after, Ordering::SeqCst);
        self.failing_reads.store(n, Ordering::SeqCst);
    }

    /// Fails this read if [`FaultInjector::fail_reads`] asked for it.
    pub(crate) fn check_read(&self) -> io::Result<()> {
        let dec = |n: u64| n.checked_sub(1);
        if self.failing_reads.load(Ordering::SeqCst) == 0
            || self
                .reads_before_failing
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, dec)
                .is_ok()
        {
            return Ok(());
        }
        match self
            .failing_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, dec)
        {
            Ok(_) => Err(io::Error::from_raw_os_error(5)), // EIO
            Err(_) => Ok(()),
        }
    }

    /// Makes the first failing write write half of its bytes before failing.
    pub fn tear_writes(&self, tear: bool) {
        self.tear.store(tear, Ordering::SeqCst);
    }

    /// Makes every state-changing operation wait (on the thread that makes it) until
    /// [`FaultInjector::release`]: a disk that stalls, to show what waits for the disk and what
    /// does not.
    pub fn hold(&self) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    /// Lets the operations held by [`FaultInjector::hold`] go on.
    pub fn release(&self) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.released.notify_all();
        self.released_async.notify_waiters();
    }

    /// Number of state-changing operations seen so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    /// Whether the crash point has been reached.
    pub fn has_crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// Counts one operation; `Err` when it must fail. `Ok(true)` means "tear this write" (only
    /// ever for a write: any other operation at the crash point fails).
    pub(crate) fn check(&self, is_write: bool) -> io::Result<bool> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while *held {
            held = self.released.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        drop(held);
        self.count(is_write)
    }

    /// [`FaultInjector::check`] for an operation that does not block its thread: while held,
    /// it waits without blocking.
    pub(crate) async fn check_async(&self, is_write: bool) -> io::Result<bool> {
        loop {
            let released = self.released_async.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !*self.held.lock().unwrap_or_else(|p| p.into_inner()) {
                break;
            }
            released.await;
        }
        self.count(is_write)
    }

    fn count(&self, is_write: bool) -> io::Result<bool> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        if n < self.limit.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let first = !self.crashed.swap(true, Ordering::SeqCst);
        if first && is_write && self.tear.load(Ordering::SeqCst) {
            return Ok(true);
        }
        Err(injected())
    }
}

pub(crate) fn injected() -> io::Error {
    io::Error::other("injected fault: simulated crash")
}

/// Fails a read if an optional injector asks for it.
pub(crate) fn read_point(fault: Option<&FaultInjector>) -> io::Result<()> {
    match fault {
        Some(f) => f.check_read(),
        None => Ok(()),
    }
}

/// Counts one state-changing operation against an optional injector.
pub(crate) fn fault_point(fault: Option<&FaultInjector>) -> io::Result<()> {
    match fault {
        Some(f) => f.check(false).map(|_| ()),
        None => Ok(()),
    }
}
