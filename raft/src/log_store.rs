//! The Raft log on a ringcask store.
//!
//! Keys: `l` + big-endian index → the entry (JSON); `m:vote`, `m:committed`, `m:purged` → the
//! vote, the committed log id and the last purged log id. The present entries always form one
//! contiguous range (appends, truncations and purges are atomic batches), which is kept in
//! memory so that a range read is a set of point reads.

use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use ringcask::{Db, Options, SyncPolicy, WriteBatch};

use crate::{decode, encode, io_err, read_json, Entry, LogId, TypeConfig, Vote};

const VOTE: &[u8] = b"m:vote";
const COMMITTED: &[u8] = b"m:committed";
const PURGED: &[u8] = b"m:purged";

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [b'l'; 9];
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The indices of the entries present: `first..=last`, none when `last` is `None`.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    first: u64,
    last: Option<u64>,
}

/// A Raft log store on its own ringcask store. Cheap to clone (it is its own log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Db,
    span: Arc<Mutex<Span>>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir`.
    ///
    /// # Errors
    /// The store's open errors; an entry index that does not decode.
    pub async fn open(dir: impl AsRef<Path>) -> io::Result<LogStore> {
        Self::open_with(dir, Options::default()).await
    }

    /// Opens (or creates) the log in `dir` with the store `options` (their sync policy is
    /// replaced: the log syncs explicitly, once per group of appends).
    ///
    /// # Errors
    /// As [`LogStore::open`].
    pub async fn open_with(dir: impl AsRef<Path>, options: Options) -> io::Result<LogStore> {
        let db = Db::open(dir.as_ref(), options.sync(SyncPolicy::Never))
            .await
            .map_err(io_err)?;
        let mut span = Span::default();
        let mut indices = db.keys_with_prefix(b"l").into_iter().map(|k| {
            let bytes: [u8; 8] = k.get(1..).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]);
            u64::from_be_bytes(bytes)
        });
        if let Some(i) = indices.next() {
            let (lo, hi) = indices.fold((i, i), |(lo, hi), i| (lo.min(i), hi.max(i)));
            span = Span {
                first: lo,
                last: Some(hi),
            };
        } else if let Some(p) = read_json::<LogId>(&db, PURGED, "last purged").await? {
            span.first = p.index() + 1;
        }
        Ok(LogStore {
            db,
            span: Arc::new(Mutex::new(span)),
        })
    }

    /// Closes the store (a sync and a clean shutdown).
    ///
    /// # Errors
    /// The store's close error.
    pub async fn close(&self) -> io::Result<()> {
        self.db.close().await.map_err(io_err)
    }

    fn span(&self) -> MutexGuard<'_, Span> {
        self.span.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn entry(&self, index: u64) -> io::Result<Option<Entry>> {
        read_json(&self.db, &entry_key(index), "log entry").await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let span = *self.span();
        let Some(last) = span.last else {
            return Ok(Vec::new());
        };
        let lo = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(span.first);
        let hi = match range.end_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&0) => return Ok(Vec::new()),
            Bound::Excluded(&i) => i - 1,
            Bound::Unbounded => u64::MAX,
        }
        .min(last);
        if lo > hi {
            return Ok(Vec::new());
        }
        let keys: Vec<[u8; 9]> = (lo..=hi).map(entry_key).collect();
        let mut out = Vec::with_capacity(keys.len());
        for value in self.db.get_many(keys).await.map_err(io_err)? {
            // A purge racing this read may have removed the front: return what follows on.
            let Some(b) = value else { break };
            out.push(decode("log entry", &b)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        read_json(&self.db, VOTE, "vote").await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let purged: Option<LogId> = read_json(&self.db, PURGED, "last purged").await?;
        let last = self.span().last;
        let last_log_id = match last {
            Some(i) => {
                let e = self.entry(i).await?;
                let e = e.ok_or_else(|| io::Error::other(format!("log entry {i} is missing")))?;
                Some(e.log_id())
            }
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.db.put(VOTE, encode(vote)?).await.map_err(io_err)?;
        // The vote is durable before this returns.
        self.db.sync().await.map_err(io_err)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.db
            .put(COMMITTED, encode(&committed)?)
            .await
            .map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(read_json::<Option<LogId>>(&self.db, COMMITTED, "committed")
            .await?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::new();
        let (mut lo, mut hi) = (u64::MAX, None::<u64>);
        for e in entries {
            let i = e.index();
            batch = batch.put(entry_key(i), encode(&e)?);
            lo = lo.min(i);
            hi = Some(hi.map_or(i, |h| h.max(i)));
        }
        if let Some(hi) = hi {
            // Readable on return: the batch is applied before `write` returns.
            self.db.write(batch).await.map_err(io_err)?;
            let mut span = self.span();
            if span.last.is_none() {
                span.first = lo;
            }
            span.last = Some(span.last.map_or(hi, |l| l.max(hi)));
        }
        // Durable later: the sync that covers the batch reports it. Concurrent appends share
        // fdatasyncs (a sync started after this call covers it).
        let db = self.db.clone();
        tokio::spawn(async move {
            callback.io_completed(db.sync().await.map_err(io_err));
        });
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index() + 1);
        let span = *self.span();
        let Some(last) = span.last.filter(|&l| l >= from) else {
            return Ok(());
        };
        let from = from.max(span.first);
        let batch = (from..=last).fold(WriteBatch::new(), |b, i| b.delete(entry_key(i)));
        self.db.write(batch).await.map_err(io_err)?;
        let mut s = self.span();
        s.last = (from > s.first).then(|| from - 1);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let upto = log_id.index();
        let span = *self.span();
        let mut batch = WriteBatch::new().put(PURGED, encode(&log_id)?);
        if let Some(last) = span.last {
            for i in span.first..=upto.min(last) {
                batch = batch.delete(entry_key(i));
            }
        }
        // The purge mark and the deletes in one atomic batch.
        self.db.write(batch).await.map_err(io_err)?;
        let mut s = self.span();
        s.first = s.first.max(upto + 1);
        if s.last.is_some_and(|l| l < s.first) {
            s.last = None;
        }
        Ok(())
    }
}
