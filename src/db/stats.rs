//! [`Db::stats`]: the handle's counters, space accounting and last recovery report.

use std::sync::atomic::Ordering;

use super::Db;
use crate::read::cache::ValueCache;
use crate::stats::{Counter, FileStats, Stats};

impl Db {
    /// A snapshot of counters, space accounting and the last recovery report.
    pub fn stats(&self) -> Stats {
        let s = &self.inner.shared;
        let files: Vec<FileStats> = s.with_usage(|u| u.values().copied().collect());
        let total_bytes = files.iter().map(|f| f.total_bytes).sum::<u64>();
        let dead_bytes = files.iter().map(|f| f.dead_bytes).sum::<u64>();
        let load = Counter::get;
        Stats {
            keys: self.inner.keydir.len(),
            io_backend: self.inner.kind,
            io_fallback_reason: self.inner.fallback_reason.clone(),
            active_file_id: s.active_file_id.load(Ordering::Relaxed),
            files,
            total_bytes,
            dead_bytes,
            fragmentation: if total_bytes == 0 {
                0.0
            } else {
                dead_bytes as f64 / total_bytes as f64
            },
            puts: load(&s.puts),
            deletes: load(&s.deletes),
            batches: load(&s.batches),
            gets: load(&s.gets),
            reads_inline: load(&s.reads_inline),
            reads_io_thread: load(&s.reads_io_thread),
            reads_direct: load(&s.reads_direct),
            reads_registered: load(&s.reads_registered),
            reads_ring: load(&s.reads_ring),
            reads_reaped_on_runtime: self
                .inner
                .ring_reads
                .as_ref()
                .map_or(0, |r| r.task_reaped()),
            reads_tail: load(&s.reads_tail),
            reads_cached: load(&s.reads_cached),
            values_read_ahead: load(&s.values_read_ahead),
            values_warmed: load(&s.values_warmed),
            value_cache_bytes: self.inner.cache.as_deref().map_or(0, ValueCache::weight),
            appends: load(&s.appends),
            syncs: load(&s.syncs),
            syncs_led: load(&s.syncs_led),
            syncs_one_flush: load(&s.syncs_one_flush),
            writes_registered: load(&s.writes_registered),
            bytes_written: load(&s.bytes_written),
            merges: load(&s.merges),
            merge_reclaimed_bytes: load(&s.merge_reclaimed_bytes),
            snapshots: s.with_pins(|p| p.snapshots()),
            retired_files: s.with_pins(|p| p.retired()),
            recovery: s.recovery.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}
