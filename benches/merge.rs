//! Merge figures, side by side in one run (`harness = false`):
//! foreground get/put throughput and latency with and without a merge running, merge
//! throughput against the raw sequential write rate of the disk, and space before and after.
//!
//! ```text
//! cargo bench --bench merge                        # 200,000 keys, overwritten 4 times
//! RINGCASK_BENCH_KEYS=1000000 cargo bench --bench merge
//! ```

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use ringcask::{Db, Options, SyncPolicy};

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:012}").into_bytes()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// 4 tasks of mixed gets (3/4) and puts (1/4) for `secs`; (ops/s, p50 µs, p99 µs) of each kind.
async fn foreground(db: &Db, keys: u64, secs: f64) -> ((f64, f64, f64), (f64, f64, f64)) {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let (mut gets, mut puts) = (Vec::new(), Vec::new());
            let mut x = (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            while Instant::now() < stop {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = key(x % keys);
                let started = Instant::now();
                if x % 4 == 0 {
                    db.put(k, vec![3u8; 100]).await.expect("put");
                    puts.push(started.elapsed());
                } else {
                    db.get(&k).await.expect("get");
                    gets.push(started.elapsed());
                }
            }
            (gets, puts)
        }));
    }
    let (mut gets, mut puts) = (Vec::new(), Vec::new());
    for t in tasks {
        let (g, p) = t.await.expect("task");
        gets.extend(g);
        puts.extend(p);
    }
    gets.sort();
    puts.sort();
    let stat = |v: &[Duration]| (v.len() as f64 / secs, pct(v, 0.5), pct(v, 0.99));
    (stat(&gets), stat(&puts))
}

/// Sequential 1 MiB writes of 256 MiB plus one fsync: the disk's raw append rate, in MB/s.
fn raw_sequential_write(dir: &Path) -> f64 {
    let path = dir.join("raw");
    let mut f = std::fs::File::create(&path).expect("create");
    let buf = vec![0x5Au8; 1 << 20];
    let started = Instant::now();
    for _ in 0..256 {
        f.write_all(&buf).expect("write");
    }
    f.sync_all().expect("sync");
    let mbps = 256.0 * 1.048576 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    mbps
}

async fn fill(dir: &Path, keys: u64, rounds: u64) {
    let db = Db::open(dir, opts(0)).await.expect("open");
    for round in 0..rounds {
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = t;
                while i < keys {
                    db.put(key(i), vec![round as u8; 100]).await.expect("put");
                    i += 16;
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    }
    db.close().await.expect("close");
}

fn opts(rate: u64) -> Options {
    Options::default()
        .sync(SyncPolicy::Never)
        .max_file_bytes(32 << 20)
        .auto_merge(false)
        .merge_bytes_per_sec(rate)
}

fn main() {
    let keys: u64 = std::env::var("RINGCASK_BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tmp");
    rt.block_on(async {
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        fill(&a, keys, 4).await;
        fill(&b, keys, 4).await;
        let raw = raw_sequential_write(tmp.path());

        // Foreground load without, then with, a (throttled, default rate) merge running.
        let db = Db::open(&a, opts(64 << 20)).await.expect("open");
        let idle = foreground(&db, keys, 3.0).await;
        let merging = {
            let db2 = db.clone();
            let m = tokio::spawn(async move { db2.merge().await.expect("merge") });
            tokio::time::sleep(Duration::from_millis(50)).await;
            let f = foreground(&db, keys, 3.0).await;
            let r = m.await.expect("merge task");
            (f, r)
        };
        db.close().await.expect("close");

        // Merge throughput, unthrottled, on an identical store.
        let before = dir_bytes(&b);
        let db = Db::open(&b, opts(0)).await.expect("open");
        let r = db.merge().await.expect("merge");
        let after = dir_bytes(&b);
        db.close().await.expect("close");
        let mbps = r.input_bytes as f64 / 1e6 / r.duration.as_secs_f64();

        println!("## ringcask merge figures ({keys} keys of 16 B, values 100 B, overwritten 4 times)\n");
        println!("| foreground, 4 tasks (3 gets : 1 put) | gets/s | get p50 µs | get p99 µs | puts/s | put p50 µs | put p99 µs |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        let row = |name: &str, ((g, g50, g99), (p, p50, p99)): ((f64, f64, f64), (f64, f64, f64))| {
            println!("| {name} | {g:.0} | {g50:.0} | {g99:.0} | {p:.0} | {p50:.0} | {p99:.0} |");
        };
        row("no merge", idle);
        row("merge running (64 MiB/s cap)", merging.0);
        println!(
            "\nmerge under load: {} inputs, {:.1} MB in {:.2} s",
            merging.1.inputs.len(),
            merging.1.input_bytes as f64 / 1e6,
            merging.1.duration.as_secs_f64()
        );
        println!("\n| merge throughput (no cap, idle store) | value |");
        println!("|---|---:|");
        println!("| input read | {mbps:.0} MB/s |");
        println!("| raw sequential write of this disk (1 MiB writes + fsync) | {raw:.0} MB/s |");
        println!("| ratio | {:.2} |", mbps / raw);
        println!("| space before | {:.1} MB |", before as f64 / 1e6);
        println!("| space after | {:.1} MB |", after as f64 / 1e6);
        println!(
            "| live data (keys x record size) | {:.1} MB |",
            keys as f64 * (29.0 + 16.0 + 100.0) / 1e6
        );
        println!(
            "| records copied / dropped | {} / {} |",
            r.records_copied, r.dropped_superseded
        );
    });
}
