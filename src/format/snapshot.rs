//! The keydir snapshot `KEYDIR`, format version 3: the live keydir entries of a cleanly closed
//! store, so that the next open loads them instead of the hint files.
//!
//! ```text
//! Header, SNAPSHOT_FIXED_LEN = 44 bytes, then the file list, the shard index and a CRC
//!  0        8          12         16          24          32          40           44
//!  +--------+----------+----------+-----------+-----------+-----------+------------+
//!  | magic  | version  | shards s | hash seed | hash probe| next seq  | files f    |
//!  | 8 B    | u32 (3)  | u32      | u64       | u64       | u64       | u32        |
//!  +--------+----------+----------+-----------+-----------+-----------+------------+
//!  then f listed datafiles, LISTED_LEN = 28 each, ids ascending:
//!  | id u32 | length u64 | first seq u64 | ctime ns u64 |
//!  (length: the datafile's, plus its value file's when it has one; ctime: the later one)
//!  then s shard index entries, SHARD_INDEX_LEN = 28 each, in shard order:
//!  | body offset u64 | body length u64 | entries u64 | body crc u32 |
//!  then | crc u32 | over every header byte before it.
//!  magic = "RCKEYDIR". hash probe = the keydir hash of a fixed string under the seed: a build
//!  whose hash function differs refuses the snapshot up front. Version 1 (whole tables, CRCs
//!  not masked) is refused by its version; the open then loads the hint files.
//!
//! Shard body: its entries, one after another (no padding, nothing else)
//!  +-----+------------+-------+-----+-------------+---------+--------+-----+-----------+
//!  | tag | key len    | key   | seq | expiry      | file id | offset | len | value crc |
//!  | u8  | u32, only  | k B   | u64 | u64 (ms),   | u32     | u32    | u32 | u32, only |
//!  |     | if long    |       |     | only if set |         |        |     | if apart  |
//!  +-----+------------+-------+-----+-------------+---------+--------+-----+-----------+
//!  tag bits 0-6: the key length k (1..=127), or 0 for a long key whose length (128 ..=
//!  KEY_LEN_LIMIT) follows as a u32; tag bit 7: the entry has an expiry. offset and len locate
//!  the key's record in datafile `file id`; when `file id` has bit 31 set, the value kept
//!  apart in the value file of datafile `file id & 0x7FFF_FFFF`, and its CRC follows.
//!  Version 2 is version 3 without values kept apart (read as such).
//! ```
//!
//! Bytes per entry: 25 + k without an expiry (a 16-byte key: 37 B), 33 + k with one; a long
//! key adds 4. Every CRC is masked like the rest of the format's.
#![deny(clippy::indexing_slicing)]

use std::mem::size_of;

use super::{crc, DecodeError, KEY_LEN_LIMIT};

/// Magic of a keydir snapshot.
pub(crate) const SNAPSHOT_MAGIC: [u8; 8] = *b"RCKEYDIR";
/// Snapshot format version written by this build.
pub(crate) const SNAPSHOT_VERSION: u32 = 3;
/// Oldest snapshot format version this build reads.
pub(crate) const MIN_SNAPSHOT_VERSION: u32 = 2;
/// File-id bit of an entry whose value is kept apart (see [`crate::layout::VALS_BIT`]).
const APART_BIT: u32 = 1 << 31;
const _: () = assert!(APART_BIT == crate::layout::VALS_BIT);

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + SNAPSHOT_MAGIC.len();
const SHARDS_OFFSET: usize = VERSION_OFFSET + size_of::<u32>();
const SEED_OFFSET: usize = SHARDS_OFFSET + size_of::<u32>();
const PROBE_OFFSET: usize = SEED_OFFSET + size_of::<u64>();
const NEXT_SEQ_OFFSET: usize = PROBE_OFFSET + size_of::<u64>();
const FILES_OFFSET: usize = NEXT_SEQ_OFFSET + size_of::<u64>();
/// Bytes of the header before the file list.
pub(crate) const SNAPSHOT_FIXED_LEN: usize = FILES_OFFSET + size_of::<u32>();

const LISTED_ID: usize = 0;
const LISTED_LENGTH: usize = LISTED_ID + size_of::<u32>();
const LISTED_MIN_SEQ: usize = LISTED_LENGTH + size_of::<u64>();
const LISTED_CTIME: usize = LISTED_MIN_SEQ + size_of::<u64>();
/// Bytes per listed datafile.
pub(crate) const LISTED_LEN: usize = LISTED_CTIME + size_of::<u64>();

const INDEX_OFFSET: usize = 0;
const INDEX_LENGTH: usize = INDEX_OFFSET + size_of::<u64>();
const INDEX_COUNT: usize = INDEX_LENGTH + size_of::<u64>();
const INDEX_CRC: usize = INDEX_COUNT + size_of::<u64>();
/// Bytes per shard index entry.
pub(crate) const SHARD_INDEX_LEN: usize = INDEX_CRC + size_of::<u32>();

/// Tag bit: the entry has an expiry.
const TAG_EXPIRY: u8 = 0x80;
/// Tag bits holding a short key's length.
const TAG_KEY_LEN: u8 = 0x7F;
/// Entry bytes after the key: seq, file id, offset, len (and the expiry when set).
const ENTRY_TAIL_LEN: usize = size_of::<u64>() + 3 * size_of::<u32>();
/// The shortest entry: tag, a 1-byte key, the tail.
pub(crate) const MIN_ENTRY_LEN: usize = 1 + 1 + ENTRY_TAIL_LEN;

/// The fixed part of a snapshot header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotFixed {
    pub shards: u32,
    pub seed: u64,
    pub probe: u64,
    pub next_seq: u64,
    pub files: u32,
}

/// One datafile as a snapshot lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listed {
    pub id: u32,
    pub len: u64,
    pub min_seq: u64,
    /// Its ctime in ns when the snapshot was saved.
    pub ctime_ns: u64,
}

/// Where one shard's body is and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShardIndex {
    pub offset: u64,
    pub len: u64,
    pub entries: u64,
    pub crc: u32,
}

/// A whole snapshot header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotHeader {
    pub fixed: SnapshotFixed,
    pub files: Vec<Listed>,
    pub index: Vec<ShardIndex>,
}

/// Length of a header listing `files` datafiles and `shards` shards.
pub(crate) fn snapshot_header_len(files: usize, shards: usize) -> usize {
    SNAPSHOT_FIXED_LEN + files * LISTED_LEN + shards * SHARD_INDEX_LEN + size_of::<u32>()
}

/// Encodes a snapshot header.
pub(crate) fn encode_snapshot_header(h: &SnapshotHeader) -> Vec<u8> {
    let f = &h.fixed;
    let mut out = Vec::with_capacity(snapshot_header_len(h.files.len(), h.index.len()));
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&f.shards.to_le_bytes());
    out.extend_from_slice(&f.seed.to_le_bytes());
    out.extend_from_slice(&f.probe.to_le_bytes());
    out.extend_from_slice(&f.next_seq.to_le_bytes());
    out.extend_from_slice(&f.files.to_le_bytes());
    debug_assert_eq!(out.len(), SNAPSHOT_FIXED_LEN);
    for l in &h.files {
        out.extend_from_slice(&l.id.to_le_bytes());
        out.extend_from_slice(&l.len.to_le_bytes());
        out.extend_from_slice(&l.min_seq.to_le_bytes());
        out.extend_from_slice(&l.ctime_ns.to_le_bytes());
    }
    for s in &h.index {
        out.extend_from_slice(&s.offset.to_le_bytes());
        out.extend_from_slice(&s.len.to_le_bytes());
        out.extend_from_slice(&s.entries.to_le_bytes());
        out.extend_from_slice(&s.crc.to_le_bytes());
    }
    let c = crc(&out);
    out.extend_from_slice(&c.to_le_bytes());
    debug_assert_eq!(out.len(), snapshot_header_len(h.files.len(), h.index.len()));
    out
}

/// A checked reader over bytes being decoded.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Truncated {
            needed: u64::MAX,
            available: self.buf.len() as u64,
        })?;
        let b = self.buf.get(self.at..end).ok_or(DecodeError::Truncated {
            needed: end as u64,
            available: self.buf.len() as u64,
        })?;
        self.at = end;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }
}

/// Decodes the fixed part of a snapshot header (its first [`SNAPSHOT_FIXED_LEN`] bytes).
pub(crate) fn decode_snapshot_fixed(buf: &[u8]) -> Result<SnapshotFixed, DecodeError> {
    let mut c = Cursor { buf, at: 0 };
    if c.array::<8>()? != SNAPSHOT_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = c.u32()?;
    if !(MIN_SNAPSHOT_VERSION..=SNAPSHOT_VERSION).contains(&version) {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    Ok(SnapshotFixed {
        shards: c.u32()?,
        seed: c.u64()?,
        probe: c.u64()?,
        next_seq: c.u64()?,
        files: c.u32()?,
    })
}

/// Decodes a whole header (`buf` is exactly its bytes) and checks its CRC.
pub(crate) fn decode_snapshot_header(buf: &[u8]) -> Result<SnapshotHeader, DecodeError> {
    let fixed = decode_snapshot_fixed(buf)?;
    let (files, shards) = (fixed.files as usize, fixed.shards as usize);
    if buf.len() != snapshot_header_len(files, shards) {
        return Err(DecodeError::Invalid(
            "snapshot header length does not match its counts",
        ));
    }
    let body_len = buf.len() - size_of::<u32>();
    let (body, stored) = buf.split_at(body_len);
    let stored = Cursor { buf: stored, at: 0 }.u32()?;
    if stored != crc(body) {
        return Err(DecodeError::BadCrc);
    }
    let mut c = Cursor {
        buf: body,
        at: SNAPSHOT_FIXED_LEN,
    };
    let mut listed = Vec::with_capacity(files);
    for _ in 0..files {
        listed.push(Listed {
            id: c.u32()?,
            len: c.u64()?,
            min_seq: c.u64()?,
            ctime_ns: c.u64()?,
        });
    }
    let mut index = Vec::with_capacity(shards);
    for _ in 0..shards {
        index.push(ShardIndex {
            offset: c.u64()?,
            len: c.u64()?,
            entries: c.u64()?,
            crc: c.u32()?,
        });
    }
    Ok(SnapshotHeader {
        fixed,
        files: listed,
        index,
    })
}

/// The masked CRC of a shard body (and of a header's bytes before its CRC).
pub(crate) fn snapshot_crc(bytes: &[u8]) -> u32 {
    crc(bytes)
}

/// One keydir entry as a snapshot stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotEntry<'a> {
    pub key: &'a [u8],
    pub seq: u64,
    /// 0 = no expiry.
    pub expiry_ms: u64,
    pub file_id: u32,
    pub offset: u32,
    pub len: u32,
    /// The value's CRC when it is kept apart (`file_id` has bit 31), else not stored.
    pub crc: u32,
}

/// Bytes [`encode_snapshot_entry`] writes for `e`.
pub(crate) fn snapshot_entry_len(e: &SnapshotEntry<'_>) -> usize {
    let long = if e.key.len() > usize::from(TAG_KEY_LEN) {
        size_of::<u32>()
    } else {
        0
    };
    let expiry = if e.expiry_ms != 0 {
        size_of::<u64>()
    } else {
        0
    };
    let crc = if e.file_id & APART_BIT != 0 {
        size_of::<u32>()
    } else {
        0
    };
    1 + long + e.key.len() + ENTRY_TAIL_LEN + expiry + crc
}

/// Appends one entry to `out`.
pub(crate) fn encode_snapshot_entry(out: &mut Vec<u8>, e: &SnapshotEntry<'_>) {
    assert!(!e.key.is_empty() && e.key.len() <= KEY_LEN_LIMIT as usize);
    let start = out.len();
    let expiry = if e.expiry_ms != 0 { TAG_EXPIRY } else { 0 };
    if e.key.len() > usize::from(TAG_KEY_LEN) {
        out.push(expiry);
        out.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
    } else {
        out.push(expiry | e.key.len() as u8);
    }
    out.extend_from_slice(e.key);
    out.extend_from_slice(&e.seq.to_le_bytes());
    if e.expiry_ms != 0 {
        out.extend_from_slice(&e.expiry_ms.to_le_bytes());
    }
    out.extend_from_slice(&e.file_id.to_le_bytes());
    out.extend_from_slice(&e.offset.to_le_bytes());
    out.extend_from_slice(&e.len.to_le_bytes());
    if e.file_id & APART_BIT != 0 {
        out.extend_from_slice(&e.crc.to_le_bytes());
    }
    debug_assert_eq!(out.len() - start, snapshot_entry_len(e));
}

/// Decodes the entry at the start of `buf`; returns it and its encoded length.
pub(crate) fn decode_snapshot_entry(buf: &[u8]) -> Result<(SnapshotEntry<'_>, usize), DecodeError> {
    let mut c = Cursor { buf, at: 0 };
    let tag = c.u8()?;
    let key_len = match tag & TAG_KEY_LEN {
        0 => {
            let n = c.u32()?;
            if n <= u32::from(TAG_KEY_LEN) || n > KEY_LEN_LIMIT {
                return Err(DecodeError::Invalid(
                    "snapshot long key length out of range",
                ));
            }
            n as usize
        }
        n => usize::from(n),
    };
    let key = c.take(key_len)?;
    let seq = c.u64()?;
    let expiry_ms = if tag & TAG_EXPIRY != 0 {
        let x = c.u64()?;
        if x == 0 {
            return Err(DecodeError::Invalid("snapshot entry flags an expiry of 0"));
        }
        x
    } else {
        0
    };
    let mut e = SnapshotEntry {
        key,
        seq,
        expiry_ms,
        file_id: c.u32()?,
        offset: c.u32()?,
        len: c.u32()?,
        crc: 0,
    };
    if e.file_id & APART_BIT != 0 {
        e.crc = c.u32()?;
    }
    Ok((e, c.at))
}
