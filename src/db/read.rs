//! The read path of the handle: value cache, page-cache reads on the caller's thread, reads
//! through the io threads, and the check of every record read.

use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::oneshot;

use super::Inner;
use crate::format;
use crate::keydir::Entry;
use crate::layout;
use crate::read::reader::{ReadReq, ReaderMsg};
use crate::read::regime;
use crate::state::Shared;
use crate::write::{Op, ReqRef};
use crate::{Error, IoMode, Result};

/// A read that reads ahead into the value cache reads to the end of the record's last block
/// of this size: what an `O_DIRECT` read of the record reads anyway. A wider window warmed
/// the cache faster but read more from the device than the record needs (DESIGN §4).
const BLOCK: u64 = 4096;

/// A value read, with the bytes read after its record.
struct ReadValue {
    value: Bytes,
    rest: Vec<u8>,
}

impl ReadValue {
    fn rest(&self) -> Option<&[u8]> {
        (!self.rest.is_empty()).then_some(&self.rest[..])
    }
}

/// Counts a read at the io threads while it lives (a cancelled `get` drops it too).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Inner {
    /// Drops an expired entry from the keydir and counts its record as dead.
    pub(super) fn reclaim_expired(&self, key: &[u8], e: Entry) {
        if self.keydir.remove_if_seq(key, e.seq).is_some() {
            self.shared
                .with_usage(|u| Shared::add_dead(u, e.data_id(), e.footprint(key.len())));
        }
    }

    /// Under [`crate::IoMode::Direct`] (whose reads bypass the page cache) the value cache is
    /// filled by writes too: the values `req` just appended, whose last record has seq `last`.
    /// Done after the append lock is released; a value whose key was overwritten meanwhile
    /// (its keydir entry has another seq) is skipped. Writes the writer thread appends
    /// (rotation, large batches) are cached on first read instead.
    pub(super) fn fill_cache(&self, req: ReqRef<'_>, last: u64) {
        let Some(cache) = &self.cache else { return };
        if self.opts.io_mode != crate::IoMode::Direct {
            return;
        }
        let fill = |seq: u64, key: &[u8], value: &[u8]| {
            if let Some(e) = self.keydir.get(key).filter(|e| e.seq == seq) {
                cache.insert_slice(&e, value);
            }
        };
        match req {
            ReqRef::Single(Op::Put { key, value, .. })
            | ReqRef::If(Op::Put { key, value, .. }, _) => fill(last, key, value),
            ReqRef::Single(_) | ReqRef::If(..) => {}
            ReqRef::Batch(ops, _) => {
                let first = last + 1 - ops.len() as u64;
                for (i, op) in ops.iter().enumerate() {
                    if let Op::Put { key, value, .. } = op {
                        fill(first + i as u64, key, value);
                    }
                }
            }
        }
    }

    /// The value of the record `e` points at: from the value cache, or read, verified and
    /// then cached. While the cache could hold every live record
    /// ([`crate::read::cache::ValueCache::reads_ahead`]), an `O_DIRECT` read of a record
    /// stored with its value (which reads whole blocks anyway) also returns the rest of the
    /// block it ends in, and the live values stored there after it are cached too
    /// ([`crate::read::cache::ValueCache::insert_following`]): in direct mode, where nothing
    /// else caches them, values then warm a block at a time, as the page cache does. (Read
    /// through the page cache, the neighbours' pages are cached already, and a read from
    /// there costs about what caching them would: measured, it was a loss there.)
    pub(super) async fn read_value(&self, key: &[u8], e: Entry) -> Result<Bytes> {
        let Some(cache) = &self.cache else {
            return Ok(self.read_record(key, e, 0).await?.value);
        };
        if let Some(v) = cache.get(&e) {
            self.shared.reads_cached.add(1);
            return Ok(v);
        }
        let end = u64::from(e.offset) + u64::from(e.len);
        // Only direct reads return more than the record: buffered ones skip the check.
        let ahead = !e.is_apart()
            && self.opts.io_mode == IoMode::Direct
            && cache.reads_ahead(|| (self.shared.live_bytes(), self.keydir.len()));
        let upto = match ahead {
            true => (end.next_multiple_of(BLOCK) - u64::from(e.offset)) as usize,
            false => 0,
        };
        let v = self.read_record(key, e, upto).await?;
        cache.insert(&e, &v.value);
        if let Some(rest) = v.rest() {
            let n = cache.insert_following(&self.keydir, e.file_id, end, rest);
            self.shared.values_read_ahead.add(n);
        }
        Ok(v.value)
    }

    /// Reads and verifies the record `e` points at; returns its value, and (when `upto` asks
    /// for them) the bytes that follow it, up to `upto` from its start.
    async fn read_record(&self, key: &[u8], e: Entry, upto: usize) -> Result<ReadValue> {
        let len = e.len as usize;
        let mut buf = self
            .read_span(
                e.file_id,
                u64::from(e.offset),
                len,
                upto,
                "record the keydir points at",
            )
            .await?;
        let rest = match buf.len() > len {
            true => {
                let rest = buf.split_off(len);
                // A value the cache keeps shared must not pin the bytes that followed it.
                buf.shrink_to_fit();
                rest
            }
            false => Vec::new(),
        };
        Ok(ReadValue {
            value: self.verify(key, e, buf)?,
            rest,
        })
    }

    /// Exactly `len` bytes at `offset` of datafile `file_id` (see [`Inner::read_span`]).
    pub(super) async fn read_bytes(
        &self,
        file_id: u32,
        offset: u64,
        len: usize,
        what: &str,
    ) -> Result<Vec<u8>> {
        self.read_span(file_id, offset, len, 0, what).await
    }

    /// `len` bytes at `offset` of datafile `file_id`: from the direct-IO writer's tail for
    /// bytes not written yet, from the page cache on this thread when it holds them all, else
    /// through an io thread. A file shorter than that is [`Error::Corrupt`] (`what` names what
    /// was expected there). An `O_DIRECT` read through the ring also returns the bytes after
    /// them that the blocks it read hold, up to `upto` in all.
    async fn read_span(
        &self,
        file_id: u32,
        offset: u64,
        len: usize,
        upto: usize,
        what: &str,
    ) -> Result<Vec<u8>> {
        let tail = self.appender.tail_for(file_id);
        let Some((from, held)) = tail.read(file_id, offset, len) else {
            return self.read_file(file_id, offset, len, upto, what).await;
        };
        self.shared.reads_tail.add(1);
        // The bytes before `from` were written before the tail let go of them.
        let mut buf = match (from - offset) as usize {
            0 => held,
            n => {
                let mut head = self.read_file(file_id, offset, n, 0, what).await?;
                head.extend_from_slice(&held);
                head
            }
        };
        if buf.len() < len {
            return Err(Error::Corrupt {
                file: layout::read_path(&self.dir, file_id),
                offset,
                reason: format!("file is shorter than the {what}"),
            });
        }
        buf.truncate(len);
        Ok(buf)
    }

    /// `len` bytes at `offset` of datafile `file_id`, read from the file, and maybe more up to
    /// `upto` (see [`Inner::read_span`]).
    async fn read_file(
        &self,
        file_id: u32,
        offset: u64,
        len: usize,
        upto: usize,
        what: &str,
    ) -> Result<Vec<u8>> {
        let failed = |err| self.read_failed(err, file_id, offset, len, what);
        // Inline first unless this thread's recent attempts mostly missed: a miss starts the
        // disk read on this thread (see `read::regime`).
        // Direct mode reads sealed files around the page cache, and the active file too when
        // the direct-IO writer writes it; otherwise the active file stays buffered (its last
        // block is still being written through the page cache).
        let direct = self.opts.io_mode == IoMode::Direct
            && (layout::data_id(file_id) != self.shared.active_file_id.load(Ordering::Relaxed)
                || self.appender.tail_for(file_id).holds(file_id));
        let in_flight = self.reads_in_flight.load(Ordering::Relaxed);
        if self.opts.inline_reads && !direct && regime::try_inline(in_flight) {
            let got = self
                .files
                .read_nowait(file_id, offset, len)
                .map_err(failed)?;
            regime::record(got.is_some());
            if let Some(buf) = got {
                self.shared.reads_inline.add(1);
                return Ok(buf);
            }
        }
        let _in_flight = InFlight::new(&self.reads_in_flight);
        if let Some(ring) = &self.ring_reads {
            match ring.read(file_id, offset, len, upto, direct).await {
                Ok(Some(read)) => {
                    self.shared.reads_ring.add(1);
                    if direct {
                        self.shared.reads_direct.add(1);
                    }
                    if read.registered {
                        self.shared.reads_registered.add(1);
                    }
                    return Ok(read.bytes);
                }
                // The file system refuses `O_DIRECT` for this file: a read thread reads it.
                Ok(None) => {}
                Err(err) => return Err(self.read_failed(err, file_id, offset, len, what)),
            }
        }
        self.shared.reads_io_thread.add(1);
        let n = self.readers.len();
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % n;
        let (reply, rx) = oneshot::channel();
        let req = ReadReq {
            file_id,
            offset,
            len,
            direct,
            reply,
        };
        self.readers[i]
            .send(ReaderMsg::Read(req))
            .await
            .map_err(|_| Error::Closed)?;
        let read = rx
            .await
            .map_err(|_| Error::Closed)?
            .map_err(|err| self.read_failed(err, file_id, offset, len, what))?;
        if read.direct {
            self.shared.reads_direct.add(1);
        }
        if read.registered {
            self.shared.reads_registered.add(1);
        }
        Ok(read.bytes)
    }

    /// The error for a failed read of `len` bytes at `offset` of datafile `file_id`: a file
    /// that ends before them is [`Error::Corrupt`] (`what` names what was expected there).
    fn read_failed(
        &self,
        err: std::io::Error,
        file_id: u32,
        offset: u64,
        len: usize,
        what: &str,
    ) -> Error {
        let file = layout::read_path(&self.dir, file_id);
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            return Error::Corrupt {
                file,
                offset,
                reason: format!("file is shorter than the {what}"),
            };
        }
        let what = format!(
            "reading {len} bytes at offset {offset} of {}",
            file.display()
        );
        Error::Io(crate::io::context(err, what))
    }

    /// Checks the record read for `e` (CRC, key, seq) and returns its value; a value kept
    /// apart is checked against the CRC the keydir holds.
    fn verify(&self, key: &[u8], e: Entry, buf: Vec<u8>) -> Result<Bytes> {
        let file = || layout::read_path(&self.dir, e.file_id);
        let corrupt = |reason: String| Error::Corrupt {
            file: file(),
            offset: u64::from(e.offset),
            reason,
        };
        if e.is_apart() {
            if format::value_crc(&buf) != e.crc {
                return Err(corrupt("value kept apart fails its checksum".into()));
            }
            return Ok(Bytes::from(buf));
        }
        let rec = format::decode_record(&buf).map_err(|d| corrupt(d.to_string()))?;
        if rec.key != key || rec.header.seq != e.seq || rec.header.is_tombstone() {
            return Err(corrupt("record does not match the keydir entry".into()));
        }
        let start = format::RECORD_HEADER_LEN + key.len();
        let end = start + rec.value.len();
        let mut b = Bytes::from(buf);
        if end == b.len() {
            // The value ends the record: moving the start keeps the buffer's own allocation,
            // where `slice` would allocate a shared header for it.
            bytes::Buf::advance(&mut b, start);
            Ok(b)
        } else {
            Ok(b.slice(start..end))
        }
    }
}
