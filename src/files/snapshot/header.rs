//! Reading a snapshot's header (codec: [`crate::format::snapshot`]) and the sources its bytes
//! come from.
#![deny(clippy::indexing_slicing)]

use std::fs::File;
use std::io;

use crate::fault::FaultInjector;
use crate::format::snapshot::{
    decode_snapshot_fixed, decode_snapshot_header, snapshot_header_len, Listed, ShardIndex,
    LISTED_LEN, MIN_ENTRY_LEN, SNAPSHOT_FIXED_LEN, SNAPSHOT_VERSION,
};
use crate::format::{DecodeError, FILE_HEADER_LEN};
use crate::keydir::{KeyDir, SHARDS};

/// Where snapshot bytes come from: the file, or bytes in memory (fuzzing, tests).
pub(crate) trait Source: Sync {
    /// Total length.
    fn len(&self) -> io::Result<u64>;
    /// Fills `buf` from offset `off`.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
}

/// The snapshot file, read through the fault seam.
pub(crate) struct FileSource<'a> {
    pub file: &'a File,
    pub fault: Option<&'a FaultInjector>,
}

impl Source for FileSource<'_> {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        crate::io::read_exact_at(self.fault, self.file, buf, off)
    }
}

/// Snapshot bytes in memory.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) struct InMemory<'a>(pub &'a [u8]);

#[cfg(any(test, feature = "fuzzing"))]
impl Source for InMemory<'_> {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let src = usize::try_from(off)
            .ok()
            .and_then(|o| self.0.get(o..)?.get(..buf.len()))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Why a snapshot was not used.
#[derive(Debug)]
pub(crate) enum Unused {
    /// It does not describe the directory as it is (normal after a crash or an old snapshot).
    Stale(String),
    /// It is damaged or was not written by this version.
    Invalid(String),
    /// Reading it failed.
    Io(io::Error),
}

impl From<io::Error> for Unused {
    fn from(e: io::Error) -> Self {
        Unused::Io(e)
    }
}

pub(super) fn invalid(why: impl Into<String>) -> Unused {
    Unused::Invalid(why.into())
}

/// A checked snapshot header.
#[derive(Debug)]
pub(crate) struct Header {
    pub seed: u64,
    pub next_seq: u64,
    pub files: Vec<Listed>,
    pub(super) index: Vec<ShardIndex>,
}

fn refused(e: DecodeError) -> Unused {
    match e {
        DecodeError::BadMagic => invalid("wrong magic"),
        DecodeError::UnsupportedVersion(v) => invalid(format!(
            "format version {v}, this build reads {SNAPSHOT_VERSION}"
        )),
        DecodeError::BadCrc => invalid("header checksum mismatch"),
        other => invalid(format!("header: {other}")),
    }
}

/// Reads and checks the header of the snapshot in `src`: its checksum, that this build's keydir
/// can take it (shard count, hash function), and that every count and offset in it fits the
/// file before anything is allocated from it.
pub(crate) fn read_header(src: &dyn Source) -> Result<Header, Unused> {
    let total = src.len()?;
    if total < SNAPSHOT_FIXED_LEN as u64 {
        return Err(invalid("shorter than its header"));
    }
    let mut fixed = [0u8; SNAPSHOT_FIXED_LEN];
    src.read_at(&mut fixed, 0)?;
    let f = decode_snapshot_fixed(&fixed).map_err(refused)?;
    if f.shards as usize != SHARDS {
        return Err(invalid("written with another keydir layout"));
    }
    if f.probe != KeyDir::hash_probe(f.seed) {
        return Err(invalid("written with another hash function"));
    }
    // Bounded by the file's length before it is used as a size.
    if u64::from(f.files) > total / LISTED_LEN as u64 {
        return Err(invalid("file list runs past the end"));
    }
    let head_len = snapshot_header_len(f.files as usize, SHARDS);
    if head_len as u64 > total {
        return Err(invalid("file list runs past the end"));
    }
    let mut h = vec![0u8; head_len];
    src.read_at(&mut h, 0)?;
    let head = decode_snapshot_header(&h).map_err(refused)?;
    check_files(&head.files)?;
    for s in &head.index {
        let end = s.offset.checked_add(s.len);
        if s.offset < head_len as u64 || end.is_none_or(|end| end > total) {
            return Err(invalid("shard body outside the file"));
        }
        if s.entries
            .checked_mul(MIN_ENTRY_LEN as u64)
            .is_none_or(|b| b > s.len)
        {
            return Err(invalid("more entries than a shard body can hold"));
        }
    }
    Ok(Header {
        seed: f.seed,
        next_seq: f.next_seq,
        files: head.files,
        index: head.index,
    })
}

fn check_files(files: &[Listed]) -> Result<(), Unused> {
    if files
        .windows(2)
        .any(|w| w.first().map(|a| a.id) >= w.get(1).map(|b| b.id))
    {
        return Err(invalid("file ids not ascending"));
    }
    if files.iter().any(|f| f.len < FILE_HEADER_LEN as u64) {
        return Err(invalid("file shorter than a datafile header"));
    }
    Ok(())
}

/// Recomputes every checksum of the snapshot bytes `b` that its header lets it find (fuzzing:
/// so that inputs reach the checks behind the checksums).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fix_checksums(b: &mut [u8]) {
    use crate::format::snapshot::{snapshot_crc, SHARD_INDEX_LEN};
    let Some(f) = b
        .get(..SNAPSHOT_FIXED_LEN)
        .and_then(|f| decode_snapshot_fixed(f).ok())
    else {
        return;
    };
    let (files, shards) = (f.files as usize, f.shards as usize);
    let Some(head_len) = files
        .checked_mul(LISTED_LEN)
        .and_then(|l| shards.checked_mul(SHARD_INDEX_LEN)?.checked_add(l))
        .and_then(|l| l.checked_add(SNAPSHOT_FIXED_LEN + 4))
        .filter(|&l| l <= b.len())
    else {
        return;
    };
    let index_at = SNAPSHOT_FIXED_LEN + files * LISTED_LEN;
    for i in 0..shards {
        let at = index_at + i * SHARD_INDEX_LEN;
        let field = |b: &[u8], o: usize| {
            b.get(at + o..at + o + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let (Some(off), Some(len)) = (field(b, 0), field(b, 8)) else {
            return;
        };
        let body = usize::try_from(off)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, l)| b.get(o..o.checked_add(l)?));
        if let Some(body) = body {
            let c = snapshot_crc(body);
            if let Some(dst) = b.get_mut(at + 24..at + 28) {
                dst.copy_from_slice(&c.to_le_bytes());
            }
        }
    }
    let c = b.get(..head_len - 4).map(snapshot_crc);
    if let (Some(c), Some(dst)) = (c, b.get_mut(head_len - 4..head_len)) {
        dst.copy_from_slice(&c.to_le_bytes());
    }
}
