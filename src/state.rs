//! Engine state shared by the handle and the engine's threads, and what recovery hands over.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::files::hint::HintBuilder;
use crate::files::snapshot::Restored;
use crate::stats::{Counter, FileStats, RecoveryReport};

/// What recovery hands to the writer.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// First sequence number the writer may use.
    pub next_seq: u64,
    /// First datafile id the writer may use.
    pub next_file_id: u32,
    /// Hint files to write for datafiles that had to be scanned: (file id, hint file bytes).
    pub hints_to_write: Vec<(u32, u64, HintBuilder)>,
    /// Per-file space accounting.
    pub usage: BTreeMap<u32, FileStats>,
    /// The report shown in `Stats::recovery`.
    pub report: RecoveryReport,
    /// Some live key has an expiry.
    pub has_ttl: bool,
}

impl From<Restored> for Recovered {
    fn from(r: Restored) -> Recovered {
        Recovered {
            next_seq: r.next_seq,
            next_file_id: r.next_file_id,
            hints_to_write: Vec::new(),
            usage: r.usage,
            report: r.report,
            has_ttl: r.has_ttl,
        }
    }
}

/// State shared between the handle and the io threads.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub puts: Counter,
    pub deletes: Counter,
    pub batches: Counter,
    pub gets: Counter,
    pub reads_inline: Counter,
    pub reads_io_thread: Counter,
    pub reads_cached: Counter,
    pub appends: Counter,
    pub syncs: Counter,
    pub bytes_written: Counter,
    pub merges: Counter,
    pub merge_reclaimed_bytes: Counter,
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
