//! The workloads, run in one engine process.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engines::{self, Engine};

/// Sizes of one run.
pub struct Params {
    /// Keys in the store.
    pub n: u64,
    /// Value length in bytes.
    pub value_len: usize,
    /// Operations per read / mixed workload.
    pub ops: u64,
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub workload: String,
    pub unit: String,
    pub value: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Outcome {
    pub fn to_line(&self) -> String {
        format!(
            "RESULT\t{}\t{}\t{}\t{}\t{}",
            self.workload, self.unit, self.value, self.p50_us, self.p99_us
        )
    }

    pub fn from_line(line: &str) -> Option<Outcome> {
        let mut it = line.strip_prefix("RESULT\t")?.split('\t');
        Some(Outcome {
            workload: it.next()?.to_string(),
            unit: it.next()?.to_string(),
            value: it.next()?.parse().ok()?,
            p50_us: it.next()?.parse().ok()?,
            p99_us: it.next()?.parse().ok()?,
        })
    }

    fn scalar(workload: &str, unit: &str, value: f64) -> Outcome {
        Outcome {
            workload: workload.into(),
            unit: unit.into(),
            value,
            p50_us: 0.0,
            p99_us: 0.0,
        }
    }
}

/// 16-byte key of index `i`.
pub fn key(i: u64) -> Vec<u8> {
    format!("k{i:015}").into_bytes()
}

/// A key that is never written (same length, other prefix).
fn missing_key(i: u64) -> Vec<u8> {
    format!("m{i:015}").into_bytes()
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// YCSB's scrambled zipfian generator (theta 0.99) over `0..n`.
struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    fn new(n: u64) -> Zipf {
        let theta = 0.99;
        let zeta = |m: u64| (1..=m).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2);
        Zipf {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan),
        }
    }

    fn sample(&self, r: &mut SplitMix) -> u64 {
        let u = r.unit();
        let uz = u * self.zetan;
        let rank = if uz < 1.0 {
            0
        } else if uz < 1.0 + 0.5f64.powf(self.theta) {
            1
        } else {
            ((self.n as f64) * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64
        };
        // Scramble so that hot keys are spread over the key space.
        let mut h = SplitMix(rank.min(self.n - 1));
        h.next() % self.n
    }
}

fn value(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut r = SplitMix(seed);
    for chunk in v.chunks_mut(8) {
        let x = r.next().to_le_bytes();
        chunk.copy_from_slice(&x[..chunk.len()]);
    }
    v
}

/// Runs `per_thread(thread, op_index)` for `ops` operations split over `threads` threads;
/// returns ops/s and the p50 / p99 latency in µs.
fn timed(threads: u64, ops: u64, f: impl Fn(u64, u64) + Send + Sync + 'static) -> (f64, f64, f64) {
    let f = Arc::new(f);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                let mine = ops / threads + u64::from(t < ops % threads);
                let mut lat = Vec::with_capacity(mine as usize);
                for i in 0..mine {
                    let s = Instant::now();
                    f(t, i);
                    lat.push(s.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<Duration> = Vec::with_capacity(ops as usize);
    for h in handles {
        all.extend(h.join().expect("worker"));
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let p = |q: f64| {
        all.get(((all.len().max(1) - 1) as f64 * q) as usize)
            .map(|d| d.as_secs_f64() * 1e6)
            .unwrap_or(0.0)
    };
    (ops as f64 / secs, p(0.5), p(0.99))
}

fn rate(workload: &str, (v, p50, p99): (f64, f64, f64)) -> Outcome {
    Outcome {
        workload: workload.into(),
        unit: "ops/s".into(),
        value: v,
        p50_us: p50,
        p99_us: p99,
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        // Allocated bytes, so that sparse or preallocated space counts as used.
                        Ok(m) => std::os::unix::fs::MetadataExt::blocks(&m) * 512,
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(dir)
}

fn peak_rss_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb * 1024.0)
        .unwrap_or(0.0)
}

/// Closes engine `e` (its last handle) and measures the disk bytes of `data`.
fn close_and_measure(e: Arc<dyn Engine>, label: &str, data: &Path) -> Outcome {
    e.close();
    drop(e);
    Outcome::scalar(label, "MB", dir_bytes(data) as f64 / 1e6)
}

const STRIDE: u64 = 2_654_435_761;

/// Every workload, in order, for engine `name` in `dir`.
pub fn run_all(name: &str, dir: &Path, p: &Params) -> Vec<Outcome> {
    let mut out = Vec::new();
    let n = p.n;
    assert!(n < STRIDE, "n must stay below {STRIDE}");
    let vlen = p.value_len;
    let data = dir.join("main");

    // Random fill (fast mode): every key once, in a shuffled order.
    let e: Arc<dyn Engine> = Arc::from(engines::open(name, &data, false));
    {
        let e = e.clone();
        out.push(rate(
            "fill random",
            timed(1, n, move |_, i| {
                // A permutation of 0..n: i * STRIDE mod n, STRIDE a prime that divides no n
                // used here (n < STRIDE).
                let k = ((u128::from(i) * u128::from(STRIDE)) % u128::from(n)) as u64;
                e.put(&key(k), &value(vlen, k));
            }),
        ));
    }
    // Disk use after a clean close (preallocated space trimmed), and the reopen time.
    out.push(close_and_measure(e, "disk after fill", &data));
    let started = Instant::now();
    let e: Arc<dyn Engine> = Arc::from(engines::open(name, &data, false));
    let reopen_secs = started.elapsed().as_secs_f64();
    if name != "raw" {
        // (The raw floor keeps no index on disk; it cannot reopen.)
        out.push(Outcome::scalar("reopen after fill", "s", reopen_secs));
    } else {
        timed(1, n, {
            let e = e.clone();
            move |_, k| e.put(&key(k), &value(vlen, k))
        });
    }
    for (label, threads) in [("get random, 1 thread", 1), ("get random, 2 threads", 2)] {
        let e = e.clone();
        out.push(rate(
            label,
            timed(threads, p.ops, move |t, i| {
                let mut r = SplitMix(i * 31 + t);
                let k = r.next() % n;
                assert!(e.get(&key(k)).is_some(), "key {k} missing");
            }),
        ));
    }
    {
        let e = e.clone();
        out.push(rate(
            "get missing",
            timed(1, p.ops, move |_, i| {
                assert!(e.get(&missing_key(i)).is_none());
            }),
        ));
    }
    let zipf = Arc::new(Zipf::new(n));
    for (label, read_share, rmw) in [
        ("YCSB A (50% read, 50% update)", 0.5, false),
        ("YCSB B (95% read, 5% update)", 0.95, false),
        ("YCSB C (100% read)", 1.0, false),
        ("YCSB F (read-modify-write)", 0.5, true),
    ] {
        let e = e.clone();
        let zipf = zipf.clone();
        out.push(rate(
            label,
            timed(2, p.ops, move |t, i| {
                let mut r = SplitMix(i.wrapping_mul(7919) + t * 1_000_003 + 17);
                let k = zipf.sample(&mut r);
                if r.unit() < read_share {
                    let got = e.get(&key(k));
                    assert!(got.is_some());
                } else if rmw {
                    let got = e.get(&key(k));
                    assert!(got.is_some());
                    e.put(&key(k), &value(vlen, i));
                } else {
                    e.put(&key(k), &value(vlen, i));
                }
            }),
        ));
    }
    // Overwrite everything once.
    {
        let e = e.clone();
        timed(1, n, move |_, k| e.put(&key(k), &value(vlen, k + 1)));
    }
    out.push(close_and_measure(
        e,
        "disk after overwriting all once",
        &data,
    ));

    // Durable puts, in a fresh store.
    let durable_dir = dir.join("durable");
    let e: Arc<dyn Engine> = Arc::from(engines::open(name, &durable_dir, true));
    for (label, threads, ops) in [
        ("durable put, 1 writer", 1u64, 2_000u64),
        ("durable put, 32 writers", 32, 32 * 200),
    ] {
        let e = e.clone();
        out.push(rate(
            label,
            timed(threads, ops, move |t, i| {
                e.put(&key(t * 1_000_000 + i), &value(vlen, i));
            }),
        ));
    }
    e.close();
    drop(e);

    // Batch fill, in a fresh store: batches of 1000 (op = one key).
    let batch_dir = dir.join("batch");
    let e = engines::open(name, &batch_dir, false);
    let started = Instant::now();
    let mut k = 0u64;
    while k < n {
        let end = (k + 1000).min(n);
        let kvs: Vec<(Vec<u8>, Vec<u8>)> = (k..end).map(|i| (key(i), value(vlen, i))).collect();
        e.put_batch(&kvs);
        k = end;
    }
    out.push(Outcome::scalar(
        "batch fill (1000 per batch)",
        "ops/s",
        n as f64 / started.elapsed().as_secs_f64(),
    ));
    e.close();
    out.push(Outcome::scalar("peak RSS", "MB", peak_rss_bytes() / 1e6));
    out
}
