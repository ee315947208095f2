//! Read-modify-write of one key ([`Db::update`]) and batches applied only when their keys are
//! all absent ([`Db::write_if_absent`]): the building blocks of counters, appends and
//! set-if-absent commands, each atomic with respect to every other write.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::Db;
use crate::clock::expiry_after;
use crate::write::{BatchIf, Cond, Op, WriteBatch};
use crate::Result;

/// When a value written by [`Db::update`] expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expiry {
    /// Keeps the current value's expiry (none if the key was absent).
    Keep,
    /// Never expires.
    Never,
    /// Expires this long from now.
    In(Duration),
    /// Expires at this wall-clock time (a time already past deletes the key instead).
    At(SystemTime),
}

/// A key's live value and expiry, as [`Db::update`] hands them to its closure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Current {
    /// The value.
    pub value: Bytes,
    /// When it expires (`None`: never).
    pub expires_at: Option<SystemTime>,
}

/// What [`Db::update`] does to the key, decided from its current value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Update {
    /// Leaves the key as it is (nothing is written).
    Keep,
    /// Stores `value`, expiring as `expiry` says.
    Put {
        /// The new value.
        value: Bytes,
        /// When it expires.
        expiry: Expiry,
    },
    /// Deletes the key (nothing is written if it is already absent).
    Delete,
}

impl Db {
    /// Reads `key`'s live value and expiry, hands them to `f` (`None`: no live value), and applies the [`Update`] that `f` returns,
    /// atomically with respect to every other write: the update is applied only if the key's
    /// record is still the one `f` saw (checked under the append lock); if another write came
    /// between, the value is read again and `f` is called again. So `f` may run more than once
    /// and should not have side effects; the `R` of the call whose update was applied is
    /// returned.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// # let tmp = tempfile::tempdir()?;
    /// use ringcask::{Expiry, Update};
    /// let db = ringcask::Db::open(tmp.path(), ringcask::Options::default()).await?;
    /// let incr = |cur: Option<&ringcask::Current>| {
    ///     let n: u64 = cur.map_or(0, |c| std::str::from_utf8(&c.value).unwrap().parse().unwrap()) + 1;
    ///     let value = bytes::Bytes::from(n.to_string());
    ///     (Update::Put { value, expiry: Expiry::Keep }, n)
    /// };
    /// assert_eq!(db.update("hits", incr).await?, 1);
    /// assert_eq!(db.update("hits", incr).await?, 2);
    /// # db.close().await })?; Ok::<(), ringcask::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Db::get`] and [`Db::put`].
    pub async fn update<R>(
        &self,
        key: impl AsRef<[u8]>,
        mut f: impl FnMut(Option<&Current>) -> (Update, R),
    ) -> Result<R> {
        self.writable()?;
        let key = key.as_ref();
        loop {
            let (value, entry) = self.get_with_entry(key).await?;
            let (seq, kept_ms) = (entry.map(|e| e.0), entry.map_or(0, |e| e.1));
            let current = value.map(|value| Current {
                value,
                expires_at: (kept_ms != 0).then(|| UNIX_EPOCH + Duration::from_millis(kept_ms)),
            });
            let (update, out) = f(current.as_ref());
            let expiry_ms = match &update {
                Update::Put { expiry, .. } => self.expiry_ms(*expiry, kept_ms),
                _ => 0,
            };
            let cond = seq.map_or(Cond::Absent, Cond::SeqIs);
            let op = match &update {
                Update::Keep => return Ok(out),
                // Absent and to stay absent: nothing to write.
                Update::Delete | Update::Put { .. } if seq.is_none() && expiry_ms == u64::MAX => {
                    return Ok(out)
                }
                Update::Delete => match seq {
                    None => return Ok(out),
                    Some(_) => Op::Delete { key },
                },
                Update::Put { .. } if expiry_ms == u64::MAX => Op::Delete { key },
                Update::Put { value, .. } => Op::Put {
                    key,
                    value: value.as_ref(),
                    expiry_ms,
                },
            };
            if self.submit_if(op, cond).await? {
                return Ok(out);
            }
            // Another write of the key came between the read and the append: read again.
        }
    }

    /// The stored expiry for `expiry` (0: never), given the current one (`kept_ms`);
    /// `u64::MAX` for a time already past.
    fn expiry_ms(&self, expiry: Expiry, kept_ms: u64) -> u64 {
        let ms = match expiry {
            Expiry::Never => 0,
            // The expiry read with the value's seq: a racing write that changed it also
            // changed the seq, and the update is retried.
            Expiry::Keep => kept_ms,
            Expiry::In(d) => expiry_after(d),
            Expiry::At(t) => {
                let at = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
                if at <= u128::from(crate::clock::now_ms()) {
                    return u64::MAX;
                }
                at.min(u128::from(u64::MAX - 1)) as u64
            }
        };
        if ms != 0 {
            self.inner.shared.has_ttl.store(true, Ordering::Relaxed);
        }
        ms
    }

    /// Applies `batch` atomically only if none of the keys it writes has a live value; whether
    /// it did. Decided under the append lock, so it is atomic with respect to every other write
    /// (Redis's `MSETNX`).
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// # let tmp = tempfile::tempdir()?;
    /// use ringcask::WriteBatch;
    /// let db = ringcask::Db::open(tmp.path(), ringcask::Options::default()).await?;
    /// assert!(db.write_if_absent(WriteBatch::new().put("a", "1").put("b", "2")).await?);
    /// assert!(!db.write_if_absent(WriteBatch::new().put("b", "3").put("c", "4")).await?);
    /// assert!(db.get("c").await?.is_none());
    /// # db.close().await })?; Ok::<(), ringcask::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Db::write`].
    pub async fn write_if_absent(&self, batch: WriteBatch) -> Result<bool> {
        self.write_when(batch, BatchIf::AllAbsent).await
    }
}
