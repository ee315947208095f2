//! The one public error type.

use std::path::PathBuf;

/// Everything that can go wrong in ringcask.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system IO error.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),

    /// A file holds bytes that are not valid ringcask data.
    #[error("corrupt data in {} at offset {offset}: {reason}", file.display())]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damaged structure in that file.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },

    /// A file was written by a format version this build cannot read.
    #[error("{} has format version {found}, this build reads version {supported}", file.display())]
    UnsupportedVersion {
        /// The file.
        file: PathBuf,
        /// The version found in its header.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },

    /// Another `Db` (in this or another process) has the directory open.
    #[error("store directory {} is locked by another open handle", dir.display())]
    Locked {
        /// The store directory.
        dir: PathBuf,
    },

    /// Keys must not be empty.
    #[error("keys must not be empty")]
    EmptyKey,

    /// The key is longer than `Options::max_key_bytes`.
    #[error("key of {len} bytes exceeds the limit of {max} bytes (Options::max_key_bytes)")]
    KeyTooLarge {
        /// Length of the rejected key.
        len: usize,
        /// The configured limit.
        max: usize,
    },

    /// The value is longer than `Options::max_value_bytes`.
    #[error("value of {len} bytes exceeds the limit of {max} bytes (Options::max_value_bytes)")]
    ValueTooLarge {
        /// Length of the rejected value.
        len: usize,
        /// The configured limit.
        max: usize,
    },

    /// A batch is larger than one datafile may hold.
    #[error("batch of {len} bytes exceeds the limit of {max} bytes (Options::max_file_bytes)")]
    BatchTooLarge {
        /// Encoded length of the rejected batch.
        len: u64,
        /// The limit (`Options::max_file_bytes`).
        max: u64,
    },

    /// An option is outside its allowed range.
    #[error("invalid option: {0}")]
    InvalidOptions(String),

    /// The handle was closed (by `Db::close` on this or a cloned handle).
    #[error("the store is closed")]
    Closed,

    /// A write, merge or other change was asked of a store opened with
    /// [`crate::Db::open_read_only`].
    #[error("the store is open read-only (Db::open_read_only); open it with Db::open to write")]
    ReadOnly,

    /// An earlier write or sync failed, so the writer can no longer promise what is on disk.
    /// Reads still work; reopen the store to write again.
    #[error(
        "writes are disabled after an earlier IO failure (reopen the store to write again): {0}"
    )]
    Poisoned(String),
}

/// Result type of every fallible ringcask call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
