//! One merge output: a datafile, its hint and (when the store keeps values apart) its value
//! file, written under temporary names.

use crate::files::hint::HintBuilder;
use crate::format::{self, HintRecord};
use crate::io::IoFile;
use crate::keydir::Entry;

/// Output bytes buffered before one append.
pub(super) const OUT_BUF_BYTES: usize = 1 << 20;

/// One output datafile being written.
pub(super) struct Output {
    pub(super) id: u32,
    pub(super) file: IoFile,
    /// Bytes written so far.
    pub(super) len: u64,
    pub(super) buf: Vec<u8>,
    pub(super) hint: HintBuilder,
    pub(super) min_seq: u64,
    /// Tombstone bytes (dead from the start).
    pub(super) dead_bytes: u64,
    /// The output's value file, when the store keeps values apart.
    pub(super) vals: Option<OutVals>,
}

/// The value file of a merge output being written.
pub(super) struct OutVals {
    pub(super) file: IoFile,
    /// Bytes written so far (the header block included).
    pub(super) len: u64,
    pub(super) buf: Vec<u8>,
}

impl OutVals {
    /// Bytes of the file once its buffer is written.
    pub(super) fn end(&self) -> u64 {
        self.len + self.buf.len() as u64
    }
}

impl Output {
    /// Buffers one record; returns its offset and length in the file.
    pub(super) fn append(
        &mut self,
        seq: u64,
        expiry_ms: u64,
        flags: u8,
        key: &[u8],
        value: &[u8],
    ) -> (u64, u32) {
        let at = self.len + self.buf.len() as u64;
        let start = self.buf.len();
        format::encode_record(&mut self.buf, seq, expiry_ms, flags, key, value);
        self.min_seq = self.min_seq.min(seq);
        (at, (self.buf.len() - start) as u32)
    }

    /// Buffers one record whose value goes to the value file (the output has one); returns
    /// the record's offset and length, and where the value lies.
    pub(super) fn append_apart(
        &mut self,
        seq: u64,
        expiry_ms: u64,
        key: &[u8],
        value: &[u8],
    ) -> (u64, u32, format::Apart) {
        let at = self.len + self.buf.len() as u64;
        let Some(vals) = self.vals.as_mut() else {
            unreachable!("only called on an output with a value file");
        };
        let apart = format::Apart {
            offset: vals.end(),
            // `goes_apart` bounds it by the format's value limit.
            len: value.len() as u32,
            crc: format::value_crc(value),
        };
        vals.buf.extend_from_slice(value);
        let padded =
            vals.buf.len() + (format::vals_span(value.len() as u64) as usize - value.len());
        vals.buf.resize(padded, 0);
        let start = self.buf.len();
        format::encode_record_apart(&mut self.buf, seq, expiry_ms, 0, key, apart);
        self.min_seq = self.min_seq.min(seq);
        (at, (self.buf.len() - start) as u32, apart)
    }

    /// Buffers a live record copied from an input (its value apart when the output keeps
    /// values apart and the value's size goes apart), with its hint; returns the keydir entry
    /// that will point at it.
    pub(super) fn append_copy(
        &mut self,
        seq: u64,
        expiry_ms: u64,
        key: &[u8],
        value: &[u8],
    ) -> Entry {
        let (at, len, apart) = if self.vals.is_some() && format::goes_apart(value.len()) {
            let (at, len, a) = self.append_apart(seq, expiry_ms, key, value);
            (at, len, Some(a))
        } else {
            let (at, len) = self.append(seq, expiry_ms, 0, key, value);
            (at, len, None)
        };
        self.hint.push(&HintRecord {
            seq,
            expiry_ms,
            offset: at,
            record_len: len,
            tombstone: false,
            key,
            apart,
        });
        Entry::located(seq, expiry_ms, self.id, (at, len), apart)
    }

    /// Bytes of the datafile and the value file once their buffers are written.
    pub(super) fn total_len(&self) -> u64 {
        self.len + self.buf.len() as u64 + self.vals.as_ref().map_or(0, OutVals::end)
    }

    /// Appends the buffers once they are large; returns the bytes written.
    pub(super) async fn flush_if_full(&mut self) -> std::io::Result<u64> {
        let vals = self.vals.as_ref().map_or(0, |v| v.buf.len());
        if self.buf.len() >= OUT_BUF_BYTES || vals >= OUT_BUF_BYTES {
            return self.flush().await;
        }
        Ok(0)
    }

    /// Appends both buffers; returns the bytes written.
    pub(super) async fn flush(&mut self) -> std::io::Result<u64> {
        let mut n = 0;
        if let Some(v) = self.vals.as_mut().filter(|v| !v.buf.is_empty()) {
            let buf = std::mem::take(&mut v.buf);
            let len = buf.len() as u64;
            let (res, mut buf) = v.file.write_all_at(buf, v.len).await;
            res?;
            v.len += len;
            n += len;
            buf.clear();
            v.buf = buf;
        }
        if self.buf.is_empty() {
            return Ok(n);
        }
        let buf = std::mem::take(&mut self.buf);
        let d = buf.len() as u64;
        let (res, mut buf) = self.file.write_all_at(buf, self.len).await;
        res?;
        self.len += d;
        buf.clear();
        self.buf = buf;
        Ok(n + d)
    }
}
