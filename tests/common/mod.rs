//! Helpers shared by the scenario tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use ringcask::{Db, IoBackend, Options, SyncPolicy};

pub mod crash;

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

/// Whether the file system under `dir` lets files be opened `O_DIRECT` (tmpfs does not).
pub fn supports_direct(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join("direct-probe");
    std::fs::write(&probe, [0u8; 4096]).expect("probe file");
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(&probe)
        .is_ok();
    std::fs::remove_file(&probe).expect("remove probe");
    ok
}

/// Fails the test unless the file system under `dir` accepts `O_DIRECT` (tests of the direct
/// path must not pass by reading buffered).
pub fn needs_direct(dir: &Path) {
    assert!(
        supports_direct(dir),
        "this test needs O_DIRECT under {}",
        dir.display()
    );
}

/// Paths of the datafiles in `dir`, sorted by id.
pub fn data_files(dir: &Path) -> Vec<PathBuf> {
    files_with_ext(dir, "data")
}

/// Paths of the hint files in `dir`, sorted by id.
pub fn hint_files(dir: &Path) -> Vec<PathBuf> {
    files_with_ext(dir, "hint")
}

/// Paths of the files of `dir` with extension `ext`, sorted.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Every key of `db` with its value. A listed key must have a value.
pub async fn contents(db: &Db) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    for k in db.keys() {
        let v = db
            .get(&k)
            .await
            .expect("get")
            .expect("a listed key has a value");
        m.insert(k.to_vec(), v.to_vec());
    }
    m
}

/// Like [`contents`], for stores with TTLs: a key that expires between the listing and its
/// read is left out.
pub async fn contents_lenient(db: &Db) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    for k in db.keys() {
        if let Some(v) = db.get(&k).await.expect("get") {
            m.insert(k.to_vec(), v.to_vec());
        }
    }
    m
}

/// The keys of `db` under `prefix` (UTF-8) with their values.
pub async fn contents_under(db: &Db, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for k in db.keys_with_prefix(prefix.as_bytes()) {
        let v = db
            .get(&k)
            .await
            .expect("get")
            .expect("a listed key has a value");
        m.insert(String::from_utf8(k.to_vec()).expect("utf8"), v.to_vec());
    }
    m
}

/// Copies the files of store directory `from` into `to`, except the lock file.
pub fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// Waits (async) until `db` has made at least `n` syncs; returns early when it has, and leaves
/// the caller's assertion to fail if it never does within 5 s.
pub async fn wait_for_syncs(db: &Db, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while db.stats().syncs < n && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Calls `done` every few milliseconds until it returns true; panics after `timeout`.
pub fn poll_until(what: &str, timeout: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Every file of `dir` (name → length and a hash of its bytes), to show that nothing changed.
pub fn dir_state(dir: &Path) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let bytes = std::fs::read(e.path()).expect("read");
        // FNV-1a: enough to tell changed bytes apart.
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            (bytes.len() as u64, hash),
        );
    }
    out
}

/// Closes `db` and waits until its engine has stopped, ignoring the error a crashed or
/// poisoned store reports: what a test needs before it cuts the power, resizes the file system
/// or copies the directory (dropping the last handle closes in the background).
pub async fn shut(db: Db) {
    let _ = db.close().await;
}

/// Damages `path`: flips bits of its byte at `at` (the file keeps its length).
pub fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for damage");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read byte");
    f.write_all_at(&[b[0] ^ 0x5A], at).expect("write byte");
}
