//! Device-level workloads of ringcask, to set beside `benches/fio_baseline.sh` (fio on the same
//! disk) and the write+sync floors measured here:
//!
//! ```text
//! cargo run --release -p ringcask-bench --bin io_bench -- cold [--gib 2] [--conc 1,8,32,128]
//!     [--secs 4] [--dir DIR (kept: a later run reuses the store)] [--inline true|false]
//!     [--warm true|false]
//!     [--readers N (read threads)] [--io-mode buffered|direct] [--cache BYTES]
//!     [--ring true|false (direct reads submitted by the caller to the shared ring)]
//!     [--reaper thread|tokio (who reaps that ring: `Options::reap_on_tokio`)]
//! cargo run --release -p ringcask-bench --bin io_bench -- durable [--conc 1,8,32,128]
//!     [--value 4096] [--secs 3] [--io-mode buffered|direct] [--cache BYTES]
//!     [--backend uring|pread]
//!
//! `--cache` sets `Options::value_cache_bytes` (default: the io mode's, 64 MiB when direct);
//! the cache's warm-up after open (`Options::warm_value_cache`) is off, so that gets are cold.
//! ```
//!
//! `cold`: a store of `--gib` GiB of 4 KiB values is built (or reused), then for each
//! concurrency C its datafiles are evicted from the page cache (`POSIX_FADV_DONTNEED`, no root
//! needed) and C tasks on a two-worker tokio runtime `get` random keys, each key at most once
//! per run, for `--secs` seconds or until an eighth of the keys were read (past that, pages that
//! readahead brought in would serve a growing share). Prints ops/s, p50 and p99 per C, how the
//! reads were served (inline from the page cache or through an io thread), and what the block
//! device holding the store saw over the run (`/proc/diskstats`: reads/s, KiB per read, device
//! time per read, average requests queued): gets in flight beyond the device's queue are
//! waiting in the engine, not on the disk.
//!
//! `--warm true` reads the datafiles into the page cache before each run instead: with
//! `--inline false` (buffered) every get is then the round trip to a read thread and a
//! page-cache read, against `--inline true` where the caller's thread reads the page itself —
//! the difference is what the hop to the read thread costs.
//!
//! `durable`: C tasks put `--value`-byte values under `SyncPolicy::Always` for `--secs`
//! seconds into a fresh store; beside each C, two floors on the same disk in the same run:
//! C `pwrite`s then one `fdatasync` into a `fallocate`d file ("alloc floor"), and the same
//! over blocks already written and synced ("overwrite floor").

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringcask::{Db, GroupFlush, IoMode, Options, SyncPolicy};

const VALUE: usize = 4096;

struct Args {
    mode: String,
    gib: f64,
    conc: Vec<usize>,
    secs: f64,
    dir: Option<PathBuf>,
    value: usize,
    /// `Options::inline_reads`.
    inline: bool,
    /// `Options::read_threads`, when given.
    readers: Option<usize>,
    /// `Options::caller_submits_reads`.
    ring: bool,
    /// `Options::reap_on_tokio`.
    tokio_reaper: bool,
    /// `Options::io_mode(IoMode::Direct)`.
    direct: bool,
    /// `Options::value_cache_bytes`, when given (else the io mode's default).
    cache: Option<u64>,
    /// `Options::io_backend(IoBackend::Pread)`: the io threads make plain system calls.
    pread: bool,
    /// `cold --warm true`: the datafiles are read into the page cache before each run instead
    /// of evicted from it.
    warm: bool,
    /// `Options::values_apart` (direct mode: how `cold` builds its store).
    apart: bool,
    /// `Options::group_flush`.
    flush: GroupFlush,
}

fn parse() -> Args {
    let mut it = std::env::args().skip(1);
    let mode = it.next().unwrap_or_else(|| usage());
    let mut a = Args {
        mode,
        gib: 2.0,
        conc: vec![1, 8, 32, 128],
        secs: 4.0,
        dir: None,
        value: VALUE,
        inline: true,
        readers: None,
        ring: true,
        tokio_reaper: false,
        direct: false,
        cache: None,
        pread: false,
        warm: false,
        apart: true,
        flush: GroupFlush::Auto,
    };
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--gib" => a.gib = v.parse().unwrap_or_else(|_| usage()),
            "--secs" => a.secs = v.parse().unwrap_or_else(|_| usage()),
            "--value" => a.value = v.parse().unwrap_or_else(|_| usage()),
            "--io-mode" => a.direct = v == "direct",
            "--backend" => a.pread = v == "pread",
            "--inline" => a.inline = v.parse().unwrap_or_else(|_| usage()),
            "--warm" => a.warm = v.parse().unwrap_or_else(|_| usage()),
            "--readers" => a.readers = Some(v.parse().unwrap_or_else(|_| usage())),
            "--ring" => a.ring = v.parse().unwrap_or_else(|_| usage()),
            "--reaper" => a.tokio_reaper = v == "tokio",
            "--apart" => a.apart = v.parse().unwrap_or_else(|_| usage()),
            "--group-flush" => {
                a.flush = match v.as_str() {
                    "auto" => GroupFlush::Auto,
                    "each" => GroupFlush::EachWrite,
                    "once" => GroupFlush::Once,
                    _ => usage(),
                }
            }
            "--dir" => a.dir = Some(PathBuf::from(v)),
            "--cache" => a.cache = Some(v.parse().unwrap_or_else(|_| usage())),
            "--conc" => {
                a.conc = v
                    .split(',')
                    .map(|s| s.parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            _ => usage(),
        }
    }
    a
}

impl Args {
    /// `opts` with the io mode and value cache asked for. The cache's warm-up after open is
    /// off: the gets are to be cold (it would read a store that fits the cache whole first).
    fn mode_options(&self, mut opts: Options) -> Options {
        if self.direct {
            opts = opts.io_mode(IoMode::Direct);
        }
        opts = opts
            .warm_value_cache(false)
            .caller_submits_reads(self.ring)
            .reap_on_tokio(self.tokio_reaper)
            .values_apart(self.apart)
            .group_flush(self.flush);
        if let Some(c) = self.cache {
            opts = opts.value_cache_bytes(c);
        }
        if self.pread {
            opts = opts.io_backend(ringcask::IoBackend::Pread);
        }
        opts
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: io_bench cold [--gib G] [--conc 1,8,32,128] [--secs S] [--dir DIR]\n                     \
         [--inline true|false] [--warm true|false] [--readers N] [--io-mode buffered|direct]\n                     \
         [--cache BYTES] [--ring true|false] [--reaper thread|tokio] [--apart true|false]\n       \
         io_bench durable [--conc 1,8,32,128] [--value BYTES] [--secs S] [--io-mode M] [--cache BYTES] [--backend uring|pread]\n                     \
         [--apart true|false] [--group-flush auto|each|once]"
    );
    std::process::exit(2)
}

fn key(i: u64) -> Vec<u8> {
    format!("key{i:013}").into_bytes()
}

/// Latencies in µs of one run, all of them (runs here are short).
#[derive(Default)]
struct Lat(Vec<u32>);

impl Lat {
    fn record(&mut self, d: Duration) {
        self.0
            .push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }
    fn quantile(&mut self, q: f64) -> u32 {
        if self.0.is_empty() {
            return 0;
        }
        self.0.sort_unstable();
        self.0[((self.0.len() - 1) as f64 * q) as usize]
    }
}

/// Differs from run to run (the clock), for the key order of `cold`.
fn run_salt() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `op(i)` for i = 0, 1, 2, … from `c` tasks at once, each starting its next op when the
/// last one ended, for `secs` seconds or until `limit` ops; the latencies and the seconds taken.
fn closed_loop<F, Fut>(
    rt: &tokio::runtime::Runtime,
    c: usize,
    secs: f64,
    limit: u64,
    op: F,
) -> (Lat, f64)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Lat::default()));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..c)
            .map(|_| {
                let (next, lat, op) = (next.clone(), lat.clone(), op.clone());
                tokio::spawn(async move {
                    let mut mine = Lat::default();
                    while Instant::now() < deadline {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= limit {
                            break;
                        }
                        let s = Instant::now();
                        op(i).await;
                        mine.record(s.elapsed());
                    }
                    lat.lock().expect("lat").0.extend(mine.0);
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let lat = std::mem::take(&mut *lat.lock().expect("lat"));
    (lat, secs)
}

/// Whether `p` is a datafile or a value file.
fn holds_values(p: &Path) -> bool {
    p.extension().is_some_and(|x| x == "data" || x == "vals")
}

/// Drops every datafile (and value file) of `dir` from the page cache.
fn evict(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if holds_values(&p) {
            let f = std::fs::File::open(&p).expect("open datafile");
            f.sync_all().expect("sync");
            rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
        }
    }
}

/// Reads every datafile (and value file) in `dir` once, so that the page cache holds them.
fn warm(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if holds_values(&p) {
            let mut f = std::fs::File::open(&p).expect("open datafile");
            std::io::copy(&mut f, &mut std::io::sink()).expect("read datafile");
        }
    }
}

fn cold(a: &Args) {
    let tmp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().expect("tempdir");
            tmp.path().to_path_buf()
        }
    };
    let n = (a.gib * (1u64 << 30) as f64 / VALUE as f64) as u64;
    let rt = runtime();
    // Direct mode builds its store through the direct-IO writer (durable puts, which keep
    // 4 KiB values apart unless `--apart false`); buffered mode with plain appends.
    let sync = if a.direct {
        SyncPolicy::Always
    } else {
        SyncPolicy::Never
    };
    let mut opts = Options::default().sync(sync).inline_reads(a.inline);
    opts = a.mode_options(opts);
    if let Some(r) = a.readers {
        opts = opts.read_threads(r);
    }
    let db = rt.block_on(Db::open(&dir, opts)).expect("open");
    if db.stats().keys as u64 != n {
        println!(
            "building a store of {n} keys x {VALUE} B in {}",
            dir.display()
        );
        let started = Instant::now();
        let v = bytes::Bytes::from(vec![0xA5u8; VALUE]);
        rt.block_on(async {
            // 64 writers: durable puts are group-committed.
            let next = Arc::new(AtomicU64::new(0));
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let (db, v, next) = (db.clone(), v.clone(), next.clone());
                    tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                break;
                            }
                            db.put(key(i), v.clone()).await.expect("put");
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("writer");
            }
            db.sync().await.expect("sync");
        });
        println!("built in {:.1} s", started.elapsed().as_secs_f64());
    }
    println!(
        "{} random gets of {VALUE} B values, {n} keys, {} s per run",
        if a.warm { "warm (page-cached)" } else { "cold" },
        a.secs
    );
    println!(
        "| C | ops/s | p50 µs | p99 µs | inline | io thread | ring | O_DIRECT \
         | dev reads/s | KiB/read | dev µs/read | dev queue |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut round = 0u64;
    for &c in &a.conc {
        if a.warm {
            warm(&dir);
        } else {
            evict(&dir);
        }
        let before = db.stats();
        round += 1;
        // A fresh order every process: a run that repeated the last run's keys would find their
        // blocks in the host's cache (a virtual disk's backing file), not on the device.
        let seed = (round * 0x9E37_79B9) ^ run_salt();
        let db2 = db.clone();
        let disk_before = disk(&dir);
        let (mut lat, secs) = closed_loop(&rt, c, a.secs, n / 8, move |i| {
            let db = db2.clone();
            async move {
                // A permutation of 0..n (the multiplier is odd, n < 2^40).
                let k = (i.wrapping_mul(2_654_435_761) ^ seed) % n;
                let got = db.get(key(k)).await.expect("get");
                assert_eq!(got.map(|v| v.len()), Some(VALUE));
            }
        });
        let after = db.stats();
        let ops = lat.0.len();
        let device = match (disk_before, disk(&dir)) {
            (Some(b), Some(e)) => e.since(&b, secs),
            _ => "- | - | - | -".to_string(),
        };
        println!(
            "| {c} | {:.0} | {} | {} | {} | {} | {} | {} | {device} |",
            ops as f64 / secs,
            lat.quantile(0.5),
            lat.quantile(0.99),
            after.reads_inline - before.reads_inline,
            after.reads_io_thread - before.reads_io_thread,
            after.reads_ring - before.reads_ring,
            after.reads_direct - before.reads_direct,
        );
    }
    rt.block_on(db.close()).expect("close");
}

/// Read counters of the block device holding a directory (`/proc/diskstats`).
#[derive(Clone, Copy)]
struct Disk {
    reads: u64,
    sectors: u64,
    read_ms: u64,
    /// Weighted time in queue (ms): its growth over a run divided by the run's length is the
    /// average number of requests at the device.
    queue_ms: u64,
}

impl Disk {
    /// "reads/s | KiB per read | device µs per read | average queue" over `secs` since `b`.
    fn since(&self, b: &Disk, secs: f64) -> String {
        let reads = self.reads.saturating_sub(b.reads).max(1) as f64;
        format!(
            "{:.0} | {:.1} | {:.0} | {:.1}",
            reads / secs,
            self.sectors.saturating_sub(b.sectors) as f64 * 512.0 / 1024.0 / reads,
            self.read_ms.saturating_sub(b.read_ms) as f64 * 1000.0 / reads,
            self.queue_ms.saturating_sub(b.queue_ms) as f64 / 1000.0 / secs,
        )
    }
}

/// The counters of the device `dir` lives on; `None` where it has none in `/proc/diskstats`
/// (an overlay or network file system).
fn disk(dir: &Path) -> Option<Disk> {
    let st = rustix::fs::stat(dir).ok()?;
    let (major, minor) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    let text = std::fs::read_to_string("/proc/diskstats").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(u64::MAX))
            .collect();
        let n = |i: usize| f.get(i).copied();
        if n(0)? != u64::from(major) || n(1)? != u64::from(minor) {
            return None;
        }
        Some(Disk {
            reads: n(3)?,
            sectors: n(5)?,
            read_ms: n(6)?,
            queue_ms: n(13)?,
        })
    })
}

/// `c` writes of `value` bytes then one `fdatasync`, repeated for `secs`; writes per second.
/// `overwrite`: into blocks written and synced before; else into `fallocate`d space.
fn floor(dir: &Path, c: usize, value: usize, secs: f64, overwrite: bool) -> f64 {
    use std::os::unix::fs::FileExt;
    let path = dir.join(format!("floor-{c}-{overwrite}"));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("floor file");
    let len = 1u64 << 30;
    if overwrite {
        let chunk = vec![0u8; 1 << 20];
        for i in 0..(len >> 20) {
            f.write_all_at(&chunk, i << 20).expect("write");
        }
        f.sync_all().expect("sync");
    } else {
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, len).expect("fallocate");
        f.sync_all().expect("sync");
    }
    let buf = vec![0x5Au8; value];
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut off = 0u64;
    let mut writes = 0u64;
    while Instant::now() < deadline && off + (c * value) as u64 <= len {
        for _ in 0..c {
            f.write_all_at(&buf, off).expect("write");
            off += value as u64;
        }
        f.sync_data().expect("fdatasync");
        writes += c as u64;
    }
    let rate = writes as f64 / started.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    rate
}

fn durable(a: &Args) {
    let rt = runtime();
    println!("durable puts of {} B values, {} s per run", a.value, a.secs);
    println!("| C | puts/s | p50 µs | p99 µs | p99.9 µs | syncs (one flush) | alloc floor | overwrite floor | vs alloc | vs overwrite |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &c in &a.conc {
        let tmp = tempfile::tempdir().expect("tempdir");
        let opts = a.mode_options(Options::default().sync(SyncPolicy::Always));
        let db = rt.block_on(Db::open(tmp.path(), opts)).expect("open");
        let value = a.value;
        let v = bytes::Bytes::from(vec![0x77u8; value]);
        let db2 = db.clone();
        let (mut lat, secs) = closed_loop(&rt, c, a.secs, u64::MAX, move |i| {
            let (db, v) = (db2.clone(), v.clone());
            async move { db.put(key(i), v).await.expect("put") }
        });
        let (syncs, once) = (db.stats().syncs, db.stats().syncs_one_flush);
        rt.block_on(db.close()).expect("close");
        let rate = lat.0.len() as f64 / secs;
        let alloc = floor(tmp.path(), c, value, a.secs, false);
        let over = floor(tmp.path(), c, value, a.secs, true);
        println!(
            "| {c} | {rate:.0} | {} | {} | {} | {syncs} ({once}) | {alloc:.0} | {over:.0} | {:.2}x | {:.2}x |",
            lat.quantile(0.5),
            lat.quantile(0.99),
            lat.quantile(0.999),
            rate / alloc,
            rate / over,
        );
    }
}

fn main() {
    let a = parse();
    match a.mode.as_str() {
        "cold" => cold(&a),
        "durable" => durable(&a),
        _ => usage(),
    }
}
