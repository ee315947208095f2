//! Raft replication for ringcask on [openraft](https://docs.rs/openraft): a Raft log store and a
//! state machine, each on its own ringcask store.
//!
//! - [`LogStore`]: entries keyed by big-endian index, the vote, the committed log id and the last
//!   purged log id. Appends are one atomic batch each, readable on return; their durability is
//!   reported to openraft when the `fdatasync` covering them completes, so concurrent appends
//!   share one sync (ringcask's group commit). Truncate and purge are atomic batches.
//! - [`StateMachine`]: the replicated key-value data, with the applied log id and membership
//!   written in the same atomic batch as the data they cover. Snapshots are built from a
//!   point-in-time ringcask snapshot and streamed to a file (never the whole state in memory);
//!   installing one builds a new store generation beside the old and switches to it with one
//!   atomic rename, so a crash leaves the old or the new state, never a mix.
//!
//! The library itself (`ringcask`) does not depend on openraft.

#![deny(missing_docs)]

mod log_store;
pub mod node;
mod snapshot_file;
mod state_machine;

use serde::{Deserialize, Serialize};

pub use log_store::LogStore;
pub use state_machine::{Reader, SnapshotBuilder, StateMachine};

/// A client request replicated through the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Stores `value` under `key`.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Deletes `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Replaces `key`'s value by `new` (`None`: delete) only if it is `expected` (`None`:
    /// absent).
    CompareAndSwap {
        /// The key.
        key: String,
        /// The value the key must have.
        expected: Option<String>,
        /// The value to store.
        new: Option<String>,
    },
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Set { key, value } => write!(f, "set {key:?} ({} bytes)", value.len()),
            Request::Delete { key } => write!(f, "delete {key:?}"),
            Request::CompareAndSwap { key, .. } => write!(f, "compare-and-swap {key:?}"),
        }
    }
}

/// What applying a [`Request`] returned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request changed the state (a compare-and-swap whose comparison failed did
    /// not).
    pub ok: bool,
    /// The key's value before the request.
    pub previous: Option<String>,
}

openraft::declare_raft_types!(
    /// The Raft type configuration of a ringcask cluster.
    pub TypeConfig:
        D = Request,
        R = Response,
);

/// A log id of this configuration.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A vote of this configuration.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A log entry of this configuration.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// The membership as stored with the log id that set it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata of this configuration.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

/// A store error as the `std::io::Error` openraft's storage traits return.
pub(crate) fn io_err(e: ringcask::Error) -> std::io::Error {
    match e {
        ringcask::Error::Io(e) => e,
        e => std::io::Error::other(e),
    }
}

/// Bytes that should be JSON of `T` but are not: an `InvalidData` error.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> std::io::Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {e}")))
}

/// The JSON value stored under `key`, if any.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    db: &ringcask::Db,
    key: &[u8],
    what: &str,
) -> std::io::Result<Option<T>> {
    match db.get(key).await.map_err(io_err)? {
        Some(b) => decode(what, &b).map(Some),
        None => Ok(None),
    }
}

/// JSON of `v`.
pub(crate) fn encode<T: Serialize>(v: &T) -> std::io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
