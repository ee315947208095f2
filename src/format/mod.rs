#![deny(clippy::indexing_slicing)]
//! The on-disk format, version 2: every byte layout ringcask writes lives here. Version 2 added
//! values kept apart (the record flag `APART`, value files, the hint record's value reference);
//! a version 1 file is read as it is (it holds none of them).
//!
//! All integers are little-endian. No `usize` is ever written. Every structure carries a CRC-32
//! (crc32fast, IEEE polynomial) that is XORed with [`CRC_MASK`] before it is stored, so that an
//! all-zero region (a preallocated or zeroed tail) never passes the check.
//!
//! ```text
//! File header (first bytes of every datafile and every hint file), FILE_HEADER_LEN = 20
//!  0        8          12         16        20
//!  +--------+----------+----------+---------+
//!  | magic  | version  | file id  | crc     |
//!  | 8 B    | u32      | u32      | u32     |
//!  +--------+----------+----------+---------+
//!  magic = "RCASKDAT" (datafile written by the writer), "RCASKMRG" (datafile written by a
//!  merge), "RCASKHNT" (hint file) or "RCASKVAL" (value file); crc covers bytes [0, 16).
//!  version: 1 or 2 (a later one is refused as such).
//!
//! Data record, RECORD_HEADER_LEN = 29, followed by key and value
//!  0      4      12         20        24          28      29        29+k
//!  +------+------+----------+---------+-----------+-------+---------+---------+
//!  | crc  | seq  | expiry   | key len | value len | flags | key     | value   |
//!  | u32  | u64  | u64 (ms) | u32 (k) | u32 (v)   | u8    | k bytes | v bytes |
//!  +------+------+----------+---------+-----------+-------+---------+---------+
//!  crc covers bytes [4, 29 + k + v). expiry: Unix time in milliseconds, 0 = never.
//!  flags: bit 0 TOMBSTONE (v must be 0), bit 1 BATCH (member of an atomic batch),
//!         bit 2 BATCH_END (last member of its batch; requires BATCH), bit 3 APART (the value
//!         is kept apart: see below). Other bits: corrupt.
//!  key length is at least 1.
//!
//! Record whose value is kept apart (flag APART; v >= 1, never a tombstone): the value's
//! reference replaces the value, and v is still the value's length
//!  0 ... 29      29+k                 37+k        41+k
//!  | header | key | value offset u64  | value crc u32 |
//!  crc covers bytes [4, 41 + k) as for every record. The value lies at `value offset` (a
//!  multiple of 4096, at least 4096) of the datafile's value file, `value crc` over its bytes.
//!
//! Value file (`NNNNNNNNNN.vals`, of datafile NNNNNNNNNN): a file header (kind "RCASKVAL"),
//! zeros to 4096, then values, each from a multiple of 4096, zeros after each to the next.
//! Nothing else: it is read only at the places records point to. Written by the direct-IO
//! writer for values whose blocks waste at most an eighth of their size (`goes_apart`).
//!
//! Hint record (one per record of the datafile), HINT_RECORD_HEADER_LEN = 37, followed by the key
//!  0      4      12         20             28           32        36      37
//!  +------+------+----------+--------------+------------+---------+-------+---------+
//!  | crc  | seq  | expiry   | rec. offset  | rec. len   | key len | flags | key     |
//!  | u32  | u64  | u64 (ms) | u64          | u32        | u32 (k) | u8    | k bytes |
//!  +------+------+----------+--------------+------------+---------+-------+---------+
//!  crc covers bytes [4, 37 + k [+ 16]). The offset and length locate the whole data record
//!  (header included) in the datafile with the same file id. flags: TOMBSTONE, or APART
//!  (bit 3: the record keeps its value apart), then after the key
//!  | value offset u64 | value len u32 | value crc u32 |  (HINT_APART_LEN = 16)
//!
//! Hint footer (last bytes of a hint file), HINT_FOOTER_LEN = 28
//!  0        8              16               24     28
//!  +--------+--------------+----------------+------+
//!  | magic  | record count | datafile bytes | crc  |
//!  | 8 B    | u64          | u64            | u32  |
//!  +--------+--------------+----------------+------+
//!  magic = "RCASKEND"; crc covers bytes [0, 24). "datafile bytes" is the exact length of the
//!  sealed datafile the hint describes; a mismatch means the hint is stale and is not used.
//!  A hint file is: file header, hint records, footer — nothing else.
//!
//! Merge manifest (the file `MERGE`; its rename into place commits a merge)
//!  0        8          12          16                 16+4i       20+4i       20+4i+4o
//!  +--------+----------+-----------+------------------+-----------+-----------+------+
//!  | magic  | version  | inputs i  | input ids        | outputs o | output ids| crc  |
//!  | 8 B    | u32      | u32       | i × u32          | u32       | o × u32   | u32  |
//!  +--------+----------+-----------+------------------+-----------+-----------+------+
//!  magic = "RCASKMAN"; crc covers every byte before it. At most MANIFEST_MAX_IDS ids each.
//! ```

use std::mem::size_of;

/// Format version written by this build: 2, which added values kept apart ([`FLAG_APART`],
/// value files, the hint record's value reference). Version 1 files are read as they are.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Oldest format version this build reads.
pub(crate) const MIN_FORMAT_VERSION: u32 = 1;
/// XOR mask applied to every stored CRC, so that all-zero bytes never verify.
pub(crate) const CRC_MASK: u32 = 0xA282_EAD8;

/// Magic of a datafile header.
pub(crate) const DATA_MAGIC: [u8; 8] = *b"RCASKDAT";
/// Magic of a datafile written by a merge (never the log's active file, never torn).
pub(crate) const MERGED_MAGIC: [u8; 8] = *b"RCASKMRG";
/// Magic of the merge manifest.
pub(crate) const MANIFEST_MAGIC: [u8; 8] = *b"RCASKMAN";
/// Most input or output ids one manifest may list.
pub(crate) const MANIFEST_MAX_IDS: u32 = 1 << 20;
/// Magic of a value file header (`NNNNNNNNNN.vals`: the values kept apart from datafile `N`).
pub(crate) const VALS_MAGIC: [u8; 8] = *b"RCASKVAL";
/// Magic of a hint file header.
pub(crate) const HINT_MAGIC: [u8; 8] = *b"RCASKHNT";
/// Magic of a hint file footer.
pub(crate) const FOOTER_MAGIC: [u8; 8] = *b"RCASKEND";

// ---- file header -------------------------------------------------------------------------
const FH_MAGIC_OFFSET: usize = 0;
const FH_VERSION_OFFSET: usize = FH_MAGIC_OFFSET + DATA_MAGIC.len();
const FH_FILE_ID_OFFSET: usize = FH_VERSION_OFFSET + size_of::<u32>();
const FH_CRC_OFFSET: usize = FH_FILE_ID_OFFSET + size_of::<u32>();
/// Length of the header at the start of every datafile and hint file.
pub(crate) const FILE_HEADER_LEN: usize = FH_CRC_OFFSET + size_of::<u32>();

// ---- data record -------------------------------------------------------------------------
const REC_CRC_OFFSET: usize = 0;
const REC_SEQ_OFFSET: usize = REC_CRC_OFFSET + size_of::<u32>();
const REC_EXPIRY_OFFSET: usize = REC_SEQ_OFFSET + size_of::<u64>();
const REC_KEY_LEN_OFFSET: usize = REC_EXPIRY_OFFSET + size_of::<u64>();
const REC_VALUE_LEN_OFFSET: usize = REC_KEY_LEN_OFFSET + size_of::<u32>();
const REC_FLAGS_OFFSET: usize = REC_VALUE_LEN_OFFSET + size_of::<u32>();
/// Length of a data record's fixed header (the key follows it, then the value).
pub(crate) const RECORD_HEADER_LEN: usize = REC_FLAGS_OFFSET + size_of::<u8>();

// ---- hint record -------------------------------------------------------------------------
const HINT_CRC_OFFSET: usize = 0;
const HINT_SEQ_OFFSET: usize = HINT_CRC_OFFSET + size_of::<u32>();
const HINT_EXPIRY_OFFSET: usize = HINT_SEQ_OFFSET + size_of::<u64>();
const HINT_REC_OFFSET_OFFSET: usize = HINT_EXPIRY_OFFSET + size_of::<u64>();
const HINT_REC_LEN_OFFSET: usize = HINT_REC_OFFSET_OFFSET + size_of::<u64>();
const HINT_KEY_LEN_OFFSET: usize = HINT_REC_LEN_OFFSET + size_of::<u32>();
const HINT_FLAGS_OFFSET: usize = HINT_KEY_LEN_OFFSET + size_of::<u32>();
/// Length of a hint record's fixed header (the key follows it).
pub(crate) const HINT_RECORD_HEADER_LEN: usize = HINT_FLAGS_OFFSET + size_of::<u8>();

// ---- hint footer -------------------------------------------------------------------------
const FOOT_MAGIC_OFFSET: usize = 0;
const FOOT_COUNT_OFFSET: usize = FOOT_MAGIC_OFFSET + FOOTER_MAGIC.len();
const FOOT_DATA_LEN_OFFSET: usize = FOOT_COUNT_OFFSET + size_of::<u64>();
const FOOT_CRC_OFFSET: usize = FOOT_DATA_LEN_OFFSET + size_of::<u64>();
/// Length of the footer that ends every hint file.
pub(crate) const HINT_FOOTER_LEN: usize = FOOT_CRC_OFFSET + size_of::<u32>();

// ---- flags and limits --------------------------------------------------------------------
/// The record deletes its key.
pub(crate) const FLAG_TOMBSTONE: u8 = 1 << 0;
/// The record belongs to an atomic batch.
pub(crate) const FLAG_BATCH: u8 = 1 << 1;
/// The record is the last of its atomic batch.
pub(crate) const FLAG_BATCH_END: u8 = 1 << 2;
/// The record's value is kept apart, in the datafile's value file (format version 2): the
/// record holds, after its key, a [`Apart`] instead of the value.
pub(crate) const FLAG_APART: u8 = 1 << 3;
const KNOWN_FLAGS: u8 = FLAG_TOMBSTONE | FLAG_BATCH | FLAG_BATCH_END | FLAG_APART;
/// Bytes of the [`Apart`] a record with [`FLAG_APART`] holds after its key.
pub(crate) const VALUE_REF_LEN: usize = 12;
/// Bytes a hint record of a value kept apart holds after its key: the value's offset, length
/// and CRC.
pub(crate) const HINT_APART_LEN: usize = 16;
/// Values in a value file start at multiples of this (the direct-IO block), and the first
/// one at this offset (after the file header's block).
pub(crate) const VALS_ALIGN: u64 = 4096;

/// Largest key length the format accepts; a larger length read from disk is corruption.
pub const KEY_LEN_LIMIT: u32 = 1 << 20;
/// Largest value length the format accepts; a larger length read from disk is corruption.
pub const VALUE_LEN_LIMIT: u32 = 1 << 30;

/// Why some bytes failed to decode. Turned into [`crate::Error::Corrupt`] with a file and offset
/// by the caller, or used to find the end of a torn log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Fewer bytes are present than the structure needs.
    Truncated { needed: u64, available: u64 },
    /// The stored CRC does not match the bytes.
    BadCrc,
    /// Wrong magic bytes.
    BadMagic,
    /// A version this build cannot read.
    UnsupportedVersion(u32),
    /// A length, flag or field outside what the format allows.
    Invalid(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated { needed, available } => {
                write!(f, "truncated: need {needed} bytes, {available} present")
            }
            DecodeError::BadCrc => f.write_str("checksum mismatch"),
            DecodeError::BadMagic => f.write_str("bad magic"),
            DecodeError::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            DecodeError::Invalid(why) => f.write_str(why),
        }
    }
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes) ^ CRC_MASK
}

/// `b[at..at + n]`, or `Truncated`.
fn bytes_at(b: &[u8], at: usize, n: usize) -> Result<&[u8], DecodeError> {
    at.checked_add(n)
        .and_then(|end| b.get(at..end))
        .ok_or(DecodeError::Truncated {
            needed: at as u64 + n as u64,
            available: b.len() as u64,
        })
}

/// The little-endian `u32` at `b[at..at + 4]`.
fn u32_at(b: &[u8], at: usize) -> Result<u32, DecodeError> {
    let mut a = [0u8; 4];
    a.copy_from_slice(bytes_at(b, at, 4)?);
    Ok(u32::from_le_bytes(a))
}

/// The little-endian `u64` at `b[at..at + 8]`.
fn u64_at(b: &[u8], at: usize) -> Result<u64, DecodeError> {
    let mut a = [0u8; 8];
    a.copy_from_slice(bytes_at(b, at, 8)?);
    Ok(u64::from_le_bytes(a))
}

/// `b[from..to]`, or `Truncated`.
fn range(b: &[u8], from: usize, to: usize) -> Result<&[u8], DecodeError> {
    if to < from {
        return Err(DecodeError::Invalid("a field ends before it starts"));
    }
    bytes_at(b, from, to - from)
}

/// The byte at `b[at]`.
fn u8_at(b: &[u8], at: usize) -> Result<u8, DecodeError> {
    bytes_at(b, at, 1).map(|s| s.first().copied().unwrap_or(0))
}

/// Writes the CRC of `out[start + body..]` into `out[start..start + 4]` (the CRC leads the
/// record it covers).
fn seal_crc(out: &mut [u8], start: usize, body: usize) {
    let c = crc(out.get(start + body..).unwrap_or_default());
    if let Some(dst) = out.get_mut(start..start + size_of::<u32>()) {
        dst.copy_from_slice(&c.to_le_bytes());
    }
}

fn need(buf: &[u8], needed: usize) -> Result<(), DecodeError> {
    if buf.len() < needed {
        return Err(DecodeError::Truncated {
            needed: needed as u64,
            available: buf.len() as u64,
        });
    }
    Ok(())
}

// ---- file header -------------------------------------------------------------------------

/// Which kind of file a header introduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// A datafile written by the writer (`NNNNNNNNNN.data`).
    Data,
    /// A datafile written by a merge (`NNNNNNNNNN.data`).
    Merged,
    /// A hint file (`NNNNNNNNNN.hint`).
    Hint,
    /// A value file (`NNNNNNNNNN.vals`).
    Vals,
}

impl FileKind {
    fn magic(self) -> [u8; 8] {
        match self {
            FileKind::Data => DATA_MAGIC,
            FileKind::Merged => MERGED_MAGIC,
            FileKind::Hint => HINT_MAGIC,
            FileKind::Vals => VALS_MAGIC,
        }
    }
}

/// Appends a file header for `kind` and `file_id` to `out`.
pub(crate) fn encode_file_header(out: &mut Vec<u8>, kind: FileKind, file_id: u32) {
    encode_file_header_version(out, kind, file_id, FORMAT_VERSION);
}

/// [`encode_file_header`] with the format version given (the fuzz targets re-encode what they
/// decoded, of either version).
pub(crate) fn encode_file_header_version(
    out: &mut Vec<u8>,
    kind: FileKind,
    file_id: u32,
    version: u32,
) {
    let start = out.len();
    out.extend_from_slice(&kind.magic());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&file_id.to_le_bytes());
    let c = crc(out.get(start..start + FH_CRC_OFFSET).unwrap_or_default());
    out.extend_from_slice(&c.to_le_bytes());
    debug_assert_eq!(out.len() - start, FILE_HEADER_LEN);
}

/// Decodes a file header of `kind` and returns the file id it names.
pub(crate) fn decode_file_header(buf: &[u8], kind: FileKind) -> Result<u32, DecodeError> {
    match decode_any_file_header(buf)? {
        (id, k) if k == kind => Ok(id),
        // A merged datafile is a datafile.
        (id, FileKind::Merged) if kind == FileKind::Data => Ok(id),
        _ => Err(DecodeError::BadMagic),
    }
}

/// The format version a file header names (not checked), if `buf` is long enough.
#[cfg(feature = "fuzzing")]
pub(crate) fn file_header_version(buf: &[u8]) -> Option<u32> {
    u32_at(buf, FH_VERSION_OFFSET).ok()
}

/// Decodes a file header of any kind; returns the file id and the kind.
pub(crate) fn decode_any_file_header(buf: &[u8]) -> Result<(u32, FileKind), DecodeError> {
    need(buf, FILE_HEADER_LEN)?;
    let magic = range(buf, FH_MAGIC_OFFSET, FH_VERSION_OFFSET)?;
    let kind = [
        FileKind::Data,
        FileKind::Merged,
        FileKind::Hint,
        FileKind::Vals,
    ]
    .into_iter()
    .find(|k| k.magic() == magic)
    .ok_or(DecodeError::BadMagic)?;
    // The version comes before the CRC: a later version may lay out (and check) its header
    // differently, and must be reported as such rather than as corruption.
    let version = u32_at(buf, FH_VERSION_OFFSET)?;
    if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    if u32_at(buf, FH_CRC_OFFSET)? != crc(range(buf, 0, FH_CRC_OFFSET)?) {
        return Err(DecodeError::BadCrc);
    }
    Ok((u32_at(buf, FH_FILE_ID_OFFSET)?, kind))
}

// ---- data record -------------------------------------------------------------------------

/// The fixed fields of a data record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub seq: u64,
    pub expiry_ms: u64,
    pub key_len: u32,
    pub value_len: u32,
    pub flags: u8,
}

impl RecordHeader {
    /// Whole record length: header, key and value (or the value's reference when the value
    /// is kept apart).
    pub(crate) fn record_len(&self) -> u64 {
        let body = if self.is_apart() {
            VALUE_REF_LEN as u64
        } else {
            u64::from(self.value_len)
        };
        RECORD_HEADER_LEN as u64 + u64::from(self.key_len) + body
    }

    /// Whether the value is kept apart, in the value file.
    pub(crate) fn is_apart(&self) -> bool {
        self.flags & FLAG_APART != 0
    }

    pub(crate) fn is_tombstone(&self) -> bool {
        self.flags & FLAG_TOMBSTONE != 0
    }
}

/// Length of a record with the given key and value lengths.
pub(crate) fn record_len(key_len: usize, value_len: usize) -> usize {
    RECORD_HEADER_LEN + key_len + value_len
}

/// Where a value kept apart lies in its value file, and its CRC (masked like every stored CRC).
/// A record holds its offset and CRC after the key (the length is the header's value length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Apart {
    /// Offset of the value in the value file: a multiple of [`VALS_ALIGN`], past the header.
    pub offset: u64,
    /// Length of the value.
    pub len: u32,
    /// CRC of the value's bytes, [`value_crc`].
    pub crc: u32,
}

/// The CRC a [`Apart`] holds for `value`.
pub(crate) fn value_crc(value: &[u8]) -> u32 {
    crc(value)
}

/// Bytes a value of `len` bytes takes in a value file: whole blocks of [`VALS_ALIGN`].
pub(crate) fn vals_span(len: u64) -> u64 {
    len.div_ceil(VALS_ALIGN) * VALS_ALIGN
}

/// Whether a value of `len` bytes is kept apart by a writer that keeps values apart: when the
/// blocks it fills waste at most an eighth of its size (4096 bytes: none; 3641 to 4095: one
/// block; 5000: no). Smaller values stay in their record.
pub(crate) fn goes_apart(len: usize) -> bool {
    let len = len as u64;
    len > 0 && len <= u64::from(VALUE_LEN_LIMIT) && (vals_span(len) - len) * 8 <= len
}

/// Appends a record whose value (`value_len` bytes) is kept apart at `at` to `out`.
pub(crate) fn encode_record_apart(
    out: &mut Vec<u8>,
    seq: u64,
    expiry_ms: u64,
    flags: u8,
    key: &[u8],
    at: Apart,
) {
    assert!(!key.is_empty() && key.len() <= KEY_LEN_LIMIT as usize);
    assert!(at.len > 0 && at.len <= VALUE_LEN_LIMIT);
    assert!(at.offset >= VALS_ALIGN && at.offset.is_multiple_of(VALS_ALIGN));
    assert_eq!(flags & !(KNOWN_FLAGS & !FLAG_TOMBSTONE), 0);
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&expiry_ms.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&at.len.to_le_bytes());
    out.push(flags | FLAG_APART);
    out.extend_from_slice(key);
    out.extend_from_slice(&at.offset.to_le_bytes());
    out.extend_from_slice(&at.crc.to_le_bytes());
    seal_crc(out, start, REC_SEQ_OFFSET);
}

/// Appends one data record to `out`. The caller has checked the lengths against its limits;
/// they are asserted here again (the write side of the pair assertion).
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    seq: u64,
    expiry_ms: u64,
    flags: u8,
    key: &[u8],
    value: &[u8],
) {
    out.reserve(record_len(key.len(), value.len()));
    encode_record_head(out, seq, expiry_ms, flags, key, value);
    out.extend_from_slice(value);
}

/// Appends the header and key of a data record to `out`, leaving out its value, which the
/// caller writes right after them (a large value is then never copied): the CRC covers the
/// value all the same. `encode_record_head(out, ..) + value` equals `encode_record(out, ..)`.
pub(crate) fn encode_record_head(
    out: &mut Vec<u8>,
    seq: u64,
    expiry_ms: u64,
    flags: u8,
    key: &[u8],
    value: &[u8],
) {
    assert!(!key.is_empty() && key.len() <= KEY_LEN_LIMIT as usize);
    assert!(value.len() <= VALUE_LEN_LIMIT as usize);
    assert_eq!(flags & !KNOWN_FLAGS, 0);
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&expiry_ms.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.push(flags);
    out.extend_from_slice(key);
    let mut h = crc32fast::Hasher::new();
    h.update(out.get(start + REC_SEQ_OFFSET..).unwrap_or_default());
    h.update(value);
    let c = h.finalize() ^ CRC_MASK;
    if let Some(dst) = out.get_mut(start..start + size_of::<u32>()) {
        dst.copy_from_slice(&c.to_le_bytes());
    }
}

/// Decodes and validates the fixed header of a record (not its CRC, which covers the body).
pub(crate) fn decode_record_header(buf: &[u8]) -> Result<RecordHeader, DecodeError> {
    need(buf, RECORD_HEADER_LEN)?;
    let h = RecordHeader {
        seq: u64_at(buf, REC_SEQ_OFFSET)?,
        expiry_ms: u64_at(buf, REC_EXPIRY_OFFSET)?,
        key_len: u32_at(buf, REC_KEY_LEN_OFFSET)?,
        value_len: u32_at(buf, REC_VALUE_LEN_OFFSET)?,
        flags: u8_at(buf, REC_FLAGS_OFFSET)?,
    };
    if h.key_len == 0 {
        return Err(DecodeError::Invalid("empty key"));
    }
    if h.key_len > KEY_LEN_LIMIT {
        return Err(DecodeError::Invalid("key length over the format limit"));
    }
    if h.value_len > VALUE_LEN_LIMIT {
        return Err(DecodeError::Invalid("value length over the format limit"));
    }
    if h.flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::Invalid("unknown record flags"));
    }
    if h.flags & FLAG_BATCH_END != 0 && h.flags & FLAG_BATCH == 0 {
        return Err(DecodeError::Invalid("batch end outside a batch"));
    }
    if h.is_tombstone() && h.value_len != 0 {
        return Err(DecodeError::Invalid("tombstone with a value"));
    }
    if h.is_apart() && (h.is_tombstone() || h.value_len == 0) {
        return Err(DecodeError::Invalid("empty value kept apart"));
    }
    Ok(h)
}

/// A fully verified record borrowed from a buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    pub header: RecordHeader,
    pub key: &'a [u8],
    /// The value; empty when it is kept apart (then `apart` says where).
    pub value: &'a [u8],
    /// Where the value kept apart lies ([`FLAG_APART`]).
    pub apart: Option<Apart>,
}

/// Decodes and CRC-checks the record at the start of `buf` (which may hold more bytes after it).
pub(crate) fn decode_record(buf: &[u8]) -> Result<Record<'_>, DecodeError> {
    let header = decode_record_header(buf)?;
    let len = header.record_len();
    if (buf.len() as u64) < len {
        return Err(DecodeError::Truncated {
            needed: len,
            available: buf.len() as u64,
        });
    }
    let len = len as usize;
    if u32_at(buf, REC_CRC_OFFSET)? != crc(range(buf, REC_SEQ_OFFSET, len)?) {
        return Err(DecodeError::BadCrc);
    }
    let key_end = RECORD_HEADER_LEN + header.key_len as usize;
    let key = range(buf, RECORD_HEADER_LEN, key_end)?;
    if !header.is_apart() {
        let value = range(buf, key_end, len)?;
        return Ok(Record {
            header,
            key,
            value,
            apart: None,
        });
    }
    let at = Apart {
        offset: u64_at(buf, key_end)?,
        len: header.value_len,
        crc: u32_at(buf, key_end + size_of::<u64>())?,
    };
    if at.offset < VALS_ALIGN || !at.offset.is_multiple_of(VALS_ALIGN) {
        return Err(DecodeError::Invalid(
            "value kept apart at an unaligned offset",
        ));
    }
    Ok(Record {
        header,
        key,
        value: &[],
        apart: Some(at),
    })
}

// ---- hint record and footer (drawn above; codec in hint.rs) ----------------------------

mod hint;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use hint::decode_hint;
pub(crate) use hint::{
    decode_hint_footer, decode_hint_with, encode_hint, encode_hint_footer, HintFooter, HintRecord,
};

// ---- merge manifest (drawn above; codec in manifest.rs) ---------------------------------

mod manifest;
#[cfg(feature = "fuzzing")]
pub(crate) use manifest::encode_manifest_version;
#[cfg(test)]
use manifest::MAN_INPUTS_OFFSET;
pub(crate) use manifest::{decode_manifest, encode_manifest, Manifest};

#[cfg(feature = "fuzzing")]
mod fix;
#[cfg(feature = "fuzzing")]
pub(crate) use fix::{
    fix_hint_crc, fix_hint_file_crcs, fix_record_crc, fix_record_crcs, fix_trailing_crc,
};

#[cfg(test)]
mod tests;

pub(crate) mod snapshot;
