//! Datafiles on disk: naming, and the sequential scan that recovery uses when no hint exists.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::format::{
    self, DecodeError, FileKind, HintRecord, FILE_HEADER_LEN, FLAG_BATCH, FLAG_BATCH_END,
    RECORD_HEADER_LEN,
};

/// How a scan treats a damaged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanMode {
    /// Stop at the first damaged record and report where (the caller decides).
    Stop,
    /// Skip damaged regions: search forward for the next valid record.
    Skip,
}

/// How a scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// The last record ends exactly at the end of the file.
    Clean,
    /// Only zero bytes follow the last valid record (preallocated space).
    ZeroTail,
    /// A record at `offset` is damaged or torn and non-zero bytes follow.
    Damaged { offset: u64, reason: String },
}

/// Result of scanning one datafile.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    /// Length of the file on disk.
    pub file_len: u64,
    /// End of the last committed record (a torn batch is not committed).
    pub valid_end: u64,
    /// How the scan ended.
    pub end: ScanEnd,
    /// Bytes skipped over damaged regions (only in [`ScanMode::Skip`]).
    pub skipped_bytes: u64,
}

/// Why a datafile could not be scanned at all.
#[derive(Debug)]
pub(crate) enum ScanError {
    Io(io::Error),
    /// The file header is unusable. `torn` means the file is shorter than a header or its
    /// header bytes are all zero (a creation cut short).
    Header {
        err: DecodeError,
        torn: bool,
    },
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Io(e)
    }
}

const CHUNK_BYTES: usize = 1 << 20;

/// A read window over a file, refilled with positioned reads.
struct Window<'f> {
    file: &'f File,
    file_len: u64,
    buf: Vec<u8>,
    start: u64,
}

impl<'f> Window<'f> {
    fn new(file: &'f File, file_len: u64) -> Self {
        Window {
            file,
            file_len,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Up to `len` bytes at `off` (fewer only at the end of the file).
    fn at(&mut self, off: u64, len: usize) -> io::Result<&[u8]> {
        let want_end = off.saturating_add(len as u64).min(self.file_len);
        let have_end = self.start + self.buf.len() as u64;
        if off < self.start || want_end > have_end {
            let n = (want_end - off)
                .max(CHUNK_BYTES as u64)
                .min(self.file_len - off) as usize;
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, off)?;
            self.start = off;
        }
        let s = (off - self.start) as usize;
        let e = (want_end - self.start) as usize;
        Ok(&self.buf[s..e])
    }
}

/// Reads and checks the header of datafile `id`.
pub(crate) fn check_header(file: &File, file_len: u64, id: u32) -> Result<(), ScanError> {
    let mut hdr = vec![0u8; FILE_HEADER_LEN.min(file_len as usize)];
    file.read_exact_at(&mut hdr, 0)?;
    match format::decode_file_header(&hdr, FileKind::Data) {
        Ok(found) if found == id => Ok(()),
        Ok(_) => Err(ScanError::Header {
            err: DecodeError::Invalid("file id in header does not match file name"),
            torn: false,
        }),
        Err(err) => {
            let torn = hdr.len() < FILE_HEADER_LEN || hdr.iter().all(|&b| b == 0);
            Err(ScanError::Header { err, torn })
        }
    }
}

/// Whether every byte of `[from, file_len)` is zero.
fn zero_from(w: &mut Window<'_>, from: u64) -> io::Result<bool> {
    let mut off = from;
    while off < w.file_len {
        let chunk = w.at(off, CHUNK_BYTES)?;
        if chunk.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        off += chunk.len() as u64;
    }
    Ok(true)
}

/// Tries to decode a whole record at `off`; its length on success.
fn record_at(w: &mut Window<'_>, off: u64) -> io::Result<Result<u64, DecodeError>> {
    let hdr = w.at(off, RECORD_HEADER_LEN)?;
    let h = match format::decode_record_header(hdr) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    let len = h.record_len();
    if off + len > w.file_len {
        return Ok(Err(DecodeError::Truncated {
            needed: len,
            available: w.file_len - off,
        }));
    }
    let bytes = w.at(off, len as usize)?;
    Ok(format::decode_record(bytes).map(|_| len))
}

/// Scans datafile `id`, calling `apply` for every committed record in file order. Records of an
/// atomic batch are applied only once the batch's last record has been read.
pub(crate) fn scan(
    path: &Path,
    id: u32,
    mode: ScanMode,
    mut apply: impl FnMut(&HintRecord<'_>),
) -> Result<ScanOutcome, ScanError> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    check_header(&file, file_len, id)?;
    let mut w = Window::new(&file, file_len);
    let mut off = FILE_HEADER_LEN as u64;
    let mut skipped_bytes = 0u64;
    // Records of a batch whose end has not been seen yet: (key, hint) and where it started.
    let mut batch: Vec<(Vec<u8>, HintRecord<'static>)> = Vec::new();
    let mut batch_start = off;
    loop {
        if off == file_len {
            if batch.is_empty() {
                return Ok(ScanOutcome {
                    file_len,
                    valid_end: off,
                    end: ScanEnd::Clean,
                    skipped_bytes,
                });
            }
            // The file ends inside a batch: treat it like a damaged record at the batch start.
            let end = ScanEnd::Damaged {
                offset: batch_start,
                reason: "file ends inside an atomic batch".into(),
            };
            match mode {
                ScanMode::Stop => {
                    return Ok(ScanOutcome {
                        file_len,
                        valid_end: batch_start,
                        end,
                        skipped_bytes,
                    })
                }
                ScanMode::Skip => {
                    skipped_bytes += off - batch_start;
                    batch.clear();
                    continue;
                }
            }
        }
        let res = record_at(&mut w, off)?;
        let len = match res {
            Ok(len) => len,
            Err(err) => {
                let cut = if batch.is_empty() { off } else { batch_start };
                if zero_from(&mut w, off)? {
                    skipped_bytes += if mode == ScanMode::Skip { off - cut } else { 0 };
                    return Ok(ScanOutcome {
                        file_len,
                        valid_end: cut,
                        end: if cut == off {
                            ScanEnd::ZeroTail
                        } else {
                            ScanEnd::Damaged {
                                offset: cut,
                                reason: "file ends inside an atomic batch".into(),
                            }
                        },
                        skipped_bytes,
                    });
                }
                match mode {
                    ScanMode::Stop => {
                        return Ok(ScanOutcome {
                            file_len,
                            valid_end: cut,
                            end: ScanEnd::Damaged {
                                offset: off,
                                reason: err.to_string(),
                            },
                            skipped_bytes,
                        })
                    }
                    ScanMode::Skip => {
                        // Resynchronise: the next offset where a whole valid record decodes.
                        let mut next = off + 1;
                        while next < file_len && record_at(&mut w, next)?.is_err() {
                            next += 1;
                        }
                        tracing::warn!(
                            file = %path.display(),
                            offset = off,
                            skipped = next - cut,
                            "skipping damaged records: {err}"
                        );
                        skipped_bytes += next - cut;
                        batch.clear();
                        off = next;
                        continue;
                    }
                }
            }
        };
        let bytes = w.at(off, len as usize)?;
        let rec = match format::decode_record(bytes) {
            Ok(r) => r,
            Err(e) => {
                return Err(ScanError::Io(io::Error::other(format!(
                    "record at {off} changed between reads: {e}"
                ))))
            }
        };
        let hint = HintRecord {
            seq: rec.header.seq,
            expiry_ms: rec.header.expiry_ms,
            offset: off,
            record_len: len as u32,
            tombstone: rec.header.is_tombstone(),
            key: rec.key,
        };
        let flags = rec.header.flags;
        if flags & FLAG_BATCH != 0 {
            if batch.is_empty() {
                batch_start = off;
            }
            batch.push((rec.key.to_vec(), HintRecord { key: &[], ..hint }));
            if flags & FLAG_BATCH_END != 0 {
                for (key, h) in batch.drain(..) {
                    apply(&HintRecord { key: &key, ..h });
                }
            }
        } else if !batch.is_empty() {
            // A plain record after an unterminated batch: the batch was torn mid-file.
            let end = ScanEnd::Damaged {
                offset: batch_start,
                reason: "atomic batch without its end record".into(),
            };
            match mode {
                ScanMode::Stop => {
                    return Ok(ScanOutcome {
                        file_len,
                        valid_end: batch_start,
                        end,
                        skipped_bytes,
                    })
                }
                ScanMode::Skip => {
                    skipped_bytes += off - batch_start;
                    batch.clear();
                    apply(&hint);
                }
            }
        } else {
            apply(&hint);
        }
        off += len;
    }
}
