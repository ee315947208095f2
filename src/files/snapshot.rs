//! Keydir snapshot: the whole keydir, saved by a clean close and loaded by the next open
//! instead of the hint files.
//!
//! Why: loading hint files costs one hash-table insert per record, a cache miss or two each in
//! a table far larger than the CPU caches, and a scan costs the same inserts plus reading the
//! values. The snapshot is the shard tables themselves (control bytes, packed slots, long
//! keys), so loading it is sequential reads plus a check of every slot, with no insert.
//!
//! Layout (little-endian):
//!
//! ```text
//! header: magic "RCKEYDIR" | version u32 | shards u32 | slot bytes u32 | hash seed u64
//!         | next seq u64 | file count u32 | hash of a fixed string under the seed u64 (a
//!           build whose hash function differs refuses the snapshot up front)
//!         | files: (id u32 | length u64 | min seq u64 | ctime ns u64) * file count,
//!           ids ascending
//!         | index: (offset u64 | length u64 | crc32 u32) * shards
//!         | crc32 u32 of every header byte before it
//! body:   one per shard at its index offset, see `Table::write_snapshot`; its crc32 is in
//!         the index
//! ```
//!
//! Rules:
//! - Only [`crate::Db::close`] writes one: after the merge thread has stopped and the writer has
//!   sealed the active file, while the directory lock is still held, so neither the files nor
//!   the keydir change while it is written. It lists every datafile with its length.
//! - The next open takes it: the file is unlinked before anything else, valid or not, so a
//!   snapshot serves one open only.
//! - It is used only if the directory holds exactly the datafiles it lists, each with the
//!   listed length and ctime, and no merge manifest or temporary file. Datafiles are
//!   append-only and ids are never reused, so equal ids and lengths mean equal contents; the
//!   ctime also catches a file changed in place (by hand, or by a test that damages it).
//!   Otherwise open loads the hint files as usual.
//! - It is not fsynced. One torn by a power loss fails its checksums and is ignored; so is one
//!   whose unlink a power loss undid, because any later append or merge changed the files.
//! - Every slot is checked on load (its key hashes to the shard, its control byte is the key's
//!   fingerprint, no empty slot lies on its probe path, no key is stored twice, its record lies
//!   inside a listed file), so a snapshot that passes its checksums but lies still cannot make
//!   a lookup loop, panic or read outside a file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use crate::clock::now_ms;
use crate::format::{u32_at, u64_at, FILE_HEADER_LEN, RECORD_HEADER_LEN};
use crate::keydir::{Entry, KeyDir, ShardTable, SnapshotFault, SHARDS, SLOT};
use crate::layout::{self, temp_path, DirEntry, SNAPSHOT_NAME};
use crate::stats::{FileStats, RecoveryReport};
use crate::{Options, Result};

const MAGIC: [u8; 8] = *b"RCKEYDIR";
const VERSION: u32 = 1;
/// Header bytes before the file list.
const FIXED: usize = 48;
/// Bytes per listed file: id, length, min seq, ctime.
const FILE_ENTRY: usize = 28;
/// Bytes per shard index entry: offset, length, crc.
const INDEX_ENTRY: usize = 20;

/// Header length for `files` listed datafiles.
fn header_len(files: usize) -> usize {
    FIXED + files * FILE_ENTRY + SHARDS * INDEX_ENTRY + 4
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

/// A `Write` that counts bytes and checksums them.
struct Summing<W> {
    inner: W,
    bytes: u64,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Saves `keydir` as the snapshot of the store in `dir`, whose datafiles are `usage`'s and the
/// next seq is `next_seq`. Returns `false` (and writes nothing) when the directory does not
/// hold exactly those datafiles with their accounted lengths.
pub(crate) fn save(
    dir: &Path,
    keydir: &KeyDir,
    next_seq: u64,
    usage: &BTreeMap<u32, FileStats>,
) -> io::Result<bool> {
    let on_disk = match list_dir(dir) {
        Ok(d) => d,
        Err(why) => {
            tracing::debug!("not saving a keydir snapshot: {why}");
            return Ok(false);
        }
    };
    let mut files = Vec::with_capacity(usage.len());
    for f in usage.values() {
        match on_disk.get(&f.file_id) {
            Some(&(len, ctime_ns)) if len == f.total_bytes => files.push(Listed {
                id: f.file_id,
                len,
                min_seq: f.min_seq,
                ctime_ns,
            }),
            _ => {
                tracing::debug!(
                    file_id = f.file_id,
                    "not saving a keydir snapshot: a datafile does not match its accounting"
                );
                return Ok(false);
            }
        }
    }
    if files.len() != on_disk.len() {
        tracing::debug!("not saving a keydir snapshot: a datafile is not accounted for");
        return Ok(false);
    }
    let path = dir.join(SNAPSHOT_NAME);
    let tmp = temp_path(&path);
    let file = File::create(&tmp)?;
    let head_len = header_len(files.len());
    let mut w = Summing {
        inner: BufWriter::with_capacity(1 << 20, &file),
        bytes: 0,
        crc: crc32fast::Hasher::new(),
    };
    w.write_all(&vec![0u8; head_len])?;
    let mut index = Vec::with_capacity(SHARDS);
    for i in 0..SHARDS {
        let start = w.bytes;
        w.crc = crc32fast::Hasher::new();
        let expect = keydir.write_shard_snapshot(i, &mut w)?;
        let len = w.bytes - start;
        if len != expect {
            return Err(io::Error::other(format!(
                "keydir shard {i} wrote {len} snapshot bytes, expected {expect}"
            )));
        }
        index.push((start, len, std::mem::take(&mut w.crc).finalize()));
    }
    w.flush()?;
    drop(w);
    let mut h = Vec::with_capacity(head_len);
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&(SHARDS as u32).to_le_bytes());
    h.extend_from_slice(&(SLOT as u32).to_le_bytes());
    h.extend_from_slice(&keydir.seed().to_le_bytes());
    h.extend_from_slice(&next_seq.to_le_bytes());
    h.extend_from_slice(&(files.len() as u32).to_le_bytes());
    h.extend_from_slice(&KeyDir::hash_probe(keydir.seed()).to_le_bytes());
    for f in &files {
        h.extend_from_slice(&f.id.to_le_bytes());
        h.extend_from_slice(&f.len.to_le_bytes());
        h.extend_from_slice(&f.min_seq.to_le_bytes());
        h.extend_from_slice(&f.ctime_ns.to_le_bytes());
    }
    for (off, len, crc) in &index {
        h.extend_from_slice(&off.to_le_bytes());
        h.extend_from_slice(&len.to_le_bytes());
        h.extend_from_slice(&crc.to_le_bytes());
    }
    h.extend_from_slice(&crc32fast::hash(&h).to_le_bytes());
    debug_assert_eq!(h.len(), head_len);
    file.write_all_at(&h, 0)?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    Ok(true)
}

/// The datafiles of `dir`: id → (length, ctime in ns). Fails on a merge manifest or a
/// temporary file other than the snapshot's own.
fn list_dir(dir: &Path) -> std::result::Result<BTreeMap<u32, (u64, u64)>, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).map_err(|e| format!("listing the directory: {e}"))? {
        let e = e.map_err(|e| format!("listing the directory: {e}"))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == layout::MANIFEST_NAME {
            return Err("a merge manifest is present".into());
        }
        match layout::parse_name(name) {
            Some(DirEntry::Data(id)) => {
                let m = e.metadata().map_err(|e| format!("datafile {id}: {e}"))?;
                out.insert(id, (m.len(), ctime_ns(&m)));
            }
            Some(DirEntry::Temp) if name != temp_name() => {
                return Err(format!("temporary file {name} is present"));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Status-change time in ns: any write, truncation or metadata change moves it.
fn ctime_ns(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    (m.ctime() as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(m.ctime_nsec() as u64)
}

/// Whether `dir` holds exactly the datafiles `files`, unchanged since they were listed (same
/// length and ctime), and no merge manifest or temporary file.
fn matches_dir(dir: &Path, files: &[Listed]) -> std::result::Result<(), String> {
    let on_disk = list_dir(dir)?;
    if on_disk.len() != files.len() {
        return Err(format!(
            "{} datafiles in the directory, {} in the snapshot",
            on_disk.len(),
            files.len()
        ));
    }
    for f in files {
        match on_disk.get(&f.id) {
            None => return Err(format!("datafile {} is missing", f.id)),
            Some(&(len, ctime)) if len != f.len || ctime != f.ctime_ns => {
                return Err(format!("datafile {} changed since the snapshot", f.id))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Name of the snapshot while it is written.
fn temp_name() -> String {
    format!("{SNAPSHOT_NAME}{}", layout::TEMP_SUFFIX)
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

fn invalid(why: impl Into<String>) -> Unused {
    Unused::Invalid(why.into())
}

/// A decoded snapshot header.
#[derive(Debug)]
pub(crate) struct Header {
    pub seed: u64,
    pub next_seq: u64,
    pub files: Vec<Listed>,
    /// (offset, length, crc) of each shard body.
    index: Vec<(u64, u64, u32)>,
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

/// What the entries of one shard say about the files.
#[derive(Debug, Default)]
struct ShardTally {
    /// Live record bytes per listed file (by position in the list).
    live: Vec<u64>,
    /// Smallest entry seq per listed file.
    min_seq: Vec<u64>,
    max_seq: u64,
    ttl: bool,
}

/// Loads and checks shard `i`'s body and its entries.
fn load_shard(
    src: &dyn Source,
    head: &Header,
    i: usize,
) -> std::result::Result<(ShardTable, ShardTally), Unused> {
    let (off, len, crc) = head.index[i];
    let mut pos = off;
    let mut sum = crc32fast::Hasher::new();
    let mut read = |buf: &mut [u8]| -> io::Result<()> {
        if pos + buf.len() as u64 > off + len {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        src.read_at(buf, pos)?;
        sum.update(buf);
        pos += buf.len() as u64;
        Ok(())
    };
    let table = match KeyDir::read_shard_snapshot(head.seed, i, len, &mut read) {
        Ok(t) => t,
        Err(SnapshotFault::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(invalid(format!("shard {i}: body shorter than its tables")))
        }
        Err(SnapshotFault::Io(e)) => return Err(Unused::Io(e)),
        Err(SnapshotFault::Invalid(why)) => return Err(invalid(format!("shard {i}: {why}"))),
    };
    if sum.finalize() != crc {
        return Err(invalid(format!("shard {i}: checksum mismatch")));
    }
    let n = head.files.len();
    let mut t = ShardTally {
        live: vec![0; n],
        min_seq: vec![u64::MAX; n],
        ..ShardTally::default()
    };
    let mut bad = None;
    table.for_each(|key, e| {
        if bad.is_none() {
            if let Err(why) = check_entry(&head.files, key, e, &mut t) {
                bad = Some(why);
            }
        }
    });
    match bad {
        Some(why) => Err(invalid(format!("shard {i}: {why}"))),
        None => Ok((table, t)),
    }
}

/// Checks that `e` (for `key`) points inside a listed file, and tallies it.
fn check_entry(
    files: &[Listed],
    key: &[u8],
    e: &Entry,
    t: &mut ShardTally,
) -> std::result::Result<(), &'static str> {
    let at = files
        .binary_search_by_key(&e.file_id, |f| f.id)
        .map_err(|_| "entry in a file the snapshot does not list")?;
    let end = u64::from(e.offset) + u64::from(e.len);
    if u64::from(e.offset) < FILE_HEADER_LEN as u64 || end > files[at].len {
        return Err("entry outside its file");
    }
    if (e.len as usize) < RECORD_HEADER_LEN + key.len() {
        return Err("entry shorter than its key");
    }
    t.live[at] += u64::from(e.len);
    t.min_seq[at] = t.min_seq[at].min(e.seq);
    t.max_seq = t.max_seq.max(e.seq);
    t.ttl |= e.expiry_ms != 0;
    Ok(())
}

/// A keydir and the recovery state decoded from a snapshot.
pub(crate) struct Decoded {
    pub keydir: KeyDir,
    pub recovered: Restored,
}

/// The recovery state a snapshot holds besides the keydir.
#[derive(Debug)]
pub(crate) struct Restored {
    /// First sequence number the writer may use.
    pub next_seq: u64,
    /// First datafile id the writer may use.
    pub next_file_id: u32,
    /// Per-file space accounting.
    pub usage: BTreeMap<u32, FileStats>,
    /// The report shown in `Stats::recovery`.
    pub report: RecoveryReport,
    /// Some live key has an expiry.
    pub has_ttl: bool,
}

/// Decodes the snapshot in `src` on `workers` threads, dropping entries expired at `now`.
/// The caller has checked `head` against the directory.
pub(crate) fn decode(
    src: &dyn Source,
    head: Header,
    workers: usize,
    now: u64,
) -> std::result::Result<Decoded, Unused> {
    let workers = workers.clamp(1, SHARDS);
    let mut parts: Vec<Option<std::result::Result<(ShardTable, ShardTally), Unused>>> =
        (0..SHARDS).map(|_| None).collect();
    std::thread::scope(|s| {
        let head = &head;
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || {
                    (w..SHARDS)
                        .step_by(workers)
                        .map(|i| (i, load_shard(src, head, i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // A worker that panicked leaves its shards `None`: reported below.
        for done in handles.into_iter().filter_map(|h| h.join().ok()) {
            for (i, r) in done {
                parts[i] = Some(r);
            }
        }
    });
    let n = head.files.len();
    let mut live = vec![0u64; n];
    let mut min_seq = vec![u64::MAX; n];
    let (mut max_seq, mut ttl) = (0u64, false);
    let mut tables = Vec::with_capacity(SHARDS);
    for (i, p) in parts.into_iter().enumerate() {
        let (table, t) = p.ok_or_else(|| invalid(format!("shard {i} was not loaded")))??;
        for f in 0..n {
            live[f] += t.live[f];
            min_seq[f] = min_seq[f].min(t.min_seq[f]);
        }
        max_seq = max_seq.max(t.max_seq);
        ttl |= t.ttl;
        tables.push(table);
    }
    if head.next_seq <= max_seq {
        return Err(invalid("next seq not above every entry's"));
    }
    for (f, l) in head.files.iter().enumerate() {
        if min_seq[f] < l.min_seq {
            return Err(invalid("entry older than its file's first record"));
        }
        if live[f] > l.len - FILE_HEADER_LEN as u64 {
            return Err(invalid("more live bytes than a file holds"));
        }
    }
    let keydir = KeyDir::from_shard_tables(head.seed, tables)
        .ok_or_else(|| invalid("wrong number of shards"))?;
    if ttl {
        for (id, len) in keydir.take_expired(now) {
            if let Ok(f) = head.files.binary_search_by_key(&id, |f| f.id) {
                live[f] -= u64::from(len);
            }
        }
    }
    let mut usage = BTreeMap::new();
    for (f, l) in head.files.iter().enumerate() {
        let mut s = FileStats::new(l.id);
        s.total_bytes = l.len;
        s.dead_bytes = l.len - FILE_HEADER_LEN as u64 - live[f];
        s.min_seq = l.min_seq;
        s.sealed = true;
        usage.insert(l.id, s);
    }
    let max_id = head.files.last().map_or(0, |f| f.id);
    let next_file_id = max_id
        .checked_add(1)
        .ok_or_else(|| invalid("datafile ids are exhausted"))?;
    let report = RecoveryReport {
        from_snapshot: true,
        keys: keydir.len(),
        ..RecoveryReport::default()
    };
    Ok(Decoded {
        keydir,
        recovered: Restored {
            next_seq: head.next_seq,
            next_file_id,
            usage,
            report,
            has_ttl: ttl,
        },
    })
}

/// Takes the snapshot of the store in `dir`, if there is one: unlinks it, and returns the
/// keydir and recovery state it holds when it is valid and describes the directory as it is.
/// `None` (after logging why) means recover from the hint files and datafiles.
///
/// # Errors
/// Only when the snapshot cannot be unlinked: leaving it would let a later open use it.
pub(crate) fn take(dir: &Path, opts: &Options) -> Result<Option<(KeyDir, Restored)>> {
    let started = Instant::now();
    let path = dir.join(SNAPSHOT_NAME);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            tracing::warn!("cannot open the keydir snapshot ({e}); loading hint files");
            std::fs::remove_file(&path)?;
            return Ok(None);
        }
    };
    std::fs::remove_file(&path)?;
    if !opts.keydir_snapshot {
        tracing::info!("keydir snapshots are off: deleted the one found");
        return Ok(None);
    }
    let loaded = read_header(&file).and_then(|head| {
        matches_dir(dir, &head.files).map_err(Unused::Stale)?;
        decode(&file, head, opts.recovery_workers(), now_ms())
    });
    match loaded {
        Ok(mut d) => {
            d.recovered.report.duration = started.elapsed();
            tracing::info!(
                dir = %dir.display(),
                keys = d.recovered.report.keys,
                elapsed_ms = d.recovered.report.duration.as_millis() as u64,
                "recovered store from its keydir snapshot"
            );
            Ok(Some((d.keydir, d.recovered)))
        }
        Err(Unused::Stale(why)) => {
            tracing::info!("keydir snapshot is stale ({why}); loading hint files");
            Ok(None)
        }
        Err(Unused::Invalid(why)) => {
            tracing::warn!("keydir snapshot is damaged ({why}); loading hint files");
            Ok(None)
        }
        Err(Unused::Io(e)) => {
            tracing::warn!("reading the keydir snapshot failed ({e}); loading hint files");
            Ok(None)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Db, SyncPolicy};
    use std::collections::BTreeMap as Map;
    use std::path::PathBuf;

    fn opts() -> Options {
        Options::default()
            .sync(SyncPolicy::Never)
            .max_file_bytes(8192)
            .preallocate_bytes(0)
            .auto_merge(false)
    }

    async fn contents(db: &Db) -> Map<Vec<u8>, Vec<u8>> {
        let mut m = Map::new();
        for k in db.keys() {
            let v = db.get(&k).await.expect("get").expect("listed key");
            m.insert(k.to_vec(), v.to_vec());
        }
        m
    }

    /// Writes a store of several files (overwrites, deletes, long keys, TTLs) and closes it;
    /// returns its contents.
    fn make_store(dir: &Path) -> Map<Vec<u8>, Vec<u8>> {
        futures::executor::block_on(async {
            let db = Db::open(dir, opts()).await.expect("open");
            for i in 0..600u32 {
                let k = format!("key{}{}", i % 250, "L".repeat((i % 3) as usize * 9));
                db.put(k, format!("value-{i}")).await.expect("put");
            }
            for i in (0..250u32).step_by(7) {
                db.delete(format!("key{i}")).await.expect("delete");
            }
            let hour = std::time::Duration::from_secs(3600);
            db.put_with_ttl("ttl-long", "stays", hour)
                .await
                .expect("ttl");
            db.put_with_ttl("ttl-short", "goes", std::time::Duration::from_millis(1))
                .await
                .expect("ttl");
            std::thread::sleep(std::time::Duration::from_millis(5));
            let want = contents(&db).await;
            assert!(want.contains_key(&b"ttl-long"[..]));
            assert!(!want.contains_key(&b"ttl-short"[..]));
            db.close().await.expect("close");
            want
        })
    }

    /// Opens `dir`, checks its contents, closes it if `close`; returns the recovery report.
    fn reopen(dir: &Path, o: Options, want: &Map<Vec<u8>, Vec<u8>>, close: bool) -> RecoveryReport {
        futures::executor::block_on(async {
            let db = Db::open(dir, o).await.expect("reopen");
            assert!(
                !dir.join(SNAPSHOT_NAME).exists(),
                "the open took the snapshot"
            );
            assert_eq!(&contents(&db).await, want);
            let r = db.stats().recovery;
            if close {
                db.close().await.expect("close");
            }
            r
        })
    }

    /// The accounting per file, as open rebuilt it.
    fn accounting(dir: &Path, o: Options) -> (RecoveryReport, Vec<(u32, u64, u64)>, u64) {
        futures::executor::block_on(async {
            let db = Db::open(dir, o).await.expect("reopen");
            let st = db.stats();
            let mut files: Vec<_> = st
                .files
                .iter()
                .map(|f| (f.file_id, f.total_bytes, f.dead_bytes))
                .collect();
            files.sort();
            let next = {
                db.put("probe-seq", "x").await.expect("put");
                db.stats().puts
            };
            // Leave without a snapshot so that the caller decides what the next open sees.
            drop(db);
            (st.recovery, files, next)
        })
    }

    /// A clean close saves a snapshot; the next open loads it with the same contents and the
    /// same space accounting as a load from the hint files, and it serves one open only.
    #[test]
    fn snapshot_loads_like_the_hint_files() {
        let tmp = tempfile::tempdir().expect("tmp");
        let want = make_store(tmp.path());
        assert!(tmp.path().join(SNAPSHOT_NAME).exists());
        let saved = std::fs::read(tmp.path().join(SNAPSHOT_NAME)).expect("read");
        let (snap, snap_files, _) = accounting(tmp.path(), opts());
        assert!(snap.from_snapshot, "{snap:?}");
        assert!(snap.files_from_hints == 0 && snap.files_scanned == 0);
        // Undo that session: its probe write went to a file of its own (the snapshot was
        // taken, so nothing changed the old files).
        let newest = std::fs::read_dir(tmp.path())
            .expect("dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "data"))
            .max()
            .expect("a datafile");
        std::fs::remove_file(&newest).expect("rm");
        let _ = std::fs::remove_file(newest.with_extension("hint"));
        let (hints, hint_files, _) = accounting(tmp.path(), opts().keydir_snapshot(false));
        assert!(
            !hints.from_snapshot && hints.files_from_hints > 1,
            "{hints:?}"
        );
        assert_eq!(snap_files, hint_files, "per-file accounting");
        assert_eq!(snap.keys, hints.keys);
        // The saved bytes decode on their own too, with the same keys.
        let head = read_header(&InMemory(&saved)).expect("header");
        let d = decode(&InMemory(&saved), head, 3, now_ms()).expect("decode");
        assert_eq!(d.keydir.len(), want.len());
        // Damage with the checksums recomputed reaches the checks behind them: each
        // snapshot is refused or decodes to a keydir in which every key is found.
        let (mut refused, mut rng) = (0, 0x9E37_79B9_7F4A_7C15u64);
        for _ in 0..300 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut bad = saved.clone();
            let at = rng as usize % bad.len();
            bad[at] ^= 1 << (rng >> 60 & 7);
            fix_checksums(&mut bad);
            let decoded =
                read_header(&InMemory(&bad)).and_then(|h| decode(&InMemory(&bad), h, 2, now_ms()));
            match decoded {
                Ok(d) => d.keydir.for_each(|k, e| {
                    assert_eq!(d.keydir.get(k), Some(*e), "stored key not found");
                }),
                Err(_) => refused += 1,
            }
        }
        assert!(
            refused > 50,
            "only {refused} of 300 damaged snapshots refused"
        );
    }

    /// A snapshot that does not describe the directory, or is damaged, is deleted and the
    /// open loads the hint files; nothing is lost and nothing comes back.
    #[test]
    fn stale_or_damaged_snapshots_fall_back_to_the_hint_files() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        let mut want = make_store(dir);
        let snap_path = dir.join(SNAPSHOT_NAME);
        let saved = std::fs::read(&snap_path).expect("read");
        let put_back = |bytes: &[u8]| std::fs::write(&snap_path, bytes).expect("write");

        // A power loss undid the unlink of a snapshot the last session had taken, after that
        // session wrote, deleted and merged.
        futures::executor::block_on(async {
            let db = Db::open(dir, opts()).await.expect("open");
            db.put("after", "the snapshot").await.expect("put");
            db.delete("key1").await.expect("delete");
            db.merge().await.expect("merge");
            drop(db);
        });
        want.insert(b"after".to_vec(), b"the snapshot".to_vec());
        want.remove(&b"key1"[..]);
        put_back(&saved);
        let r = reopen(dir, opts(), &want, true);
        assert!(!r.from_snapshot, "{r:?}");

        // Fresh snapshot from that close, then each kind of damage.
        let saved = std::fs::read(&snap_path).expect("a snapshot of the last close");
        let data: Vec<PathBuf> = {
            let mut v: Vec<_> = std::fs::read_dir(dir)
                .expect("dir")
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "data"))
                .collect();
            v.sort();
            v
        };
        let last = data.last().expect("a datafile").clone();
        let aside = last.with_extension("data.bak");
        // (what, damage, whether the directory still holds every key)
        type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, bool);
        let mut cases: Vec<Case> = vec![
            ("valid", Box::new(|| {}), true),
            (
                "a datafile changed in place",
                Box::new(|| {
                    let b = std::fs::read(&data[0]).expect("read");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    std::fs::write(&data[0], b).expect("rewrite");
                }),
                true,
            ),
            (
                "a datafile missing",
                Box::new(|| std::fs::rename(&last, &aside).expect("mv")),
                false,
            ),
            (
                "a temporary file",
                Box::new(|| std::fs::write(dir.join("0000000099.data.tmp"), b"x").expect("w")),
                true,
            ),
        ];
        for at in [0usize, 5, 20, 41, saved.len() / 2, saved.len() - 1] {
            let mut bad = saved.clone();
            bad[at] ^= 0x40;
            cases.push(("a flipped byte", Box::new(move || put_back(&bad)), true));
        }
        let short = saved[..saved.len() - 10].to_vec();
        cases.push(("cut short", Box::new(move || put_back(&short)), true));
        cases.push(("not a snapshot", Box::new(|| put_back(b"hello")), true));
        for (what, damage, complete) in &cases {
            put_back(&saved);
            damage();
            let r = futures::executor::block_on(async {
                let db = Db::open(dir, opts()).await.expect("reopen");
                assert!(!snap_path.exists(), "{what}: the open took the snapshot");
                if *complete {
                    assert!(contents(&db).await == want, "{what}: contents differ");
                }
                db.stats().recovery
            });
            assert_eq!(r.from_snapshot, *what == "valid", "{what}: {r:?}");
            if aside.exists() {
                std::fs::rename(&aside, &last).expect("mv back");
            }
        }
        // With snapshots off, close saves none and open deletes one it finds.
        put_back(&saved);
        let r = reopen(dir, opts().keydir_snapshot(false), &want, true);
        assert!(!r.from_snapshot);
        assert!(!snap_path.exists(), "no snapshot saved with the option off");
    }
}
