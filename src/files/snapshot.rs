#![deny(clippy::indexing_slicing)]
//! Keydir snapshot: the whole keydir, saved by a clean close and loaded by the next open
//! instead of the hint files.
//!
//! Why: loading hint files costs one hash-table insert per record, a cache miss or two each in
//! a table far larger than the CPU caches, and a scan costs the same inserts plus reading the
//! values. The snapshot holds each shard's entries together, so loading it is one sequential
//! read per shard and inserts into a presized table that fits the CPU caches far better.
//!
//! The byte layout is in [`crate::format::snapshot`] (and DESIGN.md §3): a header listing
//! every datafile and a shard index, then each shard's live entries (key, seq, expiry,
//! location), ~37 bytes for a 16-byte key.
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
use std::io;
use std::path::Path;
use std::time::Instant;

use crate::clock::now_ms;
use crate::fault::FaultInjector;
use crate::format::snapshot::{
    decode_snapshot_entry, encode_snapshot_entry, encode_snapshot_header, snapshot_crc,
    snapshot_header_len, Listed, ShardIndex, SnapshotEntry, SnapshotFixed, SnapshotHeader,
};
use crate::format::{FILE_HEADER_LEN, RECORD_HEADER_LEN};
use crate::io::fs;
use crate::keydir::{Entry, KeyDir, ShardTable, SHARDS};
use crate::layout::{self, temp_path, DirEntry, SNAPSHOT_NAME};
use crate::stats::{FileStats, RecoveryReport};
use crate::{Options, Result};

mod header;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use header::fix_checksums;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use header::InMemory;
use header::{invalid, FileSource, Source};
pub(crate) use header::{read_header, Header, Unused};

/// Saves `keydir` as the snapshot of the store in `dir`, whose datafiles are `usage`'s and the
/// next seq is `next_seq`. Returns `false` (and writes nothing) when the directory does not
/// hold exactly those datafiles with their accounted lengths.
pub(crate) fn save(
    dir: &Path,
    keydir: &KeyDir,
    next_seq: u64,
    usage: &BTreeMap<u32, FileStats>,
    fault: Option<&FaultInjector>,
) -> io::Result<bool> {
    let files = match listed_files(dir, usage) {
        Ok(files) => files,
        Err(why) => {
            tracing::debug!("not saving a keydir snapshot: {why}");
            return Ok(false);
        }
    };
    let path = dir.join(SNAPSHOT_NAME);
    let tmp = temp_path(&path);
    let file = fs::create_file(fault, &tmp)?;
    let head_len = snapshot_header_len(files.len(), SHARDS);
    let index = write_bodies(&file, head_len as u64, keydir, fault)?;
    let fixed = SnapshotFixed {
        shards: SHARDS as u32,
        seed: keydir.seed(),
        probe: KeyDir::hash_probe(keydir.seed()),
        next_seq,
        files: files.len() as u32,
    };
    let h = encode_snapshot_header(&SnapshotHeader {
        fixed,
        files,
        index,
    });
    debug_assert_eq!(h.len(), head_len);
    crate::io::pwrite_all(fault, &file, &h, 0)?;
    drop(file);
    fs::rename(fault, &tmp, &path)?;
    Ok(true)
}

/// The datafiles to list: those of `usage`, each checked against the directory (same length,
/// none missing, none extra).
fn listed_files(
    dir: &Path,
    usage: &BTreeMap<u32, FileStats>,
) -> std::result::Result<Vec<Listed>, String> {
    let on_disk = list_dir(dir)?;
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
                return Err(format!(
                    "datafile {} does not match its accounting",
                    f.file_id
                ))
            }
        }
    }
    if files.len() != on_disk.len() {
        return Err("a datafile is not accounted for".into());
    }
    Ok(files)
}

/// Writes every shard's entries from offset `at` on (after the header's room); returns the
/// shard index.
fn write_bodies(
    file: &File,
    mut at: u64,
    keydir: &KeyDir,
    fault: Option<&FaultInjector>,
) -> io::Result<Vec<ShardIndex>> {
    let mut index = Vec::with_capacity(SHARDS);
    let mut body = Vec::new();
    for i in 0..SHARDS {
        body.clear();
        let mut entries = 0u64;
        keydir.for_each_in_shard(i, |key, e| {
            encode_snapshot_entry(
                &mut body,
                &SnapshotEntry {
                    key,
                    seq: e.seq,
                    expiry_ms: e.expiry_ms,
                    file_id: e.file_id,
                    offset: e.offset,
                    len: e.len,
                    crc: e.crc,
                },
            );
            entries += 1;
        });
        crate::io::pwrite_all(fault, file, &body, at)?;
        index.push(ShardIndex {
            offset: at,
            len: body.len() as u64,
            entries,
            crc: snapshot_crc(&body),
        });
        at += body.len() as u64;
    }
    Ok(index)
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
            Some(DirEntry::Data(id)) | Some(DirEntry::Vals(id)) => {
                // A datafile and its value file are listed as one: lengths summed, the
                // later ctime.
                let m = e.metadata().map_err(|e| format!("file {name}: {e}"))?;
                let at = out.entry(id).or_insert((0, 0, false));
                at.0 += m.len();
                at.1 = at.1.max(ctime_ns(&m));
                at.2 |= matches!(layout::parse_name(name), Some(DirEntry::Data(_)));
            }
            Some(DirEntry::Temp) if name != temp_name() => {
                return Err(format!("temporary file {name} is present"));
            }
            _ => {}
        }
    }
    if out.values().any(|f| !f.2) {
        return Err("a value file without its datafile is present".into());
    }
    Ok(out.into_iter().map(|(id, f)| (id, (f.0, f.1))).collect())
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
    let ix = head
        .index
        .get(i)
        .ok_or_else(|| invalid(format!("shard {i} is not indexed")))?;
    // `read_header` bounded the body by the file's length.
    let mut body = vec![0u8; ix.len as usize];
    src.read_at(&mut body, ix.offset)?;
    if snapshot_crc(&body) != ix.crc {
        return Err(invalid(format!("shard {i}: checksum mismatch")));
    }
    let n = head.files.len();
    let mut t = ShardTally {
        live: vec![0; n],
        min_seq: vec![u64::MAX; n],
        ..ShardTally::default()
    };
    let mut builder = KeyDir::shard_builder(head.seed, i, ix.entries as usize);
    let (mut rest, mut count) = (body.as_slice(), 0u64);
    while !rest.is_empty() {
        let (e, used) = decode_snapshot_entry(rest)
            .map_err(|err| invalid(format!("shard {i}: entry {count}: {err}")))?;
        let entry = Entry {
            seq: e.seq,
            expiry_ms: e.expiry_ms,
            file_id: e.file_id,
            offset: e.offset,
            len: e.len,
            crc: e.crc,
        };
        check_entry(&head.files, e.key, &entry, &mut t)
            .and_then(|()| builder.add(e.key, entry))
            .map_err(|why| invalid(format!("shard {i}: {why}")))?;
        rest = rest.get(used..).unwrap_or_default();
        count += 1;
    }
    if count != ix.entries {
        return Err(invalid(format!(
            "shard {i}: entry count does not match the index"
        )));
    }
    Ok((builder.finish(), t))
}

/// Checks that `e` (for `key`) points inside a listed file, and tallies it.
fn check_entry(
    files: &[Listed],
    key: &[u8],
    e: &Entry,
    t: &mut ShardTally,
) -> std::result::Result<(), &'static str> {
    let at = files
        .binary_search_by_key(&e.data_id(), |f| f.id)
        .map_err(|_| "entry in a file the snapshot does not list")?;
    let (file, live, min_seq) = match (files.get(at), t.live.get_mut(at), t.min_seq.get_mut(at)) {
        (Some(f), Some(l), Some(m)) => (f, l, m),
        _ => return Err("entry in a file the snapshot does not list"),
    };
    // A listed length counts the value file too: a bound for a value's end as well.
    let end = u64::from(e.offset) + u64::from(e.len);
    if u64::from(e.offset) < FILE_HEADER_LEN as u64 || end > file.len {
        return Err("entry outside its file");
    }
    if e.is_apart() {
        if e.len == 0 || !u64::from(e.offset).is_multiple_of(crate::format::VALS_ALIGN) {
            return Err("value kept apart out of place");
        }
    } else if (e.len as usize) < RECORD_HEADER_LEN + key.len() {
        return Err("entry shorter than its key");
    }
    *live += e.footprint(key.len());
    *min_seq = (*min_seq).min(e.seq);
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
    let parts = load_shards(src, &head, workers);
    let n = head.files.len();
    let mut live = vec![0u64; n];
    let mut min_seq = vec![u64::MAX; n];
    let (mut max_seq, mut ttl) = (0u64, false);
    let mut tables = Vec::with_capacity(SHARDS);
    for (i, p) in parts.into_iter().enumerate() {
        let (table, t) = p.ok_or_else(|| invalid(format!("shard {i} was not loaded")))??;
        for (sum, l) in live.iter_mut().zip(&t.live) {
            *sum += l;
        }
        for (min, m) in min_seq.iter_mut().zip(&t.min_seq) {
            *min = (*min).min(*m);
        }
        max_seq = max_seq.max(t.max_seq);
        ttl |= t.ttl;
        tables.push(table);
    }
    if head.next_seq <= max_seq {
        return Err(invalid("next seq not above every entry's"));
    }
    for ((l, min), live) in head.files.iter().zip(&min_seq).zip(&live) {
        if *min < l.min_seq {
            return Err(invalid("entry older than its file's first record"));
        }
        if *live > l.len.saturating_sub(FILE_HEADER_LEN as u64) {
            return Err(invalid("more live bytes than a file holds"));
        }
    }
    let keydir = KeyDir::from_shard_tables(head.seed, tables)
        .ok_or_else(|| invalid("wrong number of shards"))?;
    if ttl {
        for (id, len) in keydir.take_expired(now) {
            if let Ok(f) = head.files.binary_search_by_key(&id, |f| f.id) {
                if let Some(l) = live.get_mut(f) {
                    *l = l.saturating_sub(len);
                }
            }
        }
    }
    let usage = usage_of(&head.files, &live);
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

/// A shard's table and tally, or why it failed.
type ShardResult = std::result::Result<(ShardTable, ShardTally), Unused>;

/// Loads every shard on `workers` threads.
fn load_shards(src: &dyn Source, head: &Header, workers: usize) -> Vec<Option<ShardResult>> {
    let workers = workers.clamp(1, SHARDS);
    let mut parts: Vec<Option<ShardResult>> = (0..SHARDS).map(|_| None).collect();
    std::thread::scope(|s| {
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
        for h in handles {
            // A panic is a bug, never a validation result: pass it on.
            let done = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            for (i, r) in done {
                if let Some(p) = parts.get_mut(i) {
                    *p = Some(r);
                }
            }
        }
    });
    parts
}

/// Per-file accounting from the listed files and the live bytes the entries point at.
fn usage_of(files: &[Listed], live: &[u64]) -> BTreeMap<u32, FileStats> {
    let mut usage = BTreeMap::new();
    for (l, live) in files.iter().zip(live) {
        let mut s = FileStats::new(l.id);
        s.total_bytes = l.len;
        // A value file's header block counts as dead, as it does when the writer creates it.
        s.dead_bytes = l.len.saturating_sub(FILE_HEADER_LEN as u64 + live);
        s.min_seq = l.min_seq;
        s.sealed = true;
        usage.insert(l.id, s);
    }
    usage
}

/// Takes the snapshot of the store in `dir`, if there is one: unlinks it, and returns the
/// keydir and recovery state it holds when it is valid and describes the directory as it is.
/// `None` (after logging why) means recover from the hint files and datafiles.
///
/// # Errors
/// Only when the snapshot cannot be unlinked: leaving it would let a later open use it.
pub(crate) fn take(
    dir: &Path,
    opts: &Options,
    read_only: bool,
) -> Result<Option<(KeyDir, Restored)>> {
    let started = Instant::now();
    let path = dir.join(SNAPSHOT_NAME);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            tracing::warn!("cannot open the keydir snapshot ({e}); loading hint files");
            if !read_only {
                fs::remove_file(opts.fault_injector.as_deref(), &path)?;
            }
            return Ok(None);
        }
    };
    // A read-only open leaves it for the next read-write open (which still trusts it only
    // if the directory is exactly as it describes).
    if !read_only {
        fs::remove_file(opts.fault_injector.as_deref(), &path)?;
    }
    if !opts.keydir_snapshot {
        tracing::info!("keydir snapshots are off: deleted the one found");
        return Ok(None);
    }
    let src = FileSource {
        file: &file,
        fault: opts.fault_injector.as_deref(),
    };
    let loaded = read_header(&src).and_then(|head| {
        matches_dir(dir, &head.files).map_err(Unused::Stale)?;
        decode(&src, head, opts.recovery_workers(), now_ms())
    });
    match loaded {
        Ok(mut d) => {
            d.recovered.report.duration = started.elapsed();
            for f in d.recovered.usage.values_mut() {
                f.vals_bytes = crate::layout::vals_len(dir, f.file_id);
            }
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

/// What [`verify`] finds of a keydir snapshot.
#[derive(Debug)]
pub(crate) enum Verified {
    /// There is none.
    Absent,
    /// It decodes, and describes the directory as it is.
    Valid,
    /// It decodes, but describes another state of the directory (why).
    Stale(String),
    /// It is damaged (why).
    Damaged(String),
}

/// Decodes the snapshot in `dir` fully, without using or removing it.
pub(crate) fn verify(dir: &Path) -> Verified {
    let file = match File::open(dir.join(SNAPSHOT_NAME)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Verified::Absent,
        Err(e) => return Verified::Damaged(format!("cannot open: {e}")),
    };
    let src = FileSource {
        file: &file,
        fault: None,
    };
    let decoded = read_header(&src).and_then(|head| {
        let stale = matches_dir(dir, &head.files).err();
        // At time 0 no entry counts as expired: every entry is decoded and checked.
        decode(&src, head, 1, 0).map(|_| stale)
    });
    match decoded {
        Ok(None) => Verified::Valid,
        Ok(Some(why)) | Err(Unused::Stale(why)) => Verified::Stale(why),
        Err(Unused::Invalid(why)) => Verified::Damaged(why),
        Err(Unused::Io(e)) => Verified::Damaged(format!("cannot read: {e}")),
    }
}

#[cfg(test)]
mod tests;
