//! ringcask: an async-first, Bitcask-style key-value store built on io_uring.
//!
//! One active datafile takes every append; an in-memory keydir maps each key to its newest
//! record, so a `get` is one hash lookup plus one positioned read. Records are CRC-checked,
//! deletes are tombstones, keys can expire, and recovery rebuilds the keydir from hint files or
//! scans. Appends and page-cache reads run on the caller's thread (`pwrite` under an append
//! lock, non-blocking `preadv2`); everything that waits on the disk — grouped `fdatasync`s,
//! reads that miss the page cache, rotation, merge — runs on io threads the engine owns
//! (io_uring through tokio-uring, or `pread`/`pwrite` where io_uring is unavailable), so the
//! handle works from any async runtime.
//!
//! ```
//! # fn main() -> Result<(), ringcask::Error> {
//! # let tmp = tempfile::tempdir()?;
//! # let dir = tmp.path();
//! use ringcask::{Db, Options, SyncPolicy, WriteBatch};
//!
//! futures::executor::block_on(async {
//!     let db = Db::open(dir, Options::default().sync(SyncPolicy::Always)).await?;
//!     db.put("hello", "world").await?;
//!     assert_eq!(db.get(b"hello").await?.as_deref(), Some(&b"world"[..]));
//!     db.write(WriteBatch::new().put("a", "1").delete("hello")).await?;
//!     assert!(db.get(b"hello").await?.is_none());
//!     db.close().await
//! })
//! # }
//! ```
#![deny(missing_docs)]
#![deny(clippy::unwrap_used)]

mod batch;
mod cache;
mod datafile;
mod db;
mod error;
mod filetable;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod hint;
mod io;
mod keydir;
mod lock;
mod merge;
mod options;
mod reader;
mod record;
mod recovery;
mod snapshot;
mod stats;
mod writer;

pub use batch::WriteBatch;
pub use db::Db;
pub use error::{Error, Result};
pub use io::{FaultInjector, IoBackend};
pub use merge::MergeReport;
pub use options::{Options, SyncPolicy, MAX_FILE_BYTES_LIMIT, MIN_FILE_BYTES};
pub use record::{KEY_LEN_LIMIT, VALUE_LEN_LIMIT};
pub use stats::{FileStats, IoBackendKind, RecoveryReport, Stats};

/// Current Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Absolute expiry for a time-to-live starting now (never 0, which means "no expiry").
pub(crate) fn expiry_after(ttl: std::time::Duration) -> u64 {
    now_ms()
        .saturating_add(ttl.as_millis().min(u128::from(u64::MAX)) as u64)
        .max(1)
}
