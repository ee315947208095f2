//! Conditional writes: decided under the append lock against the key's current entry, so they
//! are atomic with respect to every other write.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::Db;
use crate::clock::{expiry_after, now_ms};
use crate::write::{batch, Cond, Op, ReqRef, Request};
use crate::Result;

impl Db {
    /// Applies `op` if its key's current entry meets `cond`; whether it did.
    pub(super) async fn submit_if(&self, op: Op<&[u8]>, cond: Cond) -> Result<bool> {
        let inner = self.writable()?;
        batch::validate(&op, &inner.opts)?;
        inner
            .submit(ReqRef::If(op, cond), || Request::If(op.to_owned_op(), cond))
            .await
    }

    /// Stores `value` under `key` only if the key has no live value; whether it did. Decided
    /// under the append lock, so it is atomic with respect to every other write (a racing put
    /// of the same key makes it return `false`, or comes after it).
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// # let tmp = tempfile::tempdir()?;
    /// let db = ringcask::Db::open(tmp.path(), ringcask::Options::default()).await?;
    /// assert!(db.put_if_absent("k", "first").await?);
    /// assert!(!db.put_if_absent("k", "second").await?);
    /// assert_eq!(db.get("k").await?.as_deref(), Some(&b"first"[..]));
    /// # db.close().await })?; Ok::<(), ringcask::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Db::put`].
    pub async fn put_if_absent(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<bool> {
        let op = Op::Put {
            key: key.as_ref(),
            value: value.as_ref(),
            expiry_ms: 0,
        };
        self.submit_if(op, Cond::Absent).await
    }

    /// Replaces `key`'s value by `new` (`None` deletes it) only if its current value equals
    /// `expected` (`None`: absent). `Ok(Ok(()))` when it did; `Ok(Err(current))` otherwise,
    /// with the current value. Atomic with respect to every other write: the value is read,
    /// compared, and the write is applied only if the key's record is still the one read
    /// (checked under the append lock; a racing write makes it read and compare again).
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// # let tmp = tempfile::tempdir()?;
    /// let db = ringcask::Db::open(tmp.path(), ringcask::Options::default()).await?;
    /// db.put("n", "1").await?;
    /// assert!(db.compare_and_swap("n", Some("1"), Some("2")).await?.is_ok());
    /// let stale = db.compare_and_swap("n", Some("1"), Some("3")).await?;
    /// assert_eq!(stale.unwrap_err().as_deref(), Some(&b"2"[..]));
    /// assert!(db.compare_and_swap("n", Some("2"), None::<&str>).await?.is_ok()); // deleted
    /// assert!(db.compare_and_swap("n", None::<&str>, Some("new")).await?.is_ok());
    /// # db.close().await })?; Ok::<(), ringcask::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Db::get`] and [`Db::put`].
    pub async fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<impl AsRef<[u8]>>,
        new: Option<impl AsRef<[u8]>>,
    ) -> Result<std::result::Result<(), Option<Bytes>>> {
        self.writable()?;
        let key = key.as_ref();
        let expected = expected.as_ref().map(AsRef::as_ref);
        loop {
            let (current, seq) = self.get_with_seq(key).await?;
            if current.as_deref() != expected {
                return Ok(Err(current));
            }
            let cond = seq.map_or(Cond::Absent, Cond::SeqIs);
            let op = match &new {
                Some(v) => Op::Put {
                    key,
                    value: v.as_ref(),
                    expiry_ms: 0,
                },
                // Absent and to stay absent: nothing to write.
                None if seq.is_none() => return Ok(Ok(())),
                None => Op::Delete { key },
            };
            if self.submit_if(op, cond).await? {
                return Ok(Ok(()));
            }
            // Another write of the key came between the read and the append: compare again.
        }
    }

    /// The live value of `key` and the seq of its record.
    pub(super) async fn get_with_seq(&self, key: &[u8]) -> Result<(Option<Bytes>, Option<u64>)> {
        let (value, entry) = self.get_with_entry(key).await?;
        Ok((value, entry.map(|(seq, _)| seq)))
    }

    /// The live value of `key`, and the seq and expiry (Unix ms, 0: none) of its record.
    pub(super) async fn get_with_entry(
        &self,
        key: &[u8],
    ) -> Result<(Option<Bytes>, Option<(u64, u64)>)> {
        let inner = self.live()?;
        loop {
            let Some(e) = inner.keydir.get(key) else {
                return Ok((None, None));
            };
            if e.expiry_ms != 0 && e.is_expired(now_ms()) {
                return Ok((None, None));
            }
            let value = Self::read_current(inner, key, e).await?;
            // The read may have followed a merge's repoint (same seq) or raced a write: use the
            // seq of what was read only if the keydir still has it.
            match inner.keydir.get(key) {
                Some(now) if now.seq == e.seq => return Ok((value, Some((e.seq, e.expiry_ms)))),
                None if value.is_none() => return Ok((None, None)),
                _ => continue,
            }
        }
    }

    /// The time `key` has left: `None` when it has no live value, `Some(None)` when it never
    /// expires, `Some(Some(d))` when it expires in `d`. Answered from memory.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// # let tmp = tempfile::tempdir()?;
    /// use std::time::Duration;
    /// let db = ringcask::Db::open(tmp.path(), ringcask::Options::default()).await?;
    /// db.put("k", "v").await?;
    /// assert_eq!(db.ttl("k"), Some(None));
    /// assert!(db.expire("k", Some(Duration::from_secs(60))).await?);
    /// assert!(db.ttl("k").flatten().is_some_and(|d| d <= Duration::from_secs(60)));
    /// assert!(db.expire("k", None).await?); // persists again
    /// assert_eq!(db.ttl("k"), Some(None));
    /// assert_eq!(db.ttl("missing"), None);
    /// # db.close().await })?; Ok::<(), ringcask::Error>(())
    /// ```
    pub fn ttl(&self, key: impl AsRef<[u8]>) -> Option<Option<Duration>> {
        let inner = self.live().ok()?;
        let e = inner.keydir.get(key.as_ref())?;
        if e.expiry_ms == 0 {
            return Some(None);
        }
        let now = now_ms();
        (!e.is_expired(now)).then(|| Some(Duration::from_millis(e.expiry_ms - now)))
    }

    /// Sets how long `key` lives from now (`None`: forever); whether it had a live value. The
    /// value is written again with the new expiry, atomically with respect to every other
    /// write (as [`Db::compare_and_swap`]); the change survives a reopen.
    ///
    /// # Errors
    /// As [`Db::get`] and [`Db::put`].
    pub async fn expire(&self, key: impl AsRef<[u8]>, ttl: Option<Duration>) -> Result<bool> {
        self.writable()?;
        let key = key.as_ref();
        loop {
            let (value, seq) = self.get_with_seq(key).await?;
            let (Some(value), Some(seq)) = (value, seq) else {
                return Ok(false);
            };
            let op = Op::Put {
                key,
                value: &value,
                expiry_ms: ttl.map_or(0, expiry_after),
            };
            if ttl.is_some() {
                self.live()?.shared.has_ttl.store(true, Ordering::Relaxed);
            }
            if self.submit_if(op, Cond::SeqIs(seq)).await? {
                return Ok(true);
            }
        }
    }

    /// The values of `keys`, in order (`None` for an absent key). The reads run concurrently:
    /// cache misses reach the io threads together.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// # let tmp = tempfile::tempdir()?;
    /// let db = ringcask::Db::open(tmp.path(), ringcask::Options::default()).await?;
    /// db.put("a", "1").await?;
    /// db.put("c", "3").await?;
    /// let vs = db.get_many(["a", "b", "c"]).await?;
    /// assert_eq!(vs[0].as_deref(), Some(&b"1"[..]));
    /// assert!(vs[1].is_none());
    /// # db.close().await })?; Ok::<(), ringcask::Error>(())
    /// ```
    ///
    /// # Errors
    /// The first error of any read, as [`Db::get`].
    pub async fn get_many<K: AsRef<[u8]>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Option<Bytes>>> {
        futures::future::try_join_all(keys.into_iter().map(|k| self.get(k))).await
    }
}
