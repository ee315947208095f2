//! Streams over a snapshot: sequential reads of its datafiles (the whole store), or a walk of
//! its keydir (a key prefix).
//!
//! **Files.** Each datafile the snapshot may point into is read from its header to the length
//! it had when the snapshot was taken, in 4 MiB reads; a record is yielded when the frozen
//! keydir points at exactly it (same file, offset and seq) and it had not expired. Dead
//! records are read and skipped: the cost follows the bytes on disk, and the disk sees only
//! large sequential reads. A region that does not decode (damage a recovery skipped under
//! `skip_damaged_records`) ends the sequential read of that file: the rest of its live
//! records are found through the keydir walk below.
//!
//! **Keydir walk.** The frozen keydir is walked shard by shard; matching entries are gathered
//! in groups (up to 512 records or 4 MiB), each sorted by file and offset, and their reads
//! issued together.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;

use super::snapshot::Snapshot;
use super::Inner;
use crate::format::{self, FILE_HEADER_LEN, RECORD_HEADER_LEN};
use crate::keydir::{Entry, Position};
use crate::Result;

/// Most records one keydir-walk group reads at once.
const GROUP_RECORDS: usize = 512;
/// Most record bytes one keydir-walk group reads at once (a larger record is read alone).
const GROUP_BYTES: u64 = 4 << 20;
/// Bytes of one sequential datafile read (a larger record is read whole).
const CHUNK_BYTES: u64 = 4 << 20;

type Item = Result<(Bytes, Bytes)>;

/// The boxed stream behind an [`Iter`].
type ItemStream = Pin<Box<dyn Stream<Item = Item> + Send>>;

/// A stream of `(key, value)` pairs over a [`Snapshot`] (see [`Snapshot::iter`]).
///
/// `Iter: futures::Stream<Item = ringcask::Result<(Bytes, Bytes)>> + Send + Unpin`; use it with
/// `futures::StreamExt::next`. It holds its snapshot (and so its pins) until dropped.
pub struct Iter {
    stream: ItemStream,
}

impl std::fmt::Debug for Iter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iter").finish_non_exhaustive()
    }
}

impl Stream for Iter {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

impl Snapshot {
    /// A stream of every live `(key, value)` of the snapshot, in no particular order.
    ///
    /// Memory stays bounded whatever the store's size (one 4 MiB read buffer). The datafiles
    /// the snapshot points into are read sequentially, in 4 MiB reads (from the page cache on
    /// the polling thread, else through the io threads), and each record is yielded if the
    /// snapshot's keydir points at exactly it. A read error is yielded as an `Err` item and
    /// the stream goes on.
    pub fn iter(&self) -> Iter {
        Iter::files(self.clone())
    }

    /// As [`Snapshot::iter`], over the keys that start with `prefix` only. The stream walks
    /// the snapshot's keydir for the matching keys and reads their values in groups (up to 512
    /// records or 4 MiB), each sorted by file and offset and issued together (reads that miss
    /// the page cache go to the io threads in one submission).
    pub fn iter_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        if prefix.as_ref().is_empty() {
            return self.iter();
        }
        Iter::keydir(self.clone(), Bytes::copy_from_slice(prefix.as_ref()))
    }
}

impl Iter {
    /// Every live record, by sequential reads of the datafiles.
    pub(super) fn files(snap: Snapshot) -> Iter {
        Self::start(snap, Walk::Files { file: 0, offset: 0 })
    }

    /// The live records of the keys starting with `prefix`, by a walk of the keydir.
    pub(super) fn keydir(snap: Snapshot, prefix: Bytes) -> Iter {
        let walk = Walk::Keydir {
            filter: Filter::Prefix(prefix),
            at: Some(Position::default()),
            resume: None,
        };
        Self::start(snap, walk)
    }

    fn start(snap: Snapshot, walk: Walk) -> Iter {
        let state = State {
            snap,
            walk,
            ready: VecDeque::new(),
            vals_from: 0,
        };
        Iter {
            stream: Box::pin(futures::stream::unfold(state, State::next)),
        }
    }
}

/// Which entries a keydir walk takes.
enum Filter {
    Prefix(Bytes),
    /// Entries in datafile `file` at `offset` or after, and those of its values kept apart
    /// at `vals_from` or after in its value file (values lie there in record order).
    FileFrom {
        file: u32,
        offset: u64,
        vals_from: u64,
    },
}

impl Filter {
    fn takes(&self, key: &[u8], e: &Entry) -> bool {
        match self {
            Filter::Prefix(p) => key.starts_with(p),
            Filter::FileFrom {
                file,
                offset,
                vals_from,
            } => {
                if e.is_apart() {
                    e.data_id() == *file && u64::from(e.offset) >= *vals_from
                } else {
                    e.file_id == *file && u64::from(e.offset) >= *offset
                }
            }
        }
    }
}

/// Where a stream stands.
enum Walk {
    /// Reading the snapshot's datafile number `file` (in its list) from `offset`.
    Files {
        file: usize,
        offset: u64,
    },
    /// Walking the keydir from `at` (`None`: done) for entries `filter` takes; then reading
    /// datafiles again from number `resume`, if any.
    Keydir {
        filter: Filter,
        at: Option<Position>,
        resume: Option<usize>,
    },
    Done,
}

struct State {
    snap: Snapshot,
    walk: Walk,
    /// Items read and not yet yielded.
    ready: VecDeque<Item>,
    /// In the datafile being read: the value-file offset past the last value kept apart
    /// whose record was read.
    vals_from: u64,
}

impl State {
    async fn next(mut self) -> Option<(Item, State)> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some((item, self));
            }
            self.walk = match std::mem::replace(&mut self.walk, Walk::Done) {
                Walk::Done => return None,
                Walk::Files { file, offset } => self.read_chunk(file, offset).await,
                Walk::Keydir { filter, at, resume } => match at {
                    Some(at) => self.read_group(filter, at, resume).await,
                    None => match resume {
                        Some(file) => Walk::Files { file, offset: 0 },
                        None => Walk::Done,
                    },
                },
            };
        }
    }

    /// Reads the next chunk of datafile number `file` from `offset`, queues its live records,
    /// and says where to go on.
    async fn read_chunk(&mut self, file: usize, offset: u64) -> Walk {
        let Some(&(id, len)) = self.snap.files().get(file) else {
            return Walk::Done;
        };
        let start = offset.max(FILE_HEADER_LEN as u64);
        if start == FILE_HEADER_LEN as u64 {
            self.vals_from = 0;
        }
        if start >= len {
            return Walk::Files {
                file: file + 1,
                offset: 0,
            };
        }
        let snap = self.snap.clone();
        let inner = match live(&snap) {
            Ok(inner) => inner,
            Err(e) => {
                self.ready.push_back(Err(e));
                return Walk::Done;
            }
        };
        let mut want = (len - start).min(CHUNK_BYTES);
        let buf = loop {
            let what = "length the snapshot saw";
            let buf = match inner.read_bytes(id, start, want as usize, what).await {
                Ok(b) => b,
                Err(e) => {
                    self.ready.push_back(Err(e));
                    return fallback(id, start, self.vals_from, file);
                }
            };
            // A first record larger than the chunk is read whole.
            let first = format::decode_record_header(&buf).map(|h| h.record_len());
            match first {
                Ok(rl) if rl > want && rl <= len - start => want = rl,
                _ => break buf,
            }
        };
        let mut apart = Vec::new();
        let taken = self.take_records(&snap, id, start, &buf, &mut apart);
        // Values kept apart of the live records just read: read like a keydir group.
        let reads = apart.iter().map(|(k, e)| inner.read_value(k, *e));
        let values = futures::future::join_all(reads).await;
        for ((k, _), v) in apart.into_iter().zip(values) {
            self.ready.push_back(v.map(|v| (k, v)));
        }
        let p = match taken {
            Ok(p) => p,
            Err(damaged_at) => return fallback(id, damaged_at, self.vals_from, file),
        };
        let next = start + p as u64;
        if next >= len {
            Walk::Files {
                file: file + 1,
                offset: 0,
            }
        } else {
            Walk::Files { file, offset: next }
        }
    }

    /// Queues the live records of `buf` (bytes of datafile `id` from `start`), those whose
    /// value is kept apart into `apart` (key, entry) for reading; returns how many bytes of
    /// whole records it holds, or the offset of bytes that do not decode.
    fn take_records(
        &mut self,
        snap: &Snapshot,
        id: u32,
        start: u64,
        buf: &[u8],
        apart: &mut Vec<(Bytes, Entry)>,
    ) -> Result<usize, u64> {
        let (view, now) = (snap.view(), snap.now_ms());
        let mut p = 0usize;
        while let Some(rest) = buf.get(p..).filter(|r| r.len() >= RECORD_HEADER_LEN) {
            let at = start + p as u64;
            let header = format::decode_record_header(rest).map_err(|_| at)?;
            let rl = header.record_len() as usize;
            if rest.len() < rl {
                break; // the next chunk starts with it
            }
            let rec = format::decode_record(rest).map_err(|_| at)?;
            if let Some(a) = rec.apart {
                self.vals_from = a.offset + 1;
                let live = view.get(rec.key).filter(|e| {
                    e.file_id == id | crate::layout::VALS_BIT
                        && u64::from(e.offset) == a.offset
                        && e.seq == rec.header.seq
                        && !e.is_expired(now)
                });
                if let Some(e) = live {
                    apart.push((Bytes::copy_from_slice(rec.key), e));
                }
            } else if !rec.header.is_tombstone() {
                let live = view.get(rec.key).is_some_and(|e| {
                    e.file_id == id
                        && u64::from(e.offset) == at
                        && e.seq == rec.header.seq
                        && !e.is_expired(now)
                });
                if live {
                    let kv = (
                        Bytes::copy_from_slice(rec.key),
                        Bytes::copy_from_slice(rec.value),
                    );
                    self.ready.push_back(Ok(kv));
                }
            }
            p += rl;
        }
        if p == 0 {
            // Not even one record: bytes that do not decode.
            return Err(start);
        }
        Ok(p)
    }

    /// Walks the keydir from `at` for the next group of entries `filter` takes, reads them
    /// (sorted by file and offset, all at once) into `ready`.
    async fn read_group(&mut self, filter: Filter, at: Position, resume: Option<usize>) -> Walk {
        let snap = self.snap.clone();
        let now = snap.now_ms();
        let mut group: Vec<(Bytes, Entry)> = Vec::new();
        let mut bytes = 0u64;
        let next = snap.view().visit(at, |k, e| {
            if filter.takes(k, e) && !e.is_expired(now) {
                group.push((Bytes::copy_from_slice(k), *e));
                bytes += u64::from(e.len);
            }
            group.len() < GROUP_RECORDS && bytes < GROUP_BYTES
        });
        let walk = Walk::Keydir {
            filter,
            at: next,
            resume,
        };
        if group.is_empty() {
            return walk;
        }
        let inner = match live(&snap) {
            Ok(inner) => inner,
            Err(e) => {
                self.ready.push_back(Err(e));
                return Walk::Done;
            }
        };
        group.sort_unstable_by_key(|(_, e)| (e.file_id, e.offset));
        let reads = group.iter().map(|(k, e)| inner.read_value(k, *e));
        let values = futures::future::join_all(reads).await;
        for ((k, _), v) in group.into_iter().zip(values) {
            self.ready.push_back(v.map(|v| (k, v)));
        }
        walk
    }
}

/// The engine behind `snap`, or `Closed`.
fn live(snap: &Snapshot) -> Result<&Inner> {
    snap.db().live()
}

/// The rest of datafile `id` from `offset` does not read sequentially: find its live records
/// through the keydir, then go on with the datafile after number `file`.
fn fallback(id: u32, offset: u64, vals_from: u64, file: usize) -> Walk {
    tracing::warn!(
        file_id = id,
        offset,
        "iteration: datafile does not decode from here; reading its live records one by one"
    );
    Walk::Keydir {
        filter: Filter::FileFrom {
            file: id,
            offset,
            vals_from,
        },
        at: Some(Position::default()),
        resume: Some(file + 1),
    }
}
