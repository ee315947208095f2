//! criterion benches of the engine's hot paths, throughput in elements/s and bytes/s:
//! put under each sync policy, get (hot), get (missing key), batch write, open (recovery) from
//! hint files, by a full scan, and from the keydir snapshot a clean close saves.
//!
//! ```text
//! cargo bench --bench hot_paths
//! ```

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::executor::block_on;
use ringcask::{Db, Options, SyncPolicy, WriteBatch};

const VALUE: usize = 100;

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:012}").into_bytes()
}

fn open(dir: &std::path::Path, sync: SyncPolicy) -> Db {
    block_on(Db::open(
        dir,
        Options::default().sync(sync).auto_merge(false),
    ))
    .expect("open")
}

fn put(c: &mut Criterion) {
    let mut g = c.benchmark_group("put");
    g.throughput(Throughput::Elements(1));
    for (name, policy) in [
        ("always", SyncPolicy::Always),
        ("interval_100ms", SyncPolicy::IntervalMs(100)),
        ("never", SyncPolicy::Never),
    ] {
        let tmp = tempfile::tempdir().expect("tmp");
        let db = open(tmp.path(), policy);
        let v = bytes::Bytes::from(vec![7u8; VALUE]);
        let mut i = 0u64;
        g.bench_function(BenchmarkId::new("1 task, 100 B", name), |b| {
            b.iter(|| {
                i += 1;
                block_on(db.put(key(i % 100_000), v.clone())).expect("put");
            })
        });
        block_on(db.close()).expect("close");
    }
    g.finish();
}

fn get(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tmp");
    let db = open(tmp.path(), SyncPolicy::Never);
    let n = 100_000u64;
    let v = bytes::Bytes::from(vec![7u8; VALUE]);
    for i in 0..n {
        block_on(db.put(key(i), v.clone())).expect("put");
    }
    let mut g = c.benchmark_group("get");
    g.throughput(Throughput::Bytes(VALUE as u64));
    let mut x = 1u64;
    g.bench_function("hot, 100 B", |b| {
        b.iter(|| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            let got = block_on(db.get(&key((x >> 33) % n))).expect("get");
            assert!(got.is_some());
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("missing key", |b| {
        b.iter(|| {
            x += 1;
            let got = block_on(db.get(format!("nope-{x:011}").as_bytes())).expect("get");
            assert!(got.is_none());
        })
    });
    g.finish();
    block_on(db.close()).expect("close");
}

fn batch(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tmp");
    let db = open(tmp.path(), SyncPolicy::Never);
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(100));
    let mut base = 0u64;
    g.bench_function("100 puts of 100 B", |b| {
        b.iter(|| {
            let mut wb = WriteBatch::new();
            for i in 0..100 {
                wb = wb.put(key((base + i) % 1_000_000), vec![1u8; VALUE]);
            }
            base += 100;
            block_on(db.write(wb)).expect("batch");
        })
    });
    g.finish();
    block_on(db.close()).expect("close");
}

fn recovery(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tmp");
    let n = 100_000u64;
    {
        let db = open(tmp.path(), SyncPolicy::Never);
        let v = bytes::Bytes::from(vec![7u8; VALUE]);
        for i in 0..n {
            block_on(db.put(key(i), v.clone())).expect("put");
        }
        block_on(db.close()).expect("close");
    }
    let mut g = c.benchmark_group("open");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);
    let opts = |snapshot: bool| {
        Options::default()
            .sync(SyncPolicy::Never)
            .auto_merge(false)
            .keydir_snapshot(snapshot)
    };
    // Time only the open; `prepare` runs before each one, untimed. With `snapshot` the close
    // saves the keydir snapshot that the next open loads; without, open reads hint files.
    let timed_open = |b: &mut criterion::Bencher, snapshot: bool, prepare: &dyn Fn()| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                prepare();
                let started = Instant::now();
                let db = block_on(Db::open(tmp.path(), opts(snapshot))).expect("open");
                total += started.elapsed();
                assert_eq!(db.len() as u64, n);
                assert_eq!(db.stats().recovery.from_snapshot, snapshot);
                block_on(db.close()).expect("close");
            }
            total
        })
    };
    g.bench_function("100k keys, hint files", |b| timed_open(b, false, &|| {}));
    g.bench_function("100k keys, full scan", |b| {
        timed_open(b, false, &|| {
            for e in std::fs::read_dir(tmp.path()).expect("dir").flatten() {
                if e.path().extension().is_some_and(|x| x == "hint") {
                    std::fs::remove_file(e.path()).expect("rm hint");
                }
            }
        })
    });
    g.bench_function("100k keys, keydir snapshot", |b| {
        timed_open(b, true, &|| {
            if !tmp.path().join("KEYDIR").exists() {
                // The first open of this case: one close with snapshots on saves it.
                let db = block_on(Db::open(tmp.path(), opts(true))).expect("open");
                block_on(db.close()).expect("close");
            }
        })
    });
    g.finish();
}

criterion_group!(benches, put, get, batch, recovery);
criterion_main!(benches);
