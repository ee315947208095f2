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
    pub reads_direct: Counter,
    pub reads_registered: Counter,
    pub reads_ring: Counter,
    pub reads_tail: Counter,
    pub reads_cached: Counter,
    pub values_read_ahead: Counter,
    pub values_warmed: Counter,
    pub appends: Counter,
    pub syncs: Counter,
    pub syncs_led: Counter,
    pub syncs_one_flush: Counter,
    pub writes_registered: Counter,
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
    /// Snapshots' pins on datafiles, and merge inputs waiting for them to drop.
    pub pins: Mutex<Pins>,
}

/// Which merged-away datafiles snapshots still need.
///
/// Every snapshot pins the generation current when it was taken. A merge that retires its
/// inputs starts a new generation; inputs retired in generation `r` may still be read by
/// snapshots of earlier generations, so they are deleted only once no such snapshot lives.
/// (A snapshot records its generation before freezing the keydir, and a merge retires after
/// repointing every key, so a snapshot of generation `r` or later never points at them.)
#[derive(Debug, Default)]
pub(crate) struct Pins {
    generation: u64,
    /// Live snapshots per generation.
    live: BTreeMap<u64, usize>,
    /// (generation retired in, datafile ids) still needed by an older snapshot.
    waiting: Vec<(u64, Vec<u32>)>,
    /// Datafile ids no snapshot needs any more, for the merge thread to delete.
    ready: Vec<u32>,
}

impl Pins {
    /// Pins the current generation for a new snapshot; returns it.
    pub(crate) fn pin(&mut self) -> u64 {
        *self.live.entry(self.generation).or_default() += 1;
        self.generation
    }

    /// Drops a snapshot's pin on `generation`; returns whether files became ready to delete.
    pub(crate) fn unpin(&mut self, generation: u64) -> bool {
        if let Some(n) = self.live.get_mut(&generation) {
            *n -= 1;
            if *n == 0 {
                self.live.remove(&generation);
            }
        }
        let oldest = self.live.keys().next().copied().unwrap_or(u64::MAX);
        let before = self.ready.len();
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].0 <= oldest {
                let (_, ids) = self.waiting.swap_remove(i);
                self.ready.extend(ids);
            } else {
                i += 1;
            }
        }
        self.ready.len() > before
    }

    /// Retires merge inputs `ids`: `true` if they may be deleted now, `false` if a snapshot
    /// still needs them (they are then handed out by [`Pins::take_ready`] later).
    pub(crate) fn retire(&mut self, ids: &[u32]) -> bool {
        self.generation += 1;
        if self.live.is_empty() {
            return true;
        }
        self.waiting.push((self.generation, ids.to_vec()));
        false
    }

    /// Retired datafiles no snapshot needs any more.
    pub(crate) fn take_ready(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.ready)
    }

    /// Live snapshots.
    pub(crate) fn snapshots(&self) -> usize {
        self.live.values().sum()
    }

    /// Retired datafiles not deleted yet.
    pub(crate) fn retired(&self) -> usize {
        self.waiting.iter().map(|(_, ids)| ids.len()).sum::<usize>() + self.ready.len()
    }
}

impl Shared {
    /// Runs `f` on the usage table (a poisoned lock is recovered: the table holds plain numbers).
    pub(crate) fn with_usage<R>(&self, f: impl FnOnce(&mut BTreeMap<u32, FileStats>) -> R) -> R {
        let mut g = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Bytes of live records (not dead) in all datafiles, with their value files.
    pub(crate) fn live_bytes(&self) -> u64 {
        self.with_usage(|u| {
            u.values()
                .map(|f| f.total_bytes.saturating_sub(f.dead_bytes))
                .sum()
        })
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

    /// Runs `f` on the snapshot pins (a poisoned lock is recovered: the table holds plain
    /// numbers).
    pub(crate) fn with_pins<R>(&self, f: impl FnOnce(&mut Pins) -> R) -> R {
        let mut g = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Allocates a new datafile id.
    pub(crate) fn allocate_file_id(&self) -> std::io::Result<u32> {
        let id = self.next_file_id.fetch_add(1, Ordering::SeqCst);
        if id >= crate::layout::VALS_BIT {
            return Err(std::io::Error::other("datafile ids are exhausted"));
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::Pins;

    #[test]
    fn retired_files_wait_for_older_snapshots_only() {
        let mut p = Pins::default();
        assert!(p.retire(&[1]), "no snapshot: delete at once");
        let old = p.pin();
        assert!(!p.retire(&[2, 3]), "a live snapshot needs them");
        let newer = p.pin();
        assert!(!p.retire(&[4]));
        assert!(
            !p.unpin(newer),
            "the oldest snapshot still needs every file"
        );
        assert!(p.take_ready().is_empty());
        let newest = p.pin();
        assert!(
            p.unpin(old),
            "2, 3 and 4 were retired before `newest` was taken"
        );
        let mut ready = p.take_ready();
        ready.sort_unstable();
        assert_eq!(ready, vec![2, 3, 4]);
        assert!(!p.retire(&[5]), "`newest` lives");
        assert_eq!(p.snapshots(), 1);
        assert!(p.unpin(newest));
        assert_eq!(p.take_ready(), vec![5]);
        assert_eq!(p.snapshots(), 0);
    }
}
