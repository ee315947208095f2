//! The read path of the handle: value cache, page-cache reads on the caller's thread, reads
//! through the io threads, and the check of every record read.

use bytes::Bytes;
use std::sync::atomic::Ordering;
use tokio::sync::oneshot;

use super::Inner;
use crate::format;
use crate::keydir::Entry;
use crate::layout;
use crate::read::reader::{ReadReq, ReaderMsg};
use crate::{Error, Result};

impl Inner {
    /// The value of the record `e` points at: from the value cache, or read, verified and
    /// then cached.
    pub(super) async fn read_value(&self, key: &[u8], e: Entry) -> Result<Bytes> {
        let Some(cache) = &self.cache else {
            return self.read_record(key, e).await;
        };
        if let Some(v) = cache.get(&e) {
            self.shared.reads_cached.add(1);
            return Ok(v);
        }
        let v = self.read_record(key, e).await?;
        cache.insert(&e, &v);
        Ok(v)
    }

    /// Reads and verifies the record `e` points at; returns its value.
    async fn read_record(&self, key: &[u8], e: Entry) -> Result<Bytes> {
        let offset = u64::from(e.offset);
        let failed = |err: std::io::Error| {
            let file = layout::data_path(&self.dir, e.file_id);
            let what = format!(
                "reading {} bytes at offset {offset} of {}",
                e.len,
                file.display()
            );
            Error::Io(crate::io::context(err, what))
        };
        if self.opts.inline_reads {
            let read = self.files.read_nowait(e.file_id, offset, e.len as usize);
            if let Some(buf) = read.map_err(failed)? {
                self.shared.reads_inline.add(1);
                return self.verify(key, e, buf);
            }
        }
        self.shared.reads_io_thread.add(1);
        let n = self.readers.len();
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % n;
        let (reply, rx) = oneshot::channel();
        let req = ReadReq {
            file_id: e.file_id,
            offset,
            len: e.len as usize,
            reply,
        };
        self.readers[i]
            .send(ReaderMsg::Read(req))
            .await
            .map_err(|_| Error::Closed)?;
        let file = || layout::data_path(&self.dir, e.file_id);
        let buf = match rx.await.map_err(|_| Error::Closed)? {
            Ok(b) => b,
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(Error::Corrupt {
                    file: file(),
                    offset,
                    reason: "datafile is shorter than the record the keydir points at".into(),
                })
            }
            Err(err) => return Err(failed(err)),
        };
        self.verify(key, e, buf)
    }

    /// Checks the record read for `e` (CRC, key, seq) and returns its value.
    fn verify(&self, key: &[u8], e: Entry, buf: Vec<u8>) -> Result<Bytes> {
        let file = || layout::data_path(&self.dir, e.file_id);
        let corrupt = |reason: String| Error::Corrupt {
            file: file(),
            offset: u64::from(e.offset),
            reason,
        };
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
