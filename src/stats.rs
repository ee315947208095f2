//! Counters and reports exposed through [`crate::Db::stats`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::options::IoBackendKind;

/// What the last open found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Whether the keydir was loaded from the snapshot the last close saved (then no hint
    /// file or datafile was read, and the counts of files below are zero).
    pub from_snapshot: bool,
    /// Datafiles whose keys came from a valid hint file.
    pub files_from_hints: usize,
    /// Datafiles that were scanned record by record (no valid hint).
    pub files_scanned: usize,
    /// Records (values and tombstones) read from hints and scans.
    pub records_loaded: u64,
    /// Live keys after recovery.
    pub keys: usize,
    /// Bytes cut from the end of the last datafile because its tail was torn.
    pub truncated_bytes: u64,
    /// Bytes of damaged records skipped in sealed files (only with `skip_damaged_records`).
    pub skipped_damaged_bytes: u64,
    /// Leftover temporary files removed.
    pub temp_files_removed: usize,
    /// Empty or header-torn datafiles removed (creations a crash cut short).
    pub empty_files_removed: usize,
    /// Whether a merge interrupted after its commit point was completed.
    pub merge_finished: bool,
    /// Wall time of recovery.
    pub duration: Duration,
}

/// Space accounting of one datafile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileStats {
    /// Datafile id.
    pub file_id: u32,
    /// Length of the file (header and records), plus that of its value file when it keeps
    /// values apart (see [`crate::Options::values_apart`]).
    pub total_bytes: u64,
    /// Bytes of records that are superseded, deleted, or tombstones.
    pub dead_bytes: u64,
    /// Smallest sequence number in the file (`u64::MAX` while it holds no record).
    pub(crate) min_seq: u64,
    /// Whether the writer has sealed the file and applied all its keydir updates, so that a
    /// merge may take it as input.
    pub(crate) sealed: bool,
    /// Length of the value file (part of `total_bytes`; 0 without one).
    pub(crate) vals_bytes: u64,
}

impl FileStats {
    /// Accounting of a new, empty file.
    pub(crate) fn new(file_id: u32) -> FileStats {
        FileStats {
            file_id,
            total_bytes: 0,
            dead_bytes: 0,
            min_seq: u64::MAX,
            sealed: false,
            vals_bytes: 0,
        }
    }

    /// Length of the datafile alone (`total_bytes` without the value file).
    pub(crate) fn data_bytes(&self) -> u64 {
        self.total_bytes - self.vals_bytes
    }

    /// Share of the file's bytes that are dead (0 for an empty file).
    pub fn dead_ratio(&self) -> f64 {
        if self.total_bytes == 0 {
            0.0
        } else {
            self.dead_bytes as f64 / self.total_bytes as f64
        }
    }

    /// Bytes of records still referenced by the keydir.
    pub fn live_bytes(&self) -> u64 {
        self.total_bytes
            .saturating_sub(self.dead_bytes)
            .saturating_sub(crate::format::FILE_HEADER_LEN as u64)
    }
}

/// A snapshot of a store's state and counters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Stats {
    /// Keys in the keydir (keys whose TTL passed but were not reclaimed yet included).
    pub keys: usize,
    /// Backend serving datafile IO.
    pub io_backend: IoBackendKind,
    /// Why io_uring is not used, when the backend fell back to `pread`/`pwrite`.
    pub io_fallback_reason: Option<String>,
    /// Id of the active (appended) datafile.
    pub active_file_id: u32,
    /// Per datafile space accounting, by id.
    pub files: Vec<FileStats>,
    /// Sum of all datafile lengths.
    pub total_bytes: u64,
    /// Sum of dead bytes over all datafiles.
    pub dead_bytes: u64,
    /// `dead_bytes / total_bytes` (0 for an empty store).
    pub fragmentation: f64,
    /// Acknowledged puts (including those inside batches).
    pub puts: u64,
    /// Acknowledged deletes (including those inside batches).
    pub deletes: u64,
    /// Acknowledged atomic batches.
    pub batches: u64,
    /// `get` calls.
    pub gets: u64,
    /// Value reads served on the caller's thread from the page cache (see
    /// `Options::inline_reads`).
    pub reads_inline: u64,
    /// Value reads served by an io thread.
    pub reads_io_thread: u64,
    /// Of those, reads made with `O_DIRECT` (see `IoMode::Direct`).
    pub reads_direct: u64,
    /// Of the direct reads, those made into a buffer registered with an io_uring ring (the
    /// shared ring's or a read thread's: fixed buffers; none where registering failed, e.g.
    /// under `RLIMIT_MEMLOCK`).
    pub reads_registered: u64,
    /// Value reads the caller's thread submitted to the ring shared by all callers (see
    /// `Options::caller_submits_reads`) rather than handing them to a read thread; those made
    /// with `O_DIRECT` are counted in `reads_direct` too.
    pub reads_ring: u64,
    /// Of those, reads whose completion a task on the caller's tokio runtime took (see
    /// `Options::reap_on_tokio`); the engine's reaper thread took the others.
    pub reads_reaped_on_runtime: u64,
    /// Reads served (wholly or partly) from the direct-IO writer's in-memory tail of the
    /// active file: records appended but not yet written (see `IoMode::Direct`).
    pub reads_tail: u64,
    /// Values served from the value cache (see `Options::value_cache_bytes`).
    pub reads_cached: u64,
    /// Values the value cache took from the rest of a block read for another value, while it
    /// was filling (see `Options::value_cache_bytes`).
    pub values_read_ahead: u64,
    /// Values the value cache took from the warm-up after open (see
    /// `Options::warm_value_cache`).
    pub values_warmed: u64,
    /// Bytes the value cache holds (values plus a fixed overhead each).
    pub value_cache_bytes: u64,
    /// Appends to the active datafile (one `pwrite` each: a single write, a batch).
    pub appends: u64,
    /// `fdatasync` calls on the active datafile; under the direct-IO writer, its group writes
    /// (each an `O_DIRECT | O_DSYNC` write: the write is the sync).
    pub syncs: u64,
    /// Of `syncs`, the group writes a durable caller made itself (the direct-IO writer with a
    /// lone durable writer on io_uring: no hop to the writer thread; see `IoMode::Direct`).
    pub syncs_led: u64,
    /// Of `syncs`, the groups that wrote both the active datafile and its value file with
    /// plain `O_DIRECT` writes and made them durable with one `fdatasync` (see
    /// `GroupFlush::Once`).
    pub syncs_one_flush: u64,
    /// Of the direct-IO writer's group writes, those made from a buffer registered with a ring
    /// (io_uring fixed buffers, where registering succeeded: the writer thread's for groups up
    /// to 1 MiB, the shared ring's for a lone writer's groups up to 16 KiB).
    pub writes_registered: u64,
    /// Bytes appended to datafiles since open.
    pub bytes_written: u64,
    /// Merges completed since open.
    pub merges: u64,
    /// Bytes of datafiles removed by merges since open, minus the bytes they wrote.
    pub merge_reclaimed_bytes: u64,
    /// Live [`crate::Snapshot`]s (iterators included).
    pub snapshots: usize,
    /// Merged-away datafiles kept on disk because a snapshot may still read them.
    pub retired_files: usize,
    /// What the last open recovered.
    pub recovery: RecoveryReport,
}

/// Stripes of a [`Counter`].
const STRIPES: usize = 16;

/// One stripe, alone on its cache lines (two, for the adjacent-line prefetcher).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

/// A statistics counter striped over cache lines: threads counting side by side (every `get`
/// counts) each add to their own stripe instead of passing one line between cores. Reading
/// sums the stripes.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    stripes: [Stripe; STRIPES],
}

impl Counter {
    /// Adds `n`.
    pub(crate) fn add(&self, n: u64) {
        self.stripes[stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The sum so far.
    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// This thread's stripe.
fn stripe() -> usize {
    thread_number() % STRIPES
}

/// A number for this thread, given in the order threads first ask (for striping).
pub(crate) fn thread_number() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    // (0 while the thread's locals are being destroyed.)
    MINE.try_with(|s| *s).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counter_sums_every_thread() {
        let c = std::sync::Arc::new(Counter::default());
        let hs: Vec<_> = (0..40u64)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(t + 1);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().expect("thread");
        }
        assert_eq!(c.get(), 1000 * (1..=40).sum::<u64>());
    }
}
