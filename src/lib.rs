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
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::unwrap_used)]

// Modules in layers, lowest first (DESIGN.md §1; `.ci/layers` checks that no module imports
// one above it and that no import makes a circle):
// 1. format, layout, error, options, fault, stats, clock — byte layouts, names, settings
// 2. io — the IO seam (files, fs helpers, the directory lock)
// 3. state, keydir — engine state shared by the threads; the in-memory index
// 4. files — datafile scan, hint files, merge manifest, keydir snapshot
// 5. read, write — the read path; appends, group commit and the writer thread
// 6. merge, recovery — compaction; open's rebuild of the keydir
// 7. db — the public handle, which orchestrates open and close
mod clock;
mod error;
mod fault;
mod format;
mod layout;
mod options;
mod stats;

mod io;

mod keydir;
mod state;

mod files;

mod read;
mod write;

mod merge;
mod recovery;

mod db;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(ringcask_loom)]
#[doc(hidden)]
pub mod loom_api;
#[cfg(test)]
mod test_rng;
pub mod testing;
/// The README's code blocks compile (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use db::{CheckpointReport, Current, Db, Expiry, Iter, Snapshot, Update};
pub use error::{Error, Result};
pub use format::{KEY_LEN_LIMIT, VALUE_LEN_LIMIT};
pub use merge::MergeReport;
pub use options::{
    GroupFlush, IoBackend, IoBackendKind, IoMode, Options, SyncPolicy, DIRECT_VALUE_CACHE_BYTES,
    MAX_FILE_BYTES_LIMIT, MIN_FILE_BYTES,
};
pub use recovery::check::{check, CheckReport, Damage};
pub use stats::{FileStats, RecoveryReport, Stats};
pub use write::WriteBatch;
