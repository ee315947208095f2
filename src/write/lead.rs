//! Who leads the next group write under the direct-IO writer: the active file's direct-IO
//! writers behind the lock that group writes, rotation and sealing take, and the count of
//! callers waiting for a sync (the leading itself: [`super::group`]).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{Mutex, MutexGuard};

use super::direct::DirectFile;
use crate::io::ring::SharedRing;
use crate::read::ring::RingReads;

/// The direct-IO writers of the active datafile and of its value file, when it has them.
#[derive(Default)]
pub(crate) struct Leads {
    pub(super) data: Option<DirectFile>,
    pub(super) vals: Option<DirectFile>,
    /// A group write in flight, and the seq up to which it makes every record durable: started
    /// by a leader for the records appended while its own group was in flight (see
    /// [`Appender::sync_group`]), or left by a leader whose future was dropped.
    pub(super) in_flight: Option<u64>,
}

impl Leads {
    /// Nothing to write: the active file has no direct-IO writer.
    pub(super) fn none() -> Leads {
        Leads::default()
    }

    /// Waits for every write in flight of both files.
    pub(super) async fn settle_all(&mut self) {
        for d in [&mut self.data, &mut self.vals].into_iter().flatten() {
            d.settle_all().await;
        }
    }
}

/// Lone durable syncs in a row after which a lone caller leads its own group write.
///
/// A short run of callers each finding nobody else waiting is common at any concurrency
/// (between two groups, say); a long one means one writer at a time, where leading wins. With
/// others waiting the writer thread forms the groups: it has their requests queued and starts
/// the next group the moment the last completes (one wake-up between groups, where a caller
/// handing over to the next leader costs two), and a leader's group and the writer's would
/// queue behind each other.
pub(super) const LEAD_AFTER: u32 = 16;

/// The lock that group writes, rotation and sealing take, and who may lead.
#[derive(Default)]
pub(crate) struct GroupCommit {
    pub(super) files: Mutex<Leads>,
    /// Callers waiting for a sync now, led or asked of the writer thread (see
    /// `Appender::waiting`).
    pub(super) waiting: AtomicUsize,
    /// Syncs asked in a row by a caller that found no other caller waiting (saturating).
    pub(super) lone: AtomicU32,
    /// The store's shared ring, once the handle has set it up: callers may lead from then on.
    pub(super) ring: OnceLock<Arc<RingReads>>,
}

impl GroupCommit {
    /// Lets callers lead group commits through `ring`.
    pub(crate) fn attach_ring(&self, ring: Arc<RingReads>) {
        let _ = self.ring.set(ring);
    }

    /// The shared ring, if attached.
    pub(super) fn ring(&self) -> Option<&SharedRing> {
        self.ring.get().map(|r| r.ring())
    }

    /// Whether the durable writes come from one writer at a time now: the last
    /// [`LEAD_AFTER`] syncs each found nobody else waiting, and nobody waits now. Such a
    /// writer leads its own group writes; its values stay in their records (see
    /// `Appender::append`).
    pub(super) fn lone_writer(&self) -> bool {
        self.lone.load(Ordering::Relaxed) >= LEAD_AFTER && self.waiting.load(Ordering::Acquire) == 0
    }

    /// The active file's direct-IO writers, exclusively, until the guard is dropped.
    pub(super) async fn lock(&self) -> MutexGuard<'_, Leads> {
        self.files.lock().await
    }
}

/// One caller counted in [`GroupCommit::waiting`] while it lives: while it waits for a sync,
/// however that sync is made.
pub(crate) struct Waiting<'a> {
    pub(super) count: &'a AtomicUsize,
    /// No other caller was waiting when this one arrived.
    pub(super) first: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}
