//! Fault injection for crash-safety tests: every state-changing IO of the engine counts against
//! an optional [`FaultInjector`], which can fail, tear or "crash" it.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Injects faults into the engine's IO, for crash-safety tests.
///
/// Every state-changing operation (write, sync, preallocate, truncate, create, rename, remove,
/// directory sync) counts as one operation. After [`FaultInjector::crash_after`]`(n)`, the first
/// `n` operations succeed and every later one fails without touching the disk, as if the process
/// had died at that instant; with [`FaultInjector::tear_writes`] the write that crosses the limit
/// first writes the leading half of its bytes. Reads are never failed.
#[derive(Debug)]
pub struct FaultInjector {
    ops: AtomicU64,
    limit: AtomicU64,
    tear: AtomicBool,
    crashed: AtomicBool,
}

impl FaultInjector {
    /// A new injector that lets every operation through.
    pub fn new() -> Arc<Self> {
        Arc::new(FaultInjector {
            ops: AtomicU64::new(0),
            limit: AtomicU64::new(u64::MAX),
            tear: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
        })
    }

    /// Lets `n` more operations succeed (counted from now), then fails all later ones.
    pub fn crash_after(&self, n: u64) {
        let now = self.ops.load(Ordering::SeqCst);
        self.limit.store(now.saturating_add(n), Ordering::SeqCst);
    }

    /// Makes the first failing write write half of its bytes before failing.
    pub fn tear_writes(&self, tear: bool) {
        self.tear.store(tear, Ordering::SeqCst);
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

/// Counts one state-changing operation against an optional injector.
pub(crate) fn fault_point(fault: Option<&FaultInjector>) -> io::Result<()> {
    match fault {
        Some(f) => f.check(false).map(|_| ()),
        None => Ok(()),
    }
}
