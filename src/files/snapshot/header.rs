//! The snapshot's header: magic, version, layout, hash seed and probe, the datafile list and the
//! shard index (see the module above for the byte layout).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::format::{u32_at, u64_at, FILE_HEADER_LEN};
use crate::keydir::{KeyDir, SHARDS, SLOT};

pub(super) const MAGIC: [u8; 8] = *b"RCKEYDIR";
pub(super) const VERSION: u32 = 1;
/// Header bytes before the file list.
pub(super) const FIXED: usize = 48;
/// Bytes per listed file: id, length, min seq, ctime.
pub(super) const FILE_ENTRY: usize = 28;
/// Bytes per shard index entry: offset, length, crc.
pub(super) const INDEX_ENTRY: usize = 20;

/// Header length for `files` listed datafiles.
pub(super) fn header_len(files: usize) -> usize {
    FIXED + files * FILE_ENTRY + SHARDS * INDEX_ENTRY + 4
}

/// Encodes the header for a keydir hashed with `seed`, the datafiles `files` and the shard
/// `index` of (offset, length, crc).
pub(super) fn encode_header(
    seed: u64,
    next_seq: u64,
    files: &[Listed],
    index: &[(u64, u64, u32)],
) -> Vec<u8> {
    let mut h = Vec::with_capacity(header_len(files.len()));
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&(SHARDS as u32).to_le_bytes());
    h.extend_from_slice(&(SLOT as u32).to_le_bytes());
    h.extend_from_slice(&seed.to_le_bytes());
    h.extend_from_slice(&next_seq.to_le_bytes());
    h.extend_from_slice(&(files.len() as u32).to_le_bytes());
    h.extend_from_slice(&KeyDir::hash_probe(seed).to_le_bytes());
    for f in files {
        h.extend_from_slice(&f.id.to_le_bytes());
        h.extend_from_slice(&f.len.to_le_bytes());
        h.extend_from_slice(&f.min_seq.to_le_bytes());
        h.extend_from_slice(&f.ctime_ns.to_le_bytes());
    }
    for (off, len, crc) in index {
        h.extend_from_slice(&off.to_le_bytes());
        h.extend_from_slice(&len.to_le_bytes());
        h.extend_from_slice(&crc.to_le_bytes());
    }
    h.extend_from_slice(&crc32fast::hash(&h).to_le_bytes());
    h
}

/// One datafile as the snapshot lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listed {
    pub id: u32,
    pub len: u64,
    pub min_seq: u64,
    /// Its ctime in ns when the snapshot was saved.
    pub ctime_ns: u64,
}

/// Where snapshot bytes come from: the file, or bytes in memory (fuzzing, tests).
pub(crate) trait Source: Sync {
    /// Total length.
    fn len(&self) -> io::Result<u64>;
    /// Fills `buf` from offset `off`.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
}

impl Source for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.read_exact_at(buf, off)
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

/// A decoded snapshot header.
#[derive(Debug)]
pub(crate) struct Header {
    pub seed: u64,
    pub next_seq: u64,
    pub files: Vec<Listed>,
    /// (offset, length, crc) of each shard body.
    pub(super) index: Vec<(u64, u64, u32)>,
}

/// Reads and checks the header of the snapshot in `src`.
pub(crate) fn read_header(src: &dyn Source) -> std::result::Result<Header, Unused> {
    let total = src.len()?;
    let mut fixed = [0u8; FIXED];
    if total < FIXED as u64 {
        return Err(invalid("shorter than its header"));
    }
    src.read_at(&mut fixed, 0)?;
    if fixed[..8] != MAGIC {
        return Err(invalid("wrong magic"));
    }
    let version = u32_at(&fixed, 8);
    if version != VERSION {
        return Err(invalid(format!(
            "version {version}, this build reads {VERSION}"
        )));
    }
    if u32_at(&fixed, 12) as usize != SHARDS || u32_at(&fixed, 16) as usize != SLOT {
        return Err(invalid("written with another keydir layout"));
    }
    if u64_at(&fixed, 40) != KeyDir::hash_probe(u64_at(&fixed, 20)) {
        return Err(invalid("written with another hash function"));
    }
    let n_files = u32_at(&fixed, 36) as usize;
    let head_len = header_len(n_files);
    if head_len as u64 > total {
        return Err(invalid("file list runs past the end"));
    }
    let mut h = vec![0u8; head_len];
    src.read_at(&mut h, 0)?;
    if crc32fast::hash(&h[..head_len - 4]) != u32_at(&h, head_len - 4) {
        return Err(invalid("header checksum mismatch"));
    }
    let files: Vec<Listed> = (0..n_files)
        .map(|i| {
            let at = FIXED + i * FILE_ENTRY;
            Listed {
                id: u32_at(&h, at),
                len: u64_at(&h, at + 4),
                min_seq: u64_at(&h, at + 12),
                ctime_ns: u64_at(&h, at + 20),
            }
        })
        .collect();
    if files.windows(2).any(|w| w[0].id >= w[1].id) {
        return Err(invalid("file ids not ascending"));
    }
    if files.iter().any(|f| f.len < FILE_HEADER_LEN as u64) {
        return Err(invalid("file shorter than a datafile header"));
    }
    let index_at = FIXED + n_files * FILE_ENTRY;
    let index: Vec<(u64, u64, u32)> = (0..SHARDS)
        .map(|i| {
            let at = index_at + i * INDEX_ENTRY;
            (u64_at(&h, at), u64_at(&h, at + 8), u32_at(&h, at + 16))
        })
        .collect();
    for &(off, len, _) in &index {
        if off < head_len as u64 || off.checked_add(len).is_none_or(|end| end > total) {
            return Err(invalid("shard body outside the file"));
        }
    }
    Ok(Header {
        seed: u64_at(&fixed, 20),
        next_seq: u64_at(&fixed, 28),
        files,
        index,
    })
}

/// Recomputes every checksum of the snapshot bytes `b` that its header lets it find (fuzzing:
/// so that inputs reach the checks behind the checksums).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fix_checksums(b: &mut [u8]) {
    if b.len() < FIXED {
        return;
    }
    let n_files = u32_at(b, 36) as usize;
    let head_len = header_len(n_files.min(1 << 20));
    if head_len > b.len() {
        return;
    }
    let index_at = FIXED + n_files * FILE_ENTRY;
    for i in 0..SHARDS {
        let at = index_at + i * INDEX_ENTRY;
        let (off, len) = (u64_at(b, at), u64_at(b, at + 8));
        let body = usize::try_from(off)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, l)| b.get(o..o.checked_add(l)?));
        if let Some(body) = body {
            let crc = crc32fast::hash(body);
            b[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&b[..head_len - 4]);
    b[head_len - 4..head_len].copy_from_slice(&crc.to_le_bytes());
}
