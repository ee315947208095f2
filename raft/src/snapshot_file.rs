//! A state-machine snapshot on disk: written as a stream, verified and read as a stream.
//!
//! ```text
//! magic "RCSNAP01" | meta_len u32 | meta (JSON SnapshotMeta)
//! | { key_len u32 | value_len u32 | key | value }*
//! | count u64 | crc32 u32 (of every byte before it)
//! ```
//! Integers little-endian. A file is written under a temporary name of its own, fsynced, and
//! renamed over the current snapshot ([`publish`]), so the current snapshot file is always whole.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::{decode, encode, SnapshotMeta};

const MAGIC: &[u8; 8] = b"RCSNAP01";
/// Bound on one key or value read back (a damaged length must not allocate gigabytes).
const MAX_FIELD_BYTES: u32 = 1 << 30;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Writes a snapshot file record by record.
pub(crate) struct Writer {
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    count: u64,
}

impl Writer {
    /// Starts a snapshot at `tmp` (created, truncated).
    pub(crate) fn create(tmp: &Path, meta: &SnapshotMeta) -> io::Result<Writer> {
        let mut w = Writer {
            out: BufWriter::with_capacity(1 << 20, File::create(tmp)?),
            crc: crc32fast::Hasher::new(),
            count: 0,
        };
        let meta = encode(meta)?;
        w.put(MAGIC)?;
        w.put(&(meta.len() as u32).to_le_bytes())?;
        w.put(&meta)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc.update(b);
        self.out.write_all(b)
    }

    /// Appends one key and value.
    pub(crate) fn record(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.put(&(key.len() as u32).to_le_bytes())?;
        self.put(&(value.len() as u32).to_le_bytes())?;
        self.put(key)?;
        self.put(value)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the footer and fsyncs the file.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        let count = self.count.to_le_bytes();
        self.put(&count)?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}

/// A fresh temporary name in `dir` for a snapshot being written (builds and installs may
/// overlap: each writes its own file).
pub(crate) fn temp_path(dir: &Path) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!("snapshot.{}.{n}.tmp", std::process::id()))
}

/// Removes temporary snapshot files left in `dir` by a crash.
pub(crate) fn remove_temps(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snapshot.") && name.ends_with(".tmp") {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Makes the finished snapshot file `tmp` the current one (`dest`) unless the current one
/// covers more of the log; returns `tmp`'s snapshot open for reading either way. `lock`
/// serialises publications.
pub(crate) fn publish(
    lock: &std::sync::Mutex<()>,
    tmp: &Path,
    dest: &Path,
    meta: &SnapshotMeta,
) -> io::Result<File> {
    let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
    let file = File::open(tmp)?;
    let newer = match File::open(dest) {
        Ok(mut cur) => read_meta(&mut cur).map_or(true, |cur| cur.last_log_id <= meta.last_log_id),
        Err(_) => true,
    };
    if newer {
        std::fs::rename(tmp, dest)?;
        sync_dir(dest)?;
    } else {
        // Still readable through `file` (it is only unlinked).
        std::fs::remove_file(tmp)?;
    }
    Ok(file)
}

/// Fsyncs the directory holding `path` (a rename in it must survive power loss).
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Reads a snapshot file's metadata (the file is left positioned at its start).
pub(crate) fn read_meta(file: &mut File) -> io::Result<SnapshotMeta> {
    file.seek(SeekFrom::Start(0))?;
    let mut head = [0u8; 12];
    file.read_exact(&mut head)?;
    if &head[..8] != MAGIC {
        return Err(bad("not a ringcask snapshot file (bad magic)"));
    }
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if len > MAX_FIELD_BYTES {
        return Err(bad("snapshot metadata length out of range"));
    }
    let mut meta = vec![0u8; len as usize];
    file.read_exact(&mut meta)?;
    file.seek(SeekFrom::Start(0))?;
    decode("snapshot metadata", &meta)
}

/// Reads every record of the snapshot in `file` in order, calling `each` with batches of up to
/// `batch` records; the CRC and count are checked at the end, so the caller must treat what it
/// was given as provisional until this returns `Ok`.
pub(crate) fn read_records(
    file: &mut File,
    batch: usize,
    mut each: impl FnMut(Vec<(Vec<u8>, Vec<u8>)>) -> io::Result<()>,
) -> io::Result<SnapshotMeta> {
    let len = file.seek(SeekFrom::End(0))?;
    let meta = read_meta(file)?;
    if len < 12 + 12 {
        return Err(bad("snapshot file too short"));
    }
    let body_end = len - 4; // the CRC covers everything before it
    let mut r = Crc {
        inner: BufReader::with_capacity(1 << 20, &mut *file).take(body_end),
        crc: crc32fast::Hasher::new(),
    };
    let mut head = [0u8; 12];
    r.read_exact(&mut head)?;
    let mut skip = vec![0u8; u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize];
    r.read_exact(&mut skip)?;
    let (mut pending, mut count, mut pos) = (Vec::new(), 0u64, 12 + skip.len() as u64);
    while pos < body_end - 8 {
        let mut lens = [0u8; 8];
        r.read_exact(&mut lens)?;
        let k = u32::from_le_bytes([lens[0], lens[1], lens[2], lens[3]]);
        let v = u32::from_le_bytes([lens[4], lens[5], lens[6], lens[7]]);
        if k > MAX_FIELD_BYTES
            || v > MAX_FIELD_BYTES
            || pos + 8 + u64::from(k) + u64::from(v) > body_end - 8
        {
            return Err(bad(format!("snapshot record at {pos} runs past the end")));
        }
        let mut key = vec![0u8; k as usize];
        let mut value = vec![0u8; v as usize];
        r.read_exact(&mut key)?;
        r.read_exact(&mut value)?;
        pos += 8 + u64::from(k) + u64::from(v);
        count += 1;
        pending.push((key, value));
        if pending.len() >= batch {
            each(std::mem::take(&mut pending))?;
        }
    }
    let mut tail = [0u8; 8];
    r.read_exact(&mut tail)?;
    let crc = r.crc.finalize();
    let mut stored = [0u8; 4];
    file.seek(SeekFrom::Start(body_end))?;
    file.read_exact(&mut stored)?;
    if u64::from_le_bytes(tail) != count || u32::from_le_bytes(stored) != crc {
        return Err(bad("snapshot file is damaged (count or CRC mismatch)"));
    }
    if !pending.is_empty() {
        each(pending)?;
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(meta)
}

/// A reader that checksums what passes through it.
struct Crc<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

/// Checks a snapshot file's CRC as its bytes stream past (a snapshot received over the
/// network is verified before it is handed to openraft, whose install failing would stop
/// the node).
pub(crate) struct StreamCheck {
    crc: crc32fast::Hasher,
    /// Bytes the CRC covers (all but the last 4).
    body: u64,
    pos: u64,
    stored: Vec<u8>,
}

impl StreamCheck {
    /// A check of a snapshot file `len` bytes long.
    pub(crate) fn new(len: u64) -> StreamCheck {
        StreamCheck {
            crc: crc32fast::Hasher::new(),
            body: len.saturating_sub(4),
            pos: 0,
            stored: Vec::with_capacity(4),
        }
    }

    /// The next bytes of the file.
    pub(crate) fn update(&mut self, b: &[u8]) {
        let in_body =
            usize::try_from(self.body.saturating_sub(self.pos)).map_or(b.len(), |n| n.min(b.len()));
        self.crc.update(&b[..in_body]);
        self.stored.extend_from_slice(&b[in_body..]);
        self.pos += b.len() as u64;
    }

    /// Whether every byte was seen and the CRC matches.
    pub(crate) fn finish(self) -> io::Result<()> {
        if self.body < 12 + 12 || self.stored.len() != 4 {
            return Err(bad("snapshot too short"));
        }
        let stored = u32::from_le_bytes([
            self.stored[0],
            self.stored[1],
            self.stored[2],
            self.stored[3],
        ]);
        if stored != self.crc.finalize() {
            return Err(bad("snapshot damaged in transfer (CRC mismatch)"));
        }
        Ok(())
    }
}
