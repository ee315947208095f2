//! Side-by-side figures of the core engine, measured in one run (`harness = false`):
//! put throughput (1 task and 64 tasks) under each sync policy, hot get throughput, open time
//! for N keys from the keydir snapshot, from hint files and by scanning, and keydir memory per
//! key.
//!
//! ```text
//! cargo bench --bench core                 # N = 1,000,000 keys for open/memory
//! RINGCASK_BENCH_KEYS=200000 cargo bench --bench core
//! ```
//!
//! Each throughput figure is the median of 3 runs. This machine is shared: compare ratios
//! within one run, not absolute numbers across runs.

use std::path::Path;
use std::time::Instant;

use ringcask::{Db, IoBackend, Options, SyncPolicy};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn key(i: u64) -> Vec<u8> {
    // 16-byte keys.
    format!("key-{i:012}").into_bytes()
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

async fn put_rate(dir: &Path, opts: Options, tasks: u64, per_task: u64, value: usize) -> f64 {
    let _ = std::fs::remove_dir_all(dir);
    let db = Db::open(dir, opts).await.expect("open");
    let v = bytes::Bytes::from(vec![7u8; value]);
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let db = db.clone();
        let v = v.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                db.put(key(t * per_task + i), v.clone()).await.expect("put");
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    let rate = (tasks * per_task) as f64 / started.elapsed().as_secs_f64();
    db.close().await.expect("close");
    rate
}

async fn get_rate(db: &Db, keys: u64, tasks: u64, per_task: u64) -> f64 {
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let db = db.clone();
        handles.push(tokio::spawn(async move {
            let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for _ in 0..per_task {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let v = db.get(&key(x % keys)).await.expect("get");
                assert!(v.is_some());
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    (tasks * per_task) as f64 / started.elapsed().as_secs_f64()
}

/// Child mode of the memory figure: print the RSS growth caused by opening the store.
fn memory_probe(dir: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let before = rss_bytes();
        let db = Db::open(dir, Options::default()).await.expect("open");
        let after = rss_bytes();
        println!("{}", after.saturating_sub(before));
        db.close().await.expect("close");
    });
}

fn main() {
    if let Ok(dir) = std::env::var("RINGCASK_BENCH_MEM_DIR") {
        memory_probe(&dir);
        return;
    }
    // `cargo bench` passes `--bench`; ignore arguments.
    let n: u64 = std::env::var("RINGCASK_BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("bench");
    rt.block_on(async {
        println!("## ringcask core figures (values 100 B, keys 16 B, medians of 3)\n");
        println!("| workload | ops/s |");
        println!("|---|---:|");
        for (name, policy, single, many) in [
            ("Always", SyncPolicy::Always, 2_000u64, 300u64),
            (
                "IntervalMs(100)",
                SyncPolicy::IntervalMs(100),
                100_000,
                3_000,
            ),
            ("Never", SyncPolicy::Never, 100_000, 3_000),
        ] {
            let mut one = Vec::new();
            let mut sixty_four = Vec::new();
            for _ in 0..3 {
                let o = Options::default().sync(policy);
                one.push(put_rate(&dir, o.clone(), 1, single, 100).await);
                sixty_four.push(put_rate(&dir, o, 64, many, 100).await);
            }
            println!("| put, 1 task, {name} | {:.0} |", median(one));
            println!("| put, 64 tasks, {name} | {:.0} |", median(sixty_four));
        }
        let mut pread = Vec::new();
        for _ in 0..3 {
            let o = Options::default()
                .sync(SyncPolicy::Never)
                .io_backend(IoBackend::Pread);
            pread.push(put_rate(&dir, o, 1, 100_000, 100).await);
        }
        println!(
            "| put, 1 task, Never, pread backend | {:.0} |",
            median(pread)
        );

        // Fill N keys (Never + one final sync), then measure gets, open and memory.
        let _ = std::fs::remove_dir_all(&dir);
        let db = Db::open(&dir, Options::default().sync(SyncPolicy::Never))
            .await
            .expect("open");
        let v = bytes::Bytes::from(vec![7u8; 100]);
        let mut handles = Vec::new();
        for t in 0..16u64 {
            let db = db.clone();
            let v = v.clone();
            handles.push(tokio::spawn(async move {
                let mut i = t;
                while i < n {
                    db.put(key(i), v.clone()).await.expect("put");
                    i += 16;
                }
            }));
        }
        for h in handles {
            h.await.expect("task");
        }
        let mut g1 = Vec::new();
        let mut g64 = Vec::new();
        for _ in 0..3 {
            g1.push(get_rate(&db, n, 1, 100_000).await);
            g64.push(get_rate(&db, n, 64, 3_000).await);
        }
        println!("| get hot, 1 task | {:.0} |", median(g1));
        println!("| get hot, 64 tasks | {:.0} |", median(g64));
        db.close().await.expect("close");
        let db = Db::open(&dir, Options::default().io_backend(IoBackend::Pread))
            .await
            .expect("open");
        let mut gp = Vec::new();
        for _ in 0..3 {
            gp.push(get_rate(&db, n, 1, 100_000).await);
        }
        println!("| get hot, 1 task, pread backend | {:.0} |", median(gp));
        db.close().await.expect("close");

        // The close above saved a keydir snapshot: time opens from it first (each close saves
        // the next one), then from hint files and by scanning with snapshots off.
        let mut from_snapshot = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let db = Db::open(&dir, Options::default()).await.expect("open");
            from_snapshot.push(started.elapsed().as_secs_f64());
            assert_eq!(db.len() as u64, n);
            assert!(db.stats().recovery.from_snapshot);
            db.close().await.expect("close");
        }
        let no_snapshot = || Options::default().keydir_snapshot(false);
        let mut with_hints = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let db = Db::open(&dir, no_snapshot()).await.expect("open");
            with_hints.push(started.elapsed().as_secs_f64());
            assert_eq!(db.len() as u64, n);
            assert_eq!(db.stats().recovery.files_scanned, 0);
            db.close().await.expect("close");
        }
        let mut scans = Vec::new();
        for _ in 0..3 {
            for e in std::fs::read_dir(&dir).expect("dir") {
                let p = e.expect("entry").path();
                if p.extension().is_some_and(|x| x == "hint") {
                    std::fs::remove_file(p).expect("rm");
                }
            }
            let started = Instant::now();
            let db = Db::open(&dir, no_snapshot()).await.expect("open");
            scans.push(started.elapsed().as_secs_f64());
            assert_eq!(db.len() as u64, n);
            db.close().await.expect("close");
        }
        let (k, h, s) = (median(from_snapshot), median(with_hints), median(scans));
        println!("\n| open {n} keys | ms |");
        println!("|---|---:|");
        println!("| from the keydir snapshot | {:.0} |", k * 1e3);
        println!("| with hint files | {:.0} |", h * 1e3);
        println!("| scanning datafiles | {:.0} |", s * 1e3);
        println!("| ratio scan / snapshot | {:.2}x |", s / k);
        println!("| ratio scan / hints | {:.2}x |", s / h);

        // Memory: in a fresh process (the allocator keeps what earlier phases freed), RSS
        // before and after opening the store (recovery fills the keydir from the hints).
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .env("RINGCASK_BENCH_MEM_DIR", &dir)
            .output()
            .expect("spawn memory probe");
        let text = String::from_utf8_lossy(&out.stdout);
        let delta: u64 = text.trim().parse().unwrap_or(0);
        println!("\n| keydir memory | value |");
        println!("|---|---:|");
        println!(
            "| RSS delta after open, {n} keys of 16 B | {:.1} MiB |",
            delta as f64 / (1 << 20) as f64
        );
        println!(
            "| per key | {:.1} B (goal: 16 + 48 = 64 B) |",
            delta as f64 / n as f64
        );
    });
}
