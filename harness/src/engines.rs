//! The engines under test, behind one blocking interface called from plain OS threads.
//!
//! What one "op" is, per engine (documented in the README's benchmark section too):
//! - **ringcask**: one `Db::put` / `Db::get` future driven by `futures::executor::block_on` from
//!   the calling thread. Durable mode: `SyncPolicy::Always` (ack after a grouped `fdatasync`);
//!   fast mode: `SyncPolicy::Never` (ack after the append reached the OS). Batch: one
//!   `WriteBatch`. Defaults otherwise (no value cache: values are read with `preadv2` from the
//!   page cache), `read_threads(2)`.
//! - **ringcask-cache**: the same with `Options::value_cache_bytes(64 MiB)` (or
//!   `RINGCASK_BENCH_CACHE_MIB`), an in-process cache of recently read values (peers cache too,
//!   with their defaults: redb and sled 1 GiB, fjall 32 MiB; `RINGCASK_BENCH_PEER_CACHE_MIB`
//!   sets all three to that many MiB, for runs at equal cache budgets).
//! - **ringcask-direct**: `Options::io_mode(IoMode::Direct)` with that mode's defaults (a 64 MiB
//!   value cache, or `RINGCASK_BENCH_CACHE_MIB` when set, filled by writes and reads; sealed files read with `O_DIRECT`; durable mode
//!   writes through the direct-IO writer: `O_DIRECT | O_DSYNC` group writes on the ring).
//!   Both cached configurations warm their caches after open when the store fits them
//!   (`Options::warm_value_cache`; `RINGCASK_BENCH_WARM=0` turns it off).
//! - **raw**: the zero-overhead Bitcask floor: one `pwrite` at the end of a file preallocated
//!   ahead (durable: plus one `fdatasync`), index in a `Mutex<HashMap>`; a get is one lookup
//!   plus one `pread`. No CRC, no header, no recovery.
//! - **redb**: one write transaction per put (durable: `Durability::Immediate`, fast:
//!   `Durability::Eventual`), one read transaction per get; batch: one write transaction.
//! - **fjall**: `PartitionHandle::insert` / `get`; durable: `Keyspace::persist(SyncAll)` after
//!   each put; fast: nothing (journal buffered, flushed by fjall in the background); batch: one
//!   `Batch::commit`.
//! - **sled**: `Tree::insert` / `get`; durable: `Db::flush` after each put; batch: one
//!   `apply_batch`.
//! - **rocksdb** (feature `rocksdb`): `put` / `get`; durable: `WriteOptions::set_sync(true)`;
//!   batch: one `WriteBatch`.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A key-value engine driven by blocking calls from several threads.
pub trait Engine: Send + Sync {
    /// Stores `v` under `k` (durably if the engine was opened durable).
    fn put(&self, k: &[u8], v: &[u8]);
    /// Length of the value of `k`, if present.
    fn get(&self, k: &[u8]) -> Option<usize>;
    /// Stores all pairs in one batch.
    fn put_batch(&self, kvs: &[(Vec<u8>, Vec<u8>)]);
    /// Flushes and closes.
    fn close(&self);
}

/// Engines compiled into this build.
pub fn available() -> Vec<&'static str> {
    let mut v = vec!["ringcask", "ringcask-cache", "ringcask-direct", "raw"];
    if cfg!(feature = "redb") {
        v.push("redb");
    }
    if cfg!(feature = "fjall") {
        v.push("fjall");
    }
    if cfg!(feature = "sled") {
        v.push("sled");
    }
    if cfg!(feature = "rocksdb") {
        v.push("rocksdb");
    }
    v
}

/// Value cache of `ringcask-cache` in MiB: `RINGCASK_BENCH_CACHE_MIB`, default 64.
pub fn cache_mib() -> u64 {
    cache_mib_set().unwrap_or(64)
}

/// Value cache of `ringcask-direct` in MiB: `RINGCASK_BENCH_CACHE_MIB` when set, else its io
/// mode's default.
pub fn direct_cache_mib() -> u64 {
    cache_mib_set().unwrap_or(ringcask::DIRECT_VALUE_CACHE_BYTES >> 20)
}

/// `RINGCASK_BENCH_CACHE_MIB` when set: the value cache of `ringcask-cache`, and of
/// `ringcask-direct` too (which otherwise keeps its io mode's default).
fn cache_mib_set() -> Option<u64> {
    std::env::var("RINGCASK_BENCH_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// Whether ringcask warms its value cache after open (`Options::warm_value_cache`): on unless
/// `RINGCASK_BENCH_WARM=0`, for runs side by side.
fn warm_value_cache() -> bool {
    std::env::var("RINGCASK_BENCH_WARM").map_or(true, |v| v != "0")
}

/// Cache budget of the peers in bytes: `RINGCASK_BENCH_PEER_CACHE_MIB`, or `None` for their
/// defaults.
#[cfg(any(feature = "redb", feature = "fjall", feature = "sled"))]
pub fn peer_cache_bytes() -> Option<u64> {
    std::env::var("RINGCASK_BENCH_PEER_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|mib| mib << 20)
}

/// Opens `name` in `dir`; `durable` selects its durable configuration.
pub fn open(name: &str, dir: &Path, durable: bool) -> Box<dyn Engine> {
    std::fs::create_dir_all(dir).expect("engine dir");
    match name {
        "ringcask" => Box::new(Ringcask::open(dir, durable, Some(0), false)),
        "ringcask-cache" => Box::new(Ringcask::open(dir, durable, Some(cache_mib() << 20), false)),
        "ringcask-direct" => Box::new(Ringcask::open(
            dir,
            durable,
            cache_mib_set().map(|mib| mib << 20),
            true,
        )),
        "raw" => Box::new(Raw::open(dir, durable)),
        #[cfg(feature = "redb")]
        "redb" => Box::new(peers::Redb::open(dir, durable)),
        #[cfg(feature = "fjall")]
        "fjall" => Box::new(peers::Fjall::open(dir, durable)),
        #[cfg(feature = "sled")]
        "sled" => Box::new(peers::Sled::open(dir, durable)),
        #[cfg(feature = "rocksdb")]
        "rocksdb" => Box::new(peers::Rocks::open(dir, durable)),
        other => panic!("engine {other} is not built in (see --features)"),
    }
}

// ---- ringcask ------------------------------------------------------------------------------

struct Ringcask {
    db: ringcask::Db,
}

impl Ringcask {
    /// `value_cache_bytes`: `None` keeps the io mode's default.
    fn open(dir: &Path, durable: bool, value_cache_bytes: Option<u64>, direct: bool) -> Self {
        let sync = if durable {
            ringcask::SyncPolicy::Always
        } else {
            ringcask::SyncPolicy::Never
        };
        let mut opts = ringcask::Options::default()
            .sync(sync)
            .read_threads(2)
            .warm_value_cache(warm_value_cache());
        if let Some(bytes) = value_cache_bytes {
            opts = opts.value_cache_bytes(bytes);
        }
        if direct {
            opts = opts.io_mode(ringcask::IoMode::Direct);
        }
        let db = futures::executor::block_on(ringcask::Db::open(dir, opts)).expect("open");
        Ringcask { db }
    }
}

impl Engine for Ringcask {
    fn put(&self, k: &[u8], v: &[u8]) {
        futures::executor::block_on(self.db.put(k, v)).expect("put");
    }
    fn get(&self, k: &[u8]) -> Option<usize> {
        futures::executor::block_on(self.db.get(k))
            .expect("get")
            .map(|v| v.len())
    }
    fn put_batch(&self, kvs: &[(Vec<u8>, Vec<u8>)]) {
        let mut b = ringcask::WriteBatch::new();
        for (k, v) in kvs {
            b = b.put(k.clone(), v.clone());
        }
        futures::executor::block_on(self.db.write(b)).expect("batch");
    }
    fn close(&self) {
        futures::executor::block_on(self.db.close()).expect("close");
    }
}

// ---- raw floor -----------------------------------------------------------------------------

struct Raw {
    file: File,
    end: AtomicU64,
    index: Mutex<HashMap<Vec<u8>, (u64, u32)>>,
    durable: bool,
}

const RAW_PREALLOC: u64 = 4 << 30;

impl Raw {
    fn open(dir: &Path, durable: bool) -> Self {
        let path = dir.join("raw.log");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .expect("raw file");
        // The floor keeps no index on disk: a reopen starts from an empty log.
        file.set_len(0).expect("truncate");
        let _ = rustix_fallocate(&file, RAW_PREALLOC);
        Raw {
            file,
            end: AtomicU64::new(0),
            index: Mutex::new(HashMap::new()),
            durable,
        }
    }
}

fn rustix_fallocate(file: &File, len: u64) -> std::io::Result<()> {
    rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len)
        .map_err(std::io::Error::from)
}

impl Engine for Raw {
    fn put(&self, k: &[u8], v: &[u8]) {
        let at = self.end.fetch_add(v.len() as u64, Ordering::SeqCst);
        self.file.write_all_at(v, at).expect("pwrite");
        if self.durable {
            self.file.sync_data().expect("fdatasync");
        }
        self.index
            .lock()
            .expect("index")
            .insert(k.to_vec(), (at, v.len() as u32));
    }
    fn get(&self, k: &[u8]) -> Option<usize> {
        let loc = self.index.lock().expect("index").get(k).copied();
        loc.map(|(at, len)| {
            let mut buf = vec![0u8; len as usize];
            self.file.read_exact_at(&mut buf, at).expect("pread");
            buf.len()
        })
    }
    fn put_batch(&self, kvs: &[(Vec<u8>, Vec<u8>)]) {
        let total: usize = kvs.iter().map(|(_, v)| v.len()).sum();
        let at = self.end.fetch_add(total as u64, Ordering::SeqCst);
        let mut buf = Vec::with_capacity(total);
        let mut idx = self.index.lock().expect("index");
        for (k, v) in kvs {
            idx.insert(k.clone(), (at + buf.len() as u64, v.len() as u32));
            buf.extend_from_slice(v);
        }
        drop(idx);
        self.file.write_all_at(&buf, at).expect("pwrite");
        if self.durable {
            self.file.sync_data().expect("fdatasync");
        }
    }
    fn close(&self) {
        let _ = self.file.set_len(self.end.load(Ordering::SeqCst));
        self.file.sync_all().expect("sync");
    }
}

// ---- peers ---------------------------------------------------------------------------------

#[cfg(any(
    feature = "redb",
    feature = "fjall",
    feature = "sled",
    feature = "rocksdb"
))]
mod peers {
    use super::Engine;
    use std::path::Path;

    #[cfg(feature = "redb")]
    pub struct Redb {
        db: redb::Database,
        durability: redb::Durability,
    }

    #[cfg(feature = "redb")]
    const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

    #[cfg(feature = "redb")]
    impl Redb {
        pub fn open(dir: &Path, durable: bool) -> Self {
            let mut b = redb::Builder::new();
            if let Some(bytes) = super::peer_cache_bytes() {
                b.set_cache_size(bytes as usize);
            }
            let db = b.create(dir.join("redb.db")).expect("redb");
            let durability = if durable {
                redb::Durability::Immediate
            } else {
                redb::Durability::Eventual
            };
            // Make sure the table exists.
            let tx = db.begin_write().expect("tx");
            tx.open_table(TABLE).expect("table");
            tx.commit().expect("commit");
            Redb { db, durability }
        }
    }

    #[cfg(feature = "redb")]
    impl Engine for Redb {
        fn put(&self, k: &[u8], v: &[u8]) {
            let mut tx = self.db.begin_write().expect("tx");
            tx.set_durability(self.durability);
            {
                let mut t = tx.open_table(TABLE).expect("table");
                t.insert(k, v).expect("insert");
            }
            tx.commit().expect("commit");
        }
        fn get(&self, k: &[u8]) -> Option<usize> {
            let tx = self.db.begin_read().expect("read tx");
            let t = tx.open_table(TABLE).expect("table");
            t.get(k).expect("get").map(|g| g.value().len())
        }
        fn put_batch(&self, kvs: &[(Vec<u8>, Vec<u8>)]) {
            let mut tx = self.db.begin_write().expect("tx");
            tx.set_durability(self.durability);
            {
                let mut t = tx.open_table(TABLE).expect("table");
                for (k, v) in kvs {
                    t.insert(&k[..], &v[..]).expect("insert");
                }
            }
            tx.commit().expect("commit");
        }
        fn close(&self) {
            // A final durable commit so that reopen sees everything.
            let mut tx = self.db.begin_write().expect("tx");
            tx.set_durability(redb::Durability::Immediate);
            tx.commit().expect("commit");
        }
    }

    #[cfg(feature = "fjall")]
    pub struct Fjall {
        ks: fjall::Keyspace,
        part: fjall::PartitionHandle,
        durable: bool,
    }

    #[cfg(feature = "fjall")]
    impl Fjall {
        pub fn open(dir: &Path, durable: bool) -> Self {
            let mut config = fjall::Config::new(dir.join("fjall"));
            if let Some(bytes) = super::peer_cache_bytes() {
                config = config.cache_size(bytes);
            }
            let ks = config.open().expect("fjall");
            let part = ks
                .open_partition("kv", fjall::PartitionCreateOptions::default())
                .expect("partition");
            Fjall { ks, part, durable }
        }
    }

    #[cfg(feature = "fjall")]
    impl Engine for Fjall {
        fn put(&self, k: &[u8], v: &[u8]) {
            self.part.insert(k, v).expect("insert");
            if self.durable {
                self.ks
                    .persist(fjall::PersistMode::SyncAll)
                    .expect("persist");
            }
        }
        fn get(&self, k: &[u8]) -> Option<usize> {
            self.part.get(k).expect("get").map(|v| v.len())
        }
        fn put_batch(&self, kvs: &[(Vec<u8>, Vec<u8>)]) {
            let mut b = self.ks.batch();
            for (k, v) in kvs {
                b.insert(&self.part, &k[..], &v[..]);
            }
            b.commit().expect("commit");
            if self.durable {
                self.ks
                    .persist(fjall::PersistMode::SyncAll)
                    .expect("persist");
            }
        }
        fn close(&self) {
            self.ks
                .persist(fjall::PersistMode::SyncAll)
                .expect("persist");
        }
    }

    #[cfg(feature = "sled")]
    pub struct Sled {
        db: sled::Db,
        durable: bool,
    }

    #[cfg(feature = "sled")]
    impl Sled {
        pub fn open(dir: &Path, durable: bool) -> Self {
            let mut config = sled::Config::new().path(dir.join("sled"));
            if let Some(bytes) = super::peer_cache_bytes() {
                config = config.cache_capacity(bytes);
            }
            let db = config.open().expect("sled");
            Sled { db, durable }
        }
    }

    #[cfg(feature = "sled")]
    impl Engine for Sled {
        fn put(&self, k: &[u8], v: &[u8]) {
            self.db.insert(k, v).expect("insert");
            if self.durable {
                self.db.flush().expect("flush");
            }
        }
        fn get(&self, k: &[u8]) -> Option<usize> {
            self.db.get(k).expect("get").map(|v| v.len())
        }
        fn put_batch(&self, kvs: &[(Vec<u8>, Vec<u8>)]) {
            let mut b = sled::Batch::default();
            for (k, v) in kvs {
                b.insert(&k[..], &v[..]);
            }
            self.db.apply_batch(b).expect("batch");
            if self.durable {
                self.db.flush().expect("flush");
            }
        }
        fn close(&self) {
            self.db.flush().expect("flush");
        }
    }

    #[cfg(feature = "rocksdb")]
    pub struct Rocks {
        db: rocksdb::DB,
        durable: bool,
    }

    #[cfg(feature = "rocksdb")]
    impl Rocks {
        pub fn open(dir: &Path, durable: bool) -> Self {
            let mut o = rocksdb::Options::default();
            o.create_if_missing(true);
            let db = rocksdb::DB::open(&o, dir.join("rocksdb")).expect("rocksdb");
            Rocks { db, durable }
        }
        fn wo(&self) -> rocksdb::WriteOptions {
            let mut w = rocksdb::WriteOptions::default();
            w.set_sync(self.durable);
            w
        }
    }

    #[cfg(feature = "rocksdb")]
    impl Engine for Rocks {
        fn put(&self, k: &[u8], v: &[u8]) {
            self.db.put_opt(k, v, &self.wo()).expect("put");
        }
        fn get(&self, k: &[u8]) -> Option<usize> {
            self.db.get_pinned(k).expect("get").map(|v| v.len())
        }
        fn put_batch(&self, kvs: &[(Vec<u8>, Vec<u8>)]) {
            let mut b = rocksdb::WriteBatch::default();
            for (k, v) in kvs {
                b.put(k, v);
            }
            self.db.write_opt(b, &self.wo()).expect("batch");
        }
        fn close(&self) {
            self.db.flush().expect("flush");
        }
    }
}
