//! Atomic write batches.

use std::time::Duration;

use bytes::Bytes;

use super::request::Op;
use crate::{clock::expiry_after, Error, Options, Result};

/// A group of puts and deletes applied atomically by [`crate::Db::write`]: after a crash,
/// recovery finds all of them or none.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    pub(crate) ops: Vec<Op>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        WriteBatch::default()
    }

    /// Adds a put of `key` → `value` (copied into the batch).
    pub fn put(mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.ops.push(Op::Put {
            key: Bytes::copy_from_slice(key.as_ref()),
            value: Bytes::copy_from_slice(value.as_ref()),
            expiry_ms: 0,
        });
        self
    }

    /// Adds a put of `key` → `value` that expires after `ttl`.
    pub fn put_with_ttl(
        mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> Self {
        self.ops.push(Op::Put {
            key: Bytes::copy_from_slice(key.as_ref()),
            value: Bytes::copy_from_slice(value.as_ref()),
            expiry_ms: expiry_after(ttl),
        });
        self
    }

    /// Adds a delete of `key`.
    pub fn delete(mut self, key: impl AsRef<[u8]>) -> Self {
        self.ops.push(Op::Delete {
            key: Bytes::copy_from_slice(key.as_ref()),
        });
        self
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Checks one op against the configured limits.
pub(crate) fn validate<B: AsRef<[u8]>>(op: &Op<B>, opts: &Options) -> Result<()> {
    let (key, value_len) = match op.view() {
        Op::Put { key, value, .. } => (key, value.len()),
        Op::Delete { key } => (key, 0),
    };
    if key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if key.len() > opts.max_key_bytes {
        return Err(Error::KeyTooLarge {
            len: key.len(),
            max: opts.max_key_bytes,
        });
    }
    if value_len > opts.max_value_bytes {
        return Err(Error::ValueTooLarge {
            len: value_len,
            max: opts.max_value_bytes,
        });
    }
    Ok(())
}
