//! Helpers shared by the scenario tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ringcask::{Db, IoBackend, Options, SyncPolicy};

/// A small deterministic PRNG (xorshift64*), so failures replay from their seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// The numeric environment variable `name` (campaign sizes), or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs `f` on a fresh current-thread tokio runtime.
pub fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// A multi-threaded tokio runtime with `workers` worker threads.
pub fn multi_thread_rt(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("rt")
}

/// `ops` random puts (values up to `max_len` bytes) and deletes (every `delete_every`-th op)
/// over keys `k0..k{keys}`.
pub async fn churn(db: &Db, seed: u64, ops: u32, keys: u64, max_len: u64, delete_every: u32) {
    let mut rng = Rng::new(seed);
    for i in 0..ops {
        let k = format!("k{}", rng.below(keys));
        if i % delete_every == delete_every / 2 {
            db.delete(k).await.expect("delete");
        } else {
            let len = rng.below(max_len) as usize;
            db.put(k, rng.bytes(len)).await.expect("put");
        }
    }
}

/// Options for tests: small files so that rotation happens, no sync for speed.
pub fn small_opts() -> Options {
    Options::default()
        .max_file_bytes(16 * 1024)
        .hint_spill_bytes(256)
        .sync(SyncPolicy::Never)
        .preallocate_bytes(8 * 1024)
}

/// Both backends, so that scenario tests cover each.
pub fn backends() -> [IoBackend; 2] {
    [IoBackend::Auto, IoBackend::Pread]
}

pub async fn open(dir: &Path, opts: Options) -> Db {
    Db::open(dir, opts).await.expect("open")
}

/// Paths of the datafiles in `dir`, sorted by id.
pub fn data_files(dir: &Path) -> Vec<PathBuf> {
    files_with_ext(dir, "data")
}

/// Paths of the hint files in `dir`, sorted by id.
pub fn hint_files(dir: &Path) -> Vec<PathBuf> {
    files_with_ext(dir, "hint")
}

fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Re-runs this test binary as a child running only `test` with `envs` set, waits until it
/// prints `READY`, lets it run `delay_ms`, kills it with SIGKILL, and returns how many operations
/// each of its `tasks` tasks acknowledged (lines `ACK <task> <op>`, in order per task).
pub fn kill_child_after(
    test: &str,
    envs: &[(&str, String)],
    tasks: usize,
    delay_ms: u64,
) -> Vec<u64> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    let mut cmd = Command::new(std::env::current_exe().expect("exe"));
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acked = vec![0u64; tasks];
        let mut ready = Some(ready_tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The test harness prints "test <name> ... " without a newline before it.
            if line.ends_with("READY") {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            } else if let Some(rest) = line.strip_prefix("ACK ") {
                let mut it = rest.split(' ');
                let (Some(Ok(t)), Some(Ok(i))) = (
                    it.next().map(str::parse::<usize>),
                    it.next().map(str::parse::<u64>),
                ) else {
                    continue; // a line cut by the kill
                };
                assert_eq!(acked[t], i, "acks of one task arrive in order");
                acked[t] = i + 1;
            }
        }
        acked
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("child never became ready");
    std::thread::sleep(Duration::from_millis(delay_ms));
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    reader.join().expect("reader thread")
}
