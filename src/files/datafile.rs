#![deny(clippy::indexing_slicing)]
//! Datafiles on disk: naming, and the sequential scan that recovery uses when no hint exists.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::fault::FaultInjector;
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
    fault: Option<&'f FaultInjector>,
    file_len: u64,
    buf: Vec<u8>,
    start: u64,
    /// The datafile's value file, when it has one: a record whose value is kept apart is
    /// whole only when its value there verifies.
    vals: Option<&'f File>,
    /// Buffer for a value read from `vals`.
    value: Vec<u8>,
}

impl<'f> Window<'f> {
    fn new(file: &'f File, file_len: u64, fault: Option<&'f FaultInjector>) -> Self {
        Window {
            file,
            fault,
            file_len,
            buf: Vec::new(),
            start: 0,
            vals: None,
            value: Vec::new(),
        }
    }

    /// Whether the value kept apart at `a` is in the value file, whole (`Ok(false)` when it
    /// is missing, short or fails its CRC: the write that carried it did not complete).
    fn value_verifies(&mut self, a: format::Apart) -> io::Result<bool> {
        let Some(vals) = self.vals else {
            return Ok(false);
        };
        self.value.resize(a.len as usize, 0);
        match crate::io::read_exact_at(self.fault, vals, &mut self.value, a.offset) {
            Ok(()) => Ok(format::value_crc(&self.value) == a.crc),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
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
            crate::io::read_exact_at(self.fault, self.file, &mut self.buf, off)?;
            self.start = off;
        }
        let s = (off - self.start) as usize;
        let e = (want_end - self.start) as usize;
        self.buf
            .get(s..e)
            .ok_or_else(|| io::Error::other("read window out of range"))
    }
}

/// Reads and checks the header of datafile `id`.
///
/// A header that does not decode is reported as *torn* — a creation cut short, which the
/// caller may drop if this is the last file — when the file is shorter than a header, or when
/// only zero bytes follow the header's 20 bytes and the header is not that of another format
/// version. A power cut can leave any mix of a never-synced header's bytes on disk, but no
/// record can follow it: a datafile's header is synced before anything is appended.
pub(crate) fn check_header(
    file: &File,
    file_len: u64,
    id: u32,
    fault: Option<&FaultInjector>,
) -> Result<(), ScanError> {
    let mut hdr = vec![0u8; FILE_HEADER_LEN.min(file_len as usize)];
    crate::io::read_exact_at(fault, file, &mut hdr, 0)?;
    match format::decode_file_header(&hdr, FileKind::Data) {
        Ok(found) if found == id => Ok(()),
        Ok(_) => Err(ScanError::Header {
            err: DecodeError::Invalid("file id in header does not match file name"),
            torn: false,
        }),
        Err(err) => {
            // A torn version field reads as 0 (this version is 1, nothing else was written).
            let foreign = matches!(err, DecodeError::UnsupportedVersion(v) if v != 0);
            let torn = hdr.len() < FILE_HEADER_LEN
                || (!foreign
                    && zero_from(
                        &mut Window::new(file, file_len, fault),
                        FILE_HEADER_LEN as u64,
                    )?);
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
    let apart = match format::decode_record(bytes) {
        Ok(rec) => rec.apart,
        Err(e) => return Ok(Err(e)),
    };
    match apart {
        Some(a) if !w.value_verifies(a)? => Ok(Err(DecodeError::Invalid(
            "the value kept apart is missing from the value file or damaged",
        ))),
        _ => Ok(Ok(len)),
    }
}

/// The value file beside the datafile at `path`, if there is one.
fn open_vals(path: &Path, id: u32) -> io::Result<Option<File>> {
    let dir = path.parent().unwrap_or(Path::new(""));
    match File::open(crate::layout::vals_path(dir, id)) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Scans datafile `id`, calling `apply` for every committed record in file order. Records of an
/// atomic batch are applied only once the batch's last record has been read.
pub(crate) fn scan(
    path: &Path,
    id: u32,
    mode: ScanMode,
    fault: Option<&FaultInjector>,
    mut apply: impl FnMut(&HintRecord<'_>),
) -> Result<ScanOutcome, ScanError> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    check_header(&file, file_len, id, fault)?;
    let vals = open_vals(path, id)?;
    let mut w = Window::new(&file, file_len, fault);
    w.vals = vals.as_ref();
    let mut s = Scanner {
        path,
        mode,
        file_len,
        off: FILE_HEADER_LEN as u64,
        skipped_bytes: 0,
        batch: Vec::new(),
        batch_start: FILE_HEADER_LEN as u64,
    };
    loop {
        let done = if s.off == file_len {
            s.at_end()
        } else {
            match record_at(&mut w, s.off)? {
                Ok(len) => s.record(&mut w, len, &mut apply)?,
                Err(err) => s.damaged(&mut w, &err)?,
            }
        };
        if let Some(outcome) = done {
            return Ok(outcome);
        }
    }
}

/// The state of one scan, advanced a record at a time. Each step returns the outcome once the
/// scan is over.
struct Scanner<'p> {
    path: &'p Path,
    mode: ScanMode,
    file_len: u64,
    /// Offset of the next record.
    off: u64,
    skipped_bytes: u64,
    /// Records of a batch whose end has not been seen yet: (key, hint with an empty key).
    batch: Vec<(Vec<u8>, HintRecord<'static>)>,
    /// Where that batch started.
    batch_start: u64,
}

impl Scanner<'_> {
    fn outcome(&self, valid_end: u64, end: ScanEnd) -> ScanOutcome {
        ScanOutcome {
            file_len: self.file_len,
            valid_end,
            end,
            skipped_bytes: self.skipped_bytes,
        }
    }

    /// The end of the file is reached.
    fn at_end(&mut self) -> Option<ScanOutcome> {
        if self.batch.is_empty() {
            return Some(self.outcome(self.off, ScanEnd::Clean));
        }
        self.cut_short("file ends inside an atomic batch")
    }

    /// The batch in progress was cut short at `self.off`: under [`ScanMode::Stop`] the scan ends
    /// at the batch's start, under [`ScanMode::Skip`] the batch's bytes are skipped.
    fn cut_short(&mut self, reason: &str) -> Option<ScanOutcome> {
        let start = self.batch_start;
        match self.mode {
            ScanMode::Stop => Some(self.outcome(
                start,
                ScanEnd::Damaged {
                    offset: start,
                    reason: reason.into(),
                },
            )),
            ScanMode::Skip => {
                self.skipped_bytes += self.off - start;
                self.batch.clear();
                None
            }
        }
    }

    /// No valid record decodes at `self.off`.
    fn damaged(
        &mut self,
        w: &mut Window<'_>,
        err: &DecodeError,
    ) -> io::Result<Option<ScanOutcome>> {
        let off = self.off;
        let cut = if self.batch.is_empty() {
            off
        } else {
            self.batch_start
        };
        if zero_from(w, off)? {
            if self.mode == ScanMode::Skip {
                self.skipped_bytes += off - cut;
            }
            let end = if cut == off {
                ScanEnd::ZeroTail
            } else {
                ScanEnd::Damaged {
                    offset: cut,
                    reason: "file ends inside an atomic batch".into(),
                }
            };
            return Ok(Some(self.outcome(cut, end)));
        }
        match self.mode {
            ScanMode::Stop => Ok(Some(self.outcome(
                cut,
                ScanEnd::Damaged {
                    offset: off,
                    reason: err.to_string(),
                },
            ))),
            ScanMode::Skip => {
                self.resynchronise(w, cut, err)?;
                Ok(None)
            }
        }
    }

    /// Skips from `cut` to the next offset where a whole valid record decodes.
    fn resynchronise(&mut self, w: &mut Window<'_>, cut: u64, err: &DecodeError) -> io::Result<()> {
        let mut next = self.off + 1;
        while next < self.file_len && record_at(w, next)?.is_err() {
            next += 1;
        }
        tracing::warn!(
            file = %self.path.display(),
            offset = self.off,
            skipped = next - cut,
            "skipping damaged records: {err}"
        );
        self.skipped_bytes += next - cut;
        self.batch.clear();
        self.off = next;
        Ok(())
    }

    /// Applies the valid record of `len` bytes at `self.off` (or holds it back while its batch
    /// is open).
    fn record(
        &mut self,
        w: &mut Window<'_>,
        len: u64,
        apply: &mut impl FnMut(&HintRecord<'_>),
    ) -> Result<Option<ScanOutcome>, ScanError> {
        let off = self.off;
        let bytes = w.at(off, len as usize)?;
        let rec = format::decode_record(bytes).map_err(|e| {
            ScanError::Io(io::Error::other(format!(
                "record at {off} changed between reads: {e}"
            )))
        })?;
        let hint = HintRecord {
            seq: rec.header.seq,
            expiry_ms: rec.header.expiry_ms,
            offset: off,
            record_len: len as u32,
            tombstone: rec.header.is_tombstone(),
            key: rec.key,
            apart: rec.apart,
        };
        let flags = rec.header.flags;
        if flags & FLAG_BATCH != 0 {
            if self.batch.is_empty() {
                self.batch_start = off;
            }
            self.batch
                .push((rec.key.to_vec(), HintRecord { key: &[], ..hint }));
            if flags & FLAG_BATCH_END != 0 {
                for (key, h) in self.batch.drain(..) {
                    apply(&HintRecord { key: &key, ..h });
                }
            }
        } else {
            if !self.batch.is_empty() {
                // A plain record after an unterminated batch: the batch was torn mid-file.
                if let Some(done) = self.cut_short("atomic batch without its end record") {
                    return Ok(Some(done));
                }
            }
            apply(&hint);
        }
        self.off += len;
        Ok(None)
    }
}
