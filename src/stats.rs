//! Counters and reports exposed through [`crate::Db::stats`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::io::Kind;

/// What the last open found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
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
    /// Length of the file (header and records).
    pub total_bytes: u64,
    /// Bytes of records that are superseded, deleted, or tombstones.
    pub dead_bytes: u64,
    /// Smallest sequence number in the file (`u64::MAX` while it holds no record).
    pub(crate) min_seq: u64,
    /// Whether the writer has sealed the file and applied all its keydir updates, so that a
    /// merge may take it as input.
    pub(crate) sealed: bool,
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
        }
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
            .saturating_sub(crate::record::FILE_HEADER_LEN as u64)
    }
}

/// The IO backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoBackendKind {
    /// io_uring through tokio-uring.
    IoUring,
    /// Plain `pread`/`pwrite`.
    Pread,
}

impl From<Kind> for IoBackendKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Uring => IoBackendKind::IoUring,
            Kind::Pread => IoBackendKind::Pread,
        }
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
    /// Values served from the value cache (see `Options::value_cache_bytes`).
    pub reads_cached: u64,
    /// Bytes the value cache holds (values plus a fixed overhead each).
    pub value_cache_bytes: u64,
    /// Appends to the active datafile (one `pwrite` each: a single write, a batch).
    pub appends: u64,
    /// `fdatasync` calls on the active datafile.
    pub syncs: u64,
    /// Bytes appended to datafiles since open.
    pub bytes_written: u64,
    /// Merges completed since open.
    pub merges: u64,
    /// Bytes of datafiles removed by merges since open, minus the bytes they wrote.
    pub merge_reclaimed_bytes: u64,
    /// What the last open recovered.
    pub recovery: RecoveryReport,
}

/// State shared between the handle and the io threads.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub puts: AtomicU64,
    pub deletes: AtomicU64,
    pub batches: AtomicU64,
    pub gets: AtomicU64,
    pub reads_inline: AtomicU64,
    pub reads_io_thread: AtomicU64,
    pub reads_cached: AtomicU64,
    pub appends: AtomicU64,
    pub syncs: AtomicU64,
    pub bytes_written: AtomicU64,
    pub merges: AtomicU64,
    pub merge_reclaimed_bytes: AtomicU64,
    pub active_file_id: AtomicU32,
    /// Next datafile id, shared by the writer (rotation) and merges (outputs).
    pub next_file_id: AtomicU32,
    /// Set once any key with a TTL exists (then `len` counts, and expiry sweeps run).
    pub has_ttl: std::sync::atomic::AtomicBool,
    /// Set when the store is closing: a running merge stops at its next step.
    pub stopping: std::sync::atomic::AtomicBool,
    pub usage: Mutex<BTreeMap<u32, FileStats>>,
    pub recovery: Mutex<RecoveryReport>,
}

impl Shared {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Runs `f` on the usage table (a poisoned lock is recovered: the table holds plain numbers).
    pub(crate) fn with_usage<R>(&self, f: impl FnOnce(&mut BTreeMap<u32, FileStats>) -> R) -> R {
        let mut g = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// The accounting of file `id`, created if missing.
    pub(crate) fn usage_entry(map: &mut BTreeMap<u32, FileStats>, id: u32) -> &mut FileStats {
        map.entry(id).or_insert(FileStats::new(id))
    }

    /// Adds dead bytes to file `id` if it still exists (a merge may have removed it).
    pub(crate) fn add_dead(map: &mut BTreeMap<u32, FileStats>, id: u32, bytes: u64) {
        if let Some(f) = map.get_mut(&id) {
            f.dead_bytes += bytes;
        }
    }

    /// Allocates a new datafile id.
    pub(crate) fn allocate_file_id(&self) -> std::io::Result<u32> {
        let id = self.next_file_id.fetch_add(1, Ordering::SeqCst);
        if id == u32::MAX {
            return Err(std::io::Error::other("datafile ids are exhausted"));
        }
        Ok(id)
    }
}
