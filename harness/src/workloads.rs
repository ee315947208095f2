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

/// Latency histogram: 64 linear sub-buckets per power of two of nanoseconds (at most 1/64 ≈ 1.6 %
/// error), a few KiB whatever the op count, so that recording latencies adds nothing to an
/// engine's peak RSS (a `Vec<Duration>` of 1M ops held 16 MB).
struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

const SUB_BITS: u32 = 6;

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: vec![0; (64 << SUB_BITS) as usize],
            total: 0,
        }
    }

    fn bucket(ns: u64) -> usize {
        if ns < (1 << SUB_BITS) {
            return ns as usize;
        }
        let exp = 63 - ns.leading_zeros(); // >= SUB_BITS
        let shift = exp - SUB_BITS;
        let mantissa = (ns >> shift) as usize & ((1 << SUB_BITS) - 1);
        (((shift + 1) as usize) << SUB_BITS) | mantissa
    }

    /// The smallest value that falls in bucket `b` (the inverse of [`Histogram::bucket`]).
    fn low(b: usize) -> u64 {
        let group = b >> SUB_BITS;
        let mantissa = (b & ((1 << SUB_BITS) - 1)) as u64;
        if group == 0 {
            mantissa
        } else {
            ((1 << SUB_BITS) | mantissa) << (group - 1)
        }
    }

    fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::bucket(ns)] += 1;
        self.total += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    /// The `q` quantile in µs (the low edge of its bucket), 0 when empty.
    fn quantile_us(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((self.total - 1) as f64 * q) as u64;
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                return Self::low(b) as f64 / 1e3;
            }
        }
        0.0
    }
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
                let mut lat = Histogram::new();
                for i in 0..mine {
                    let s = Instant::now();
                    f(t, i);
                    lat.record(s.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Histogram::new();
    for h in handles {
        all.merge(&h.join().expect("worker"));
    }
    let secs = started.elapsed().as_secs_f64();
    (
        ops as f64 / secs,
        all.quantile_us(0.5),
        all.quantile_us(0.99),
    )
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

/// A `/proc/self/status` field in bytes (`VmHWM`: peak RSS, `VmRSS`: current), 0 if unreadable.
fn status_bytes(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb * 1024.0)
        .unwrap_or(0.0)
}

/// With `RINGCASK_BENCH_TRACE_RSS` set, prints the current and peak RSS after a phase to stderr,
/// to find which phase sets an engine's peak.
fn trace_rss(phase: &str) {
    if std::env::var_os("RINGCASK_BENCH_TRACE_RSS").is_some() {
        eprintln!(
            "rss after {phase:<40} now {:>7.1} MB  peak {:>7.1} MB",
            status_bytes("VmRSS:") / 1e6,
            status_bytes("VmHWM:") / 1e6
        );
    }
}

/// Closes engine `e` (its last handle) and measures the disk bytes of `data`.
fn close_and_measure(e: Arc<dyn Engine>, label: &str, data: &Path) -> Outcome {
    e.close();
    drop(e);
    Outcome::scalar(label, "MB", dir_bytes(data) as f64 / 1e6)
}

/// Appends `o` to `out` (and traces RSS after it).
fn push(out: &mut Vec<Outcome>, o: Outcome) {
    trace_rss(&o.workload);
    out.push(o);
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
        push(
            &mut out,
            rate(
                "fill random",
                timed(1, n, move |_, i| {
                    // A permutation of 0..n: i * STRIDE mod n, STRIDE a prime that divides no n
                    // used here (n < STRIDE).
                    let k = ((u128::from(i) * u128::from(STRIDE)) % u128::from(n)) as u64;
                    e.put(&key(k), &value(vlen, k));
                }),
            ),
        );
    }
    // Disk use after a clean close (preallocated space trimmed), and the reopen time.
    push(&mut out, close_and_measure(e, "disk after fill", &data));
    let started = Instant::now();
    let e: Arc<dyn Engine> = Arc::from(engines::open(name, &data, false));
    let reopen_secs = started.elapsed().as_secs_f64();
    trace_rss("reopen");
    if name != "raw" {
        // (The raw floor keeps no index on disk; it cannot reopen.)
        push(
            &mut out,
            Outcome::scalar("reopen after fill", "s", reopen_secs),
        );
    } else {
        timed(1, n, {
            let e = e.clone();
            move |_, k| e.put(&key(k), &value(vlen, k))
        });
    }
    for (label, threads) in [("get random, 1 thread", 1), ("get random, 2 threads", 2)] {
        let e = e.clone();
        push(
            &mut out,
            rate(
                label,
                timed(threads, p.ops, move |t, i| {
                    let mut r = SplitMix(i * 31 + t);
                    let k = r.next() % n;
                    assert!(e.get(&key(k)).is_some(), "key {k} missing");
                }),
            ),
        );
    }
    {
        let e = e.clone();
        push(
            &mut out,
            rate(
                "get missing",
                timed(1, p.ops, move |_, i| {
                    assert!(e.get(&missing_key(i)).is_none());
                }),
            ),
        );
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
        push(
            &mut out,
            rate(
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
            ),
        );
    }
    // Overwrite everything once.
    {
        let e = e.clone();
        timed(1, n, move |_, k| e.put(&key(k), &value(vlen, k + 1)));
    }
    trace_rss("overwrite all once");
    // The first store's peak: the process held only this store of n keys so far (fill, reopen,
    // reads, updates). The whole run's peak below also holds what the allocator kept of it
    // while the durable and batch stores ran.
    push(
        &mut out,
        Outcome::scalar("peak RSS, n-key store", "MB", status_bytes("VmHWM:") / 1e6),
    );
    push(
        &mut out,
        close_and_measure(e, "disk after overwriting all once", &data),
    );

    // Durable puts, in a fresh store.
    let durable_dir = dir.join("durable");
    let e: Arc<dyn Engine> = Arc::from(engines::open(name, &durable_dir, true));
    for (label, threads, ops) in [
        ("durable put, 1 writer", 1u64, 2_000u64),
        ("durable put, 32 writers", 32, 32 * 200),
    ] {
        let e = e.clone();
        push(
            &mut out,
            rate(
                label,
                timed(threads, ops, move |t, i| {
                    e.put(&key(t * 1_000_000 + i), &value(vlen, i));
                }),
            ),
        );
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
    push(
        &mut out,
        Outcome::scalar(
            "batch fill (1000 per batch)",
            "ops/s",
            n as f64 / started.elapsed().as_secs_f64(),
        ),
    );
    e.close();
    push(
        &mut out,
        Outcome::scalar("peak RSS, whole run", "MB", status_bytes("VmHWM:") / 1e6),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_invert_and_stay_within_one_sixty_fourth() {
        for ns in (0..5000u64).chain([1 << 20, 123_456_789, u64::MAX / 3]) {
            let b = Histogram::bucket(ns);
            let low = Histogram::low(b);
            assert!(low <= ns, "{ns}: low {low}");
            assert!((ns - low) as f64 <= ns as f64 / 64.0, "{ns}: low {low}");
            assert_eq!(Histogram::bucket(low), b, "{ns}");
        }
    }

    #[test]
    fn histogram_quantiles_match_a_sorted_list() {
        let mut h = Histogram::new();
        let mut other = Histogram::new();
        let mut all = Vec::new();
        let mut r = SplitMix(7);
        for i in 0..10_000u64 {
            let ns = r.next() % 2_000_000;
            all.push(ns);
            let d = Duration::from_nanos(ns);
            if i % 2 == 0 {
                h.record(d)
            } else {
                other.record(d)
            }
        }
        h.merge(&other);
        all.sort_unstable();
        for q in [0.0, 0.5, 0.99, 1.0] {
            let exact = all[((all.len() - 1) as f64 * q) as usize] as f64 / 1e3;
            let got = h.quantile_us(q);
            assert!(
                got <= exact && exact - got <= exact / 64.0 + 1e-9,
                "q {q}: {got} vs {exact}"
            );
        }
        assert_eq!(Histogram::new().quantile_us(0.5), 0.0);
    }
}
