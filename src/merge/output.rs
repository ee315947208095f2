//! One merge output: a datafile and its hint, written under temporary names.

use crate::files::hint::HintBuilder;
use crate::format;
use crate::io::IoFile;

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

    /// Appends the buffer once it is large; returns the bytes written.
    pub(super) async fn flush_if_full(&mut self) -> std::io::Result<u64> {
        if self.buf.len() >= OUT_BUF_BYTES {
            return self.flush().await;
        }
        Ok(0)
    }

    pub(super) async fn flush(&mut self) -> std::io::Result<u64> {
        if self.buf.is_empty() {
            return Ok(0);
        }
        let buf = std::mem::take(&mut self.buf);
        let n = buf.len() as u64;
        let (res, mut buf) = self.file.write_all_at(buf, self.len).await;
        res?;
        self.len += n;
        buf.clear();
        self.buf = buf;
        Ok(n)
    }
}
