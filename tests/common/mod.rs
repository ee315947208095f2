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

/// Runs `f` on a fresh current-thread tokio runtime.
pub fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
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
