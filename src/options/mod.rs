//! Store configuration.

mod group_flush;

use std::sync::Arc;

pub use group_flush::GroupFlush;

use crate::fault::FaultInjector;
use crate::format::{KEY_LEN_LIMIT, VALUE_LEN_LIMIT};
use crate::{Error, Result};

/// Which IO backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoBackend {
    /// Use io_uring when the kernel allows it, else fall back to `pread`/`pwrite` (default).
    Auto,
    /// io_uring only; opening fails if it cannot be set up.
    IoUring,
    /// Plain positioned `pread`/`pwrite` system calls on the io threads.
    Pread,
}

/// The value cache's default size under [`IoMode::Direct`] (see
/// [`Options::value_cache_bytes`]): 64 MiB.
pub const DIRECT_VALUE_CACHE_BYTES: u64 = 64 << 20;

/// How datafiles are read (see [`Options::io_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum IoMode {
    /// Through the page cache (default): a hot store is served from memory by the kernel.
    #[default]
    Buffered,
    /// Values of sealed datafiles are read with `O_DIRECT` through the read threads' rings,
    /// the aligned 4 KiB blocks that hold the record, bypassing the page cache: a store larger
    /// than memory, read at random, no longer churns the page cache and reads no more than
    /// the blocks it needs.
    ///
    /// With [`SyncPolicy::Always`] writes bypass it too: appends copy their records into an
    /// in-memory tail of the active file, and each group commit's blocks are written as one
    /// `O_DIRECT | O_DSYNC` write (the write is the sync) through io_uring: by the writer
    /// thread, which forms the groups of concurrent durable writers, or, for a lone durable
    /// writer, by the caller itself through the store's shared ring (no hop to the writer
    /// thread; `Stats::syncs_led` counts these). Reads of records not yet written are served
    /// from that tail, the rest of the active file is read with `O_DIRECT` too. On the `pread`
    /// backend the writer thread makes these writes with `pwrite`. Under the other policies a
    /// write is acknowledged before any sync, and must still survive a crash of the process,
    /// so appends stay buffered `pwrite`s (a copy into the page cache) and the active file is
    /// read buffered.
    ///
    /// Nothing is cached for these reads by the kernel: the store's own value cache is on by
    /// default in this mode ([`DIRECT_VALUE_CACHE_BYTES`]; [`Options::value_cache_bytes`] sets
    /// it) and is filled by writes as well as reads, so hot and recently written keys are
    /// served from memory. A get that misses it is a device read (tens of microseconds): a
    /// store whose working set fits in memory but not in the value cache is read far faster
    /// in [`IoMode::Buffered`] (measured with the compare harness: random gets over 40 MB of
    /// 100 B values, 1 thread, 15k/s direct with the default cache against 514k/s buffered),
    /// so size the cache to the working set, or keep this mode for stores larger than memory
    /// and for durable writes. Where the file system refuses `O_DIRECT`
    /// (tmpfs, for one), that file is read and written buffered and `Stats::reads_direct` does
    /// not count its reads.
    ///
    /// On io_uring the direct reads and writes go through buffers registered with the rings
    /// (2 MiB for the writer thread's group writes, groups up to 1 MiB; 2 MiB for the shared
    /// ring the callers submit their reads and, as a lone durable writer, their group writes
    /// to, groups up to 16 KiB; 2.5 MiB per read thread once it reads); where
    /// the kernel refuses to pin them (`RLIMIT_MEMLOCK` without `CAP_IPC_LOCK`) plain buffers
    /// are used, and `Stats::reads_registered` / `writes_registered` stay 0.
    Direct,
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

/// When appended data is forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Acknowledge a write only after `fdatasync` (shared by every write of a group commit).
    /// An acknowledged write survives power loss.
    Always,
    /// `fdatasync` in the background at most this many milliseconds after a write. A process
    /// crash loses nothing acknowledged; power loss can lose up to that window.
    IntervalMs(u64),
    /// Never wait for a sync: the OS writes back when it likes, sealing a file and closing the
    /// store still sync, and every 16 MiB appended starts a background `fdatasync` that no
    /// write waits for (so that sealing a full file does not stall appends). A process crash
    /// loses nothing acknowledged; power loss can lose any unsynced tail.
    Never,
}

/// Largest allowed `max_file_bytes` (offsets inside a file are kept in 32 bits in memory).
pub const MAX_FILE_BYTES_LIMIT: u64 = 2 << 30;
/// Smallest allowed `max_file_bytes`.
pub const MIN_FILE_BYTES: u64 = 4096;

/// Options for [`crate::Db::open`], built with consuming setters from [`Options::default`].
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) sync: SyncPolicy,
    pub(crate) max_file_bytes: u64,
    pub(crate) max_key_bytes: usize,
    pub(crate) max_value_bytes: usize,
    pub(crate) read_threads: Option<usize>,
    pub(crate) recovery_threads: usize,
    pub(crate) io_backend: IoBackend,
    pub(crate) skip_damaged_records: bool,
    pub(crate) preallocate_bytes: u64,
    pub(crate) write_queue_depth: usize,
    pub(crate) fault_injector: Option<Arc<FaultInjector>>,
    pub(crate) auto_merge: bool,
    pub(crate) merge_trigger_ratio: f64,
    pub(crate) merge_trigger_bytes: u64,
    pub(crate) merge_file_ratio: f64,
    pub(crate) merge_check_interval_ms: u64,
    pub(crate) merge_bytes_per_sec: u64,
    pub(crate) inline_reads: bool,
    pub(crate) io_mode: IoMode,
    pub(crate) inline_writes: bool,
    /// `None`: the mode's default (see [`Options::value_cache_bytes`]).
    pub(crate) value_cache_bytes: Option<u64>,
    pub(crate) hint_spill_bytes: usize,
    pub(crate) keydir_snapshot: bool,
    pub(crate) caller_submits_reads: bool,
    pub(crate) reap_on_tokio: bool,
    pub(crate) values_apart: bool,
    pub(crate) warm_value_cache: bool,
    pub(crate) group_flush: GroupFlush,
}

impl Default for Options {
    /// `sync(SyncPolicy::Always)`, `max_file_bytes(256 MiB)`, `max_key_bytes(64 KiB)`,
    /// `max_value_bytes(64 MiB)`, `read_threads` 1 (2 under `IoMode::Direct`), `recovery_threads(0)` (one per CPU, at most 4),
    /// `io_backend(IoBackend::Auto)`,
    /// `skip_damaged_records(false)`, `preallocate_bytes(64 MiB)`, `write_queue_depth(4096)`,
    /// `auto_merge(true)`, `merge_trigger_ratio(0.5)`,
    /// `merge_trigger_bytes(1 GiB)`, `merge_file_ratio(0.4)`, `merge_check_interval_ms(10_000)`,
    /// `merge_bytes_per_sec(64 MiB)`, `inline_reads(true)`, `io_mode(IoMode::Buffered)`, `inline_writes(true)`, `value_cache_bytes` 0 (64 MiB under `IoMode::Direct`),
    /// `hint_spill_bytes(1 MiB)`, `keydir_snapshot(true)`, `values_apart(true)`,
    /// `warm_value_cache(true)`, `group_flush(GroupFlush::Auto)`.
    fn default() -> Self {
        Options {
            sync: SyncPolicy::Always,
            max_file_bytes: 256 << 20,
            max_key_bytes: 64 << 10,
            max_value_bytes: 64 << 20,
            read_threads: None,
            caller_submits_reads: true,
            reap_on_tokio: false,
            values_apart: true,
            warm_value_cache: true,
            group_flush: GroupFlush::Auto,
            recovery_threads: 0,
            io_backend: IoBackend::Auto,
            skip_damaged_records: false,
            preallocate_bytes: 64 << 20,
            write_queue_depth: 4096,
            fault_injector: None,
            auto_merge: true,
            merge_trigger_ratio: 0.5,
            merge_trigger_bytes: 1 << 30,
            merge_file_ratio: 0.4,
            merge_check_interval_ms: 10_000,
            merge_bytes_per_sec: 64 << 20,
            inline_reads: true,
            io_mode: IoMode::Buffered,
            inline_writes: true,
            value_cache_bytes: None,
            hint_spill_bytes: 1 << 20,
            keydir_snapshot: true,
        }
    }
}

impl Options {
    /// Threads recovery uses (`recovery_threads`, 0 meaning one per CPU, at most 4).
    pub(crate) fn recovery_workers(&self) -> usize {
        match self.recovery_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .clamp(1, 4),
            n => n,
        }
    }

    /// Durability policy (default [`SyncPolicy::Always`]).
    pub fn sync(mut self, policy: SyncPolicy) -> Self {
        self.sync = policy;
        self
    }

    /// Size at which the active datafile is sealed and a new one started (default 256 MiB,
    /// allowed 4 KiB ..= 2 GiB). A single record larger than this gets a file of its own.
    pub fn max_file_bytes(mut self, bytes: u64) -> Self {
        self.max_file_bytes = bytes;
        self
    }

    /// Longest accepted key (default 64 KiB, at most 1 MiB).
    pub fn max_key_bytes(mut self, bytes: usize) -> Self {
        self.max_key_bytes = bytes;
        self
    }

    /// Longest accepted value (default 64 MiB, at most 1 GiB).
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// Number of io threads serving value reads (at most 64). Default: 1 with
    /// [`IoMode::Buffered`], where most reads are served from the page cache on the caller's
    /// thread; 2 with [`IoMode::Direct`], where every read of a sealed file goes to them
    /// (measured on 2 CPUs: cold 4 KiB gets with 32 in flight ran 49k/s with two against 37k/s
    /// with one, medians of 3).
    pub fn read_threads(mut self, n: usize) -> Self {
        self.read_threads = Some(n);
        self
    }

    /// On io_uring, whether a read that neither the value cache nor (in
    /// [`IoMode::Buffered`]) an attempt on the caller's thread could serve is submitted by the
    /// calling thread itself to a ring shared by all callers (`true`, the default), or handed
    /// to a read thread that submits it to its own ring (`false`). Submitting on the caller's
    /// thread saves a wake-up of the read thread per read; neither way does the caller's
    /// thread wait on the disk (io_uring issues the read and returns; the reaper, see
    /// [`Options::reap_on_tokio`], wakes the caller when it completes). Reads of files the
    /// file system will not open `O_DIRECT` (under [`IoMode::Direct`]), and every read on the
    /// `pread` backend, go to the read threads either way. (Under the direct-IO writer the
    /// shared ring is set up either way: callers submit their group writes to it.)
    pub fn caller_submits_reads(mut self, yes: bool) -> Self {
        self.caller_submits_reads = yes;
        self
    }

    /// Under the direct-IO writer ([`IoMode::Direct`] with [`SyncPolicy::Always`]): whether
    /// values whose size is close to a whole number of 4 KiB blocks (at most an eighth of
    /// padding: 3641 to 4096 bytes, 7282 to 8192, ...) are kept apart from their record, each
    /// from a block boundary of the datafile's value file (`NNNNNNNNNN.vals`), with their CRC
    /// in the record and in the keydir (`true`, the default), or kept in their record like
    /// every other value (`false`). A value kept apart is read with one aligned read of its
    /// own blocks (a 4096-byte value: one 4 KiB read, where its record would span two
    /// blocks) and checked against the CRC the keydir holds; a group commit then writes two
    /// files, in flight together. Measured on 2 CPUs (DESIGN §3): cold 4 KiB gets +12 % with
    /// one in flight, +13 % at 32, +23 % at 128; 8 or more durable writers within noise.
    /// A lone durable writer (one put at a time, for its last 16 syncs: it leads its own
    /// group writes, see [`IoMode::Direct`]) keeps its values in their records while it is
    /// alone, so that each of its groups is one synced write, not two (4 KiB puts, one
    /// writer: +22 to +63 %, DESIGN §5); a cold read of such a value reads two blocks until a
    /// merge moves it apart. Stores written either way open either way (format version 2;
    /// version 1 stores are read as they are). A merge keeps values apart in its outputs'
    /// value files under the same rule.
    pub fn values_apart(mut self, yes: bool) -> Self {
        self.values_apart = yes;
        self
    }

    /// With [`Options::caller_submits_reads`]: whether the completions of the shared ring are
    /// taken by a task on the caller's tokio runtime (`true`) rather than by the engine's
    /// reaper thread (`false`, the default). The first read through the ring made from a
    /// multi-thread tokio runtime starts the task; the ring signals it through an eventfd that the
    /// runtime's own IO driver watches, so a read's completion wakes one runtime worker, which
    /// wakes the caller's task on its own queue, instead of waking the reaper thread, which
    /// then wakes a worker (measured on 2 CPUs, cold 4 KiB direct gets: 11.4k against 7.8k/s
    /// with one in flight, +13 % with 8, +6 % with 32; DESIGN §3). Off by default because
    /// of the requirement below, which tokio gives no way to check beforehand.
    ///
    /// The runtime must have IO enabled (`enable_io` / `enable_all`, as `Runtime::new` and
    /// `#[tokio::main]` do); tokio panics where it has not, and that panic is caught: its
    /// message is printed (unless a panic hook says otherwise) and the reaper thread goes on
    /// reaping. Reads from other runtimes or executors go through the same ring and are woken
    /// by the same task; the reaper thread takes over when that runtime shuts down, and also
    /// reaps completions left waiting while the runtime's workers are all busy or blocked
    /// (it looks every 5 ms).
    pub fn reap_on_tokio(mut self, yes: bool) -> Self {
        self.reap_on_tokio = yes;
        self
    }

    /// The number of read threads: as set, or the io mode's default.
    pub(crate) fn read_thread_count(&self) -> usize {
        self.read_threads.unwrap_or(match self.io_mode {
            IoMode::Direct => 2,
            IoMode::Buffered => 1,
        })
    }

    /// Threads that rebuild the keydir at open (default 0: one per CPU, at most 4; at most 64).
    /// Datafiles load side by side; when there are fewer files than threads, a large hint file
    /// (over 1 MiB per thread) is split between them.
    pub fn recovery_threads(mut self, n: usize) -> Self {
        self.recovery_threads = n;
        self
    }

    /// Whether [`crate::Db::close`] saves the whole keydir to a snapshot file (`KEYDIR`) that
    /// the next open loads instead of the hint files (default `true`). The snapshot is used
    /// once, and only if no datafile changed since it was written; otherwise open falls back
    /// to the hint files. With `false`, close writes none and open deletes any it finds.
    pub fn keydir_snapshot(mut self, on: bool) -> Self {
        self.keydir_snapshot = on;
        self
    }

    /// IO backend (default [`IoBackend::Auto`]: io_uring, or `pread`/`pwrite` when the kernel or
    /// a seccomp profile refuses io_uring; `Db::stats` reports which one runs).
    pub fn io_backend(mut self, backend: IoBackend) -> Self {
        self.io_backend = backend;
        self
    }

    /// On open, skip damaged records inside sealed datafiles (reporting the bytes skipped in
    /// `Stats::recovery`) instead of failing with [`Error::Corrupt`] (default `false`).
    pub fn skip_damaged_records(mut self, skip: bool) -> Self {
        self.skip_damaged_records = skip;
        self
    }

    /// Space reserved ahead of the active datafile's end with `fallocate`, so that a synced
    /// append does not also have to commit a file-size change (default 64 MiB; 0 disables).
    /// Trimmed when the file is sealed.
    pub fn preallocate_bytes(mut self, bytes: u64) -> Self {
        self.preallocate_bytes = bytes;
        self
    }

    /// Writes that may wait for the writer before callers are held back (default 4096).
    pub fn write_queue_depth(mut self, n: usize) -> Self {
        self.write_queue_depth = n;
        self
    }

    /// Routes the engine's IO through a fault injector (for crash-safety tests).
    pub fn fault_injector(mut self, injector: Arc<FaultInjector>) -> Self {
        self.fault_injector = Some(injector);
        self
    }

    /// Whether a background task merges fragmented sealed files on its own (default `true`).
    /// [`crate::Db::merge`] works either way.
    pub fn auto_merge(mut self, on: bool) -> Self {
        self.auto_merge = on;
        self
    }

    /// Automatic merging starts when dead bytes reach this share of the sealed files' bytes
    /// (default 0.5) ...
    pub fn merge_trigger_ratio(mut self, ratio: f64) -> Self {
        self.merge_trigger_ratio = ratio;
        self
    }

    /// ... or this many dead bytes (default 1 GiB).
    pub fn merge_trigger_bytes(mut self, bytes: u64) -> Self {
        self.merge_trigger_bytes = bytes;
        self
    }

    /// An automatic merge takes the sealed files whose own dead share is at least this
    /// (default 0.4), plus small files (under a quarter of `max_file_bytes`).
    pub fn merge_file_ratio(mut self, ratio: f64) -> Self {
        self.merge_file_ratio = ratio;
        self
    }

    /// How often the automatic merge checks the store's fragmentation (default 10 000 ms).
    pub fn merge_check_interval_ms(mut self, ms: u64) -> Self {
        self.merge_check_interval_ms = ms;
        self
    }

    /// Cap on a merge's IO (bytes read plus written per second), so that foreground reads and
    /// writes keep their latency (default 64 MiB/s; 0 = unlimited).
    pub fn merge_bytes_per_sec(mut self, bytes: u64) -> Self {
        self.merge_bytes_per_sec = bytes;
        self
    }

    /// Whether a `get` first tries a non-blocking read (`preadv2(RWF_NOWAIT)`) on the caller's
    /// thread, served from the page cache without a hop to an io thread (default `true`). Reads
    /// that would block still go to an io thread; `false` sends every read there.
    pub fn inline_reads(mut self, on: bool) -> Self {
        self.inline_reads = on;
        self
    }

    /// How datafiles are read (default [`IoMode::Buffered`]); see [`IoMode::Direct`].
    pub fn io_mode(mut self, mode: IoMode) -> Self {
        self.io_mode = mode;
        self
    }

    /// Whether a write is appended (`pwrite` under the append lock) on the caller's thread
    /// (default `true`), rather than handed to the writer thread. Inline appends cost about a
    /// microsecond, a hop to the writer thread tens of microseconds. Writes that encode to more
    /// than 1 MiB, or that find the active file full, always go to the writer thread; so do all
    /// when this is `false`. Syncs (`SyncPolicy::Always` groups, intervals) run on the writer
    /// thread either way.
    pub fn inline_writes(mut self, on: bool) -> Self {
        self.inline_writes = on;
        self
    }

    /// Size of an in-process cache of recently read values, in bytes. A hit returns the value
    /// without a system call; each cached value is charged its length plus 112 bytes. The cache
    /// needs no invalidation (records never change in place) and uses an S3-FIFO policy, so a
    /// scan over cold keys does not evict the hot ones.
    ///
    /// Default: 0 (none: values are left to the OS page cache, as in a classic Bitcask) with
    /// [`IoMode::Buffered`]; [`DIRECT_VALUE_CACHE_BYTES`] (64 MiB) with [`IoMode::Direct`],
    /// whose reads bypass the page cache, and where the cache is also filled by writes. Set 0
    /// to have none in either mode.
    ///
    /// Under [`IoMode::Direct`], while every live record of the store would fit the cache
    /// (checked every 1024 misses: live bytes plus 112 per key), a miss that reads a record
    /// from disk also caches the live values stored after it in the rest of its 4 KiB block,
    /// which that read brought in anyway (`Stats::values_read_ahead`): after a restart the
    /// cache warms a block at a time, as the page cache would, with no more read from the
    /// device than before. A cache smaller than the store caches only values that were asked
    /// for.
    ///
    /// After an open the cache is also warmed in the background: see
    /// [`Options::warm_value_cache`].
    pub fn value_cache_bytes(mut self, bytes: u64) -> Self {
        self.value_cache_bytes = Some(bytes);
        self
    }

    /// Whether the value cache is filled in the background right after [`crate::Db::open`],
    /// when every live record of the store fits it (live bytes plus 112 per key, the check
    /// [`Options::value_cache_bytes`] describes). The merge thread then reads the sealed
    /// datafiles (and their value files) sequentially, newest first, in 1 MiB reads (`O_DIRECT`
    /// under [`IoMode::Direct`]), and caches each value the keydir still points at, after
    /// checking its CRC. Gets are served meanwhile as usual; a value not cached yet is read as
    /// before. The warm-up stops early when a merge is asked for, the store closes, or a file
    /// cannot be read (a damaged one is skipped and left to the reads that need it);
    /// `Stats::values_warmed` counts what it cached. Automatic merges and expiry sweeps wait
    /// until it ends.
    ///
    /// Without it, a restarted store in [`IoMode::Direct`] serves every first get of a key
    /// with a device read. Has no effect without a value cache, on a store that does not fit
    /// it, or on a read-only handle. Default: true.
    pub fn warm_value_cache(mut self, yes: bool) -> Self {
        self.warm_value_cache = yes;
        self
    }

    /// The value cache's size in bytes: as set, or the io mode's default.
    pub(crate) fn value_cache_budget(&self) -> u64 {
        self.value_cache_bytes.unwrap_or(match self.io_mode {
            IoMode::Direct => DIRECT_VALUE_CACHE_BYTES,
            IoMode::Buffered => 0,
        })
    }

    /// Memory bound of the active datafile's hint records: past it they are appended to the
    /// hint file's temporary name, so a large active file of small records does not hold ~53
    /// bytes per record in memory until it is sealed (default 1 MiB, at least 1).
    pub fn hint_spill_bytes(mut self, bytes: usize) -> Self {
        self.hint_spill_bytes = bytes;
        self
    }

    /// Whether datafiles are written by the direct-IO writer (see [`IoMode::Direct`]).
    pub(crate) fn direct_writes(&self) -> bool {
        self.io_mode == IoMode::Direct && self.sync == SyncPolicy::Always
    }

    /// Checks every option against its allowed range.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidOptions(m));
        if !(MIN_FILE_BYTES..=MAX_FILE_BYTES_LIMIT).contains(&self.max_file_bytes) {
            return bad(format!(
                "max_file_bytes {} outside {MIN_FILE_BYTES}..={MAX_FILE_BYTES_LIMIT}",
                self.max_file_bytes
            ));
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > KEY_LEN_LIMIT as usize {
            return bad(format!(
                "max_key_bytes {} outside 1..={KEY_LEN_LIMIT}",
                self.max_key_bytes
            ));
        }
        if self.max_value_bytes > VALUE_LEN_LIMIT as usize {
            return bad(format!(
                "max_value_bytes {} over {VALUE_LEN_LIMIT}",
                self.max_value_bytes
            ));
        }
        let readers = self.read_thread_count();
        if readers == 0 || readers > 64 {
            return bad(format!("read_threads {readers} outside 1..=64"));
        }
        if self.recovery_threads > 64 {
            return bad(format!(
                "recovery_threads {} outside 0..=64",
                self.recovery_threads
            ));
        }
        if self.write_queue_depth == 0 {
            return bad("write_queue_depth must be at least 1".into());
        }
        for (name, r) in [
            ("merge_trigger_ratio", self.merge_trigger_ratio),
            ("merge_file_ratio", self.merge_file_ratio),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return bad(format!("{name} {r} outside 0.0..=1.0"));
            }
        }
        if self.hint_spill_bytes == 0 {
            return bad("hint_spill_bytes must be positive".into());
        }
        if self.merge_check_interval_ms == 0 {
            return bad("merge_check_interval_ms must be positive".into());
        }
        if let SyncPolicy::IntervalMs(0) = self.sync {
            return bad("SyncPolicy::IntervalMs needs a positive interval".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let o = Options::default();
        o.validate().expect("defaults validate");
        assert_eq!(o.sync, SyncPolicy::Always);
        assert_eq!(o.max_file_bytes, 256 << 20);
        assert_eq!(o.max_key_bytes, 64 << 10);
        assert_eq!(o.max_value_bytes, 64 << 20);
        assert_eq!(o.read_thread_count(), 1);
        assert_eq!(o.clone().io_mode(IoMode::Direct).read_thread_count(), 2);
        assert_eq!(
            o.clone()
                .io_mode(IoMode::Direct)
                .read_threads(1)
                .read_thread_count(),
            1
        );
        assert_eq!(o.recovery_threads, 0);
        assert_eq!(o.io_backend, IoBackend::Auto);
        assert!(!o.skip_damaged_records);
        assert_eq!(o.preallocate_bytes, 64 << 20);
        assert_eq!(o.write_queue_depth, 4096);
        assert!(o.auto_merge);
        assert_eq!(o.merge_trigger_ratio, 0.5);
        assert_eq!(o.merge_trigger_bytes, 1 << 30);
        assert_eq!(o.merge_file_ratio, 0.4);
        assert_eq!(o.merge_check_interval_ms, 10_000);
        assert_eq!(o.merge_bytes_per_sec, 64 << 20);
        assert!(o.inline_reads);
        assert_eq!(o.hint_spill_bytes, 1 << 20);
        assert!(o.keydir_snapshot);
    }

    #[test]
    fn out_of_range_options_are_rejected() {
        for o in [
            Options::default().max_file_bytes(10),
            Options::default().max_file_bytes(MAX_FILE_BYTES_LIMIT + 1),
            Options::default().max_key_bytes(0),
            Options::default().max_key_bytes(KEY_LEN_LIMIT as usize + 1),
            Options::default().max_value_bytes(VALUE_LEN_LIMIT as usize + 1),
            Options::default().read_threads(0),
            Options::default().recovery_threads(65),
            Options::default().write_queue_depth(0),
            Options::default().sync(SyncPolicy::IntervalMs(0)),
            Options::default().merge_trigger_ratio(1.5),
            Options::default().merge_file_ratio(-0.1),
            Options::default().merge_check_interval_ms(0),
            Options::default().hint_spill_bytes(0),
        ] {
            assert!(
                matches!(o.validate(), Err(Error::InvalidOptions(_))),
                "{o:?}"
            );
        }
    }
}
