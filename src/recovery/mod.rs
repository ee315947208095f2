//! Open-time recovery: rebuild the keydir from the keydir snapshot, hint files and datafile
//! scans.
//!
//! 0. (The caller holds the directory lock.) A keydir snapshot left by a clean close is taken
//!    (unlinked) and, when it describes the directory as it is, loaded instead of everything
//!    below ([`crate::files::snapshot`]).
//! 1. A merge whose manifest was committed is finished ([`crate::files::manifest`]). Leftover
//!    temporary files and hint files without a datafile are removed.
//! 2. Load every datafile, in parallel: from its hint file when that is present and valid,
//!    else by scanning. Every record goes through the keydir's compare-and-swap by seq;
//!    tombstones and expired records enter as markers so that they still beat older records
//!    of their key whatever order the files load in.
//! 3. The last (highest id) datafile may end in a torn record: it is truncated to the end of
//!    its last committed record, and the cut is reported. Damage inside any other datafile is
//!    `Error::Corrupt`, unless `skip_damaged_records` is set. A last file too short for its
//!    header (a creation cut short) is removed.
//! 4. Markers and expired entries are swept; per-file live/dead bytes are computed.
//! 5. Scanned files get their hint written afterwards (by the writer, off the open path).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::clock::now_ms;
use crate::fault::FaultInjector;
use crate::files::datafile::{self, ScanEnd, ScanError, ScanMode};
use crate::files::hint::{self, HintBuilder};
use crate::files::manifest;
use crate::files::snapshot;
use crate::format::{self, DecodeError, FILE_HEADER_LEN, FORMAT_VERSION};
use crate::io::{self, fs};
use crate::keydir::KeyDir;
use crate::layout::{data_path, hint_path, vals_path};
use crate::state::Recovered;
use crate::stats::{FileStats, RecoveryReport};
use crate::{Error, Options, Result};

mod apply;
pub(crate) mod check;
mod list;

use apply::{Applied, Group};
#[cfg(test)]
use list::estimate_records;
pub(crate) use list::sized_keydir;
use list::{last_log_file, list, Listing};

/// Outcome of loading one datafile.
#[derive(Debug, Default)]
struct Loaded {
    id: u32,
    from_hint: bool,
    removed: bool,
    records: u64,
    file_len: u64,
    truncated_bytes: u64,
    skipped_bytes: u64,
    /// The hint records of a scanned file (spilled to its temporary hint file as the scan
    /// goes, so a scan does not hold ~53 bytes per record in memory).
    hint: Option<HintBuilder>,
    /// What its records did to the keydir.
    applied: Applied,
}

fn corrupt(file: PathBuf, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        file,
        offset,
        reason: reason.into(),
    }
}

/// What every file load shares.
struct Ctx<'a> {
    dir: &'a Path,
    opts: &'a Options,
    keydir: &'a KeyDir,
    /// Change nothing on disk.
    read_only: bool,
    now: u64,
    /// Threads one hint file's records are applied on.
    hint_parts: usize,
}

/// What became of a file's header check.
enum Checked {
    /// The header is good.
    Good,
    /// The last file's header was torn (a creation cut short): the file was removed.
    Removed,
}

impl Ctx<'_> {
    fn fault(&self) -> Option<&FaultInjector> {
        self.opts.fault_injector.as_deref()
    }

    /// Loads datafile `id`: from its hint file when it has a usable one, else by a scan.
    fn load_file(&self, id: u32, is_last: bool, has_hint: bool) -> Result<Loaded> {
        let path = data_path(self.dir, id);
        self.load_path(&path, id, is_last, has_hint)
            .map_err(|e| match e {
                Error::Io(io) => {
                    Error::Io(io::context(io, format!("recovering {}", path.display())))
                }
                other => other,
            })
    }

    fn load_path(&self, path: &Path, id: u32, is_last: bool, has_hint: bool) -> Result<Loaded> {
        let path = path.to_path_buf();
        let file_len = std::fs::metadata(&path)?.len();
        if file_len > u64::from(u32::MAX) {
            return Err(corrupt(path, 0, "datafile of 4 GiB or more"));
        }
        let mut out = Loaded {
            id,
            file_len,
            ..Loaded::default()
        };
        if let Checked::Removed = self.check_file(&path, id, file_len, is_last, has_hint)? {
            out.removed = true;
            return Ok(out);
        }
        if has_hint && self.load_hint(id, &mut out)? {
            return Ok(out);
        }
        self.scan_file(&path, is_last, out)
    }

    /// Checks the header of datafile `id`; a torn header of the last file removes the file.
    fn check_file(
        &self,
        path: &Path,
        id: u32,
        file_len: u64,
        is_last: bool,
        has_hint: bool,
    ) -> Result<Checked> {
        let file = std::fs::File::open(path)?;
        let (err, torn) = match datafile::check_header(&file, file_len, id, self.fault()) {
            Ok(()) => return Ok(Checked::Good),
            Err(ScanError::Io(e)) => return Err(e.into()),
            Err(ScanError::Header { err, torn }) => (err, torn),
        };
        if is_last && torn && self.read_only {
            tracing::warn!(
                file = %path.display(),
                "ignoring the last datafile: its header is incomplete ({err})"
            );
            return Ok(Checked::Removed);
        }
        if is_last && torn {
            tracing::warn!(
                file = %path.display(),
                "removing the last datafile: its header is incomplete ({err})"
            );
            drop(file);
            fs::remove_file(self.fault(), path)?;
            if has_hint {
                fs::remove_file(self.fault(), &hint_path(self.dir, id))?;
            }
            return Ok(Checked::Removed);
        }
        Err(match err {
            DecodeError::UnsupportedVersion(found) => Error::UnsupportedVersion {
                file: path.to_path_buf(),
                found,
                supported: FORMAT_VERSION,
            },
            other => corrupt(path.to_path_buf(), 0, format!("datafile header: {other}")),
        })
    }

    /// Applies the hint file of `out.id`; `false` when it is unusable (then the datafile is
    /// scanned instead).
    fn load_hint(&self, id: u32, out: &mut Loaded) -> Result<bool> {
        let hp = hint_path(self.dir, id);
        let (keydir, now) = (self.keydir, self.now);
        let loaded = hint::load(
            &hp,
            id,
            out.file_len,
            self.hint_parts,
            self.fault(),
            Group::default,
            |g, h| g.push(keydir, id, h, now),
        );
        match loaded {
            Ok((n, parts)) => {
                out.from_hint = true;
                out.records = n;
                for mut g in parts {
                    g.flush(keydir, id);
                    out.applied.absorb(g.applied);
                }
                Ok(true)
            }
            Err(hint::LoadError::Unusable(why)) => {
                tracing::warn!(
                    hint = %hp.display(),
                    "hint file unusable ({why}); scanning the datafile instead"
                );
                Ok(false)
            }
            Err(hint::LoadError::Failed(why)) => Err(Error::Io(std::io::Error::other(format!(
                "loading hint file {}: {why}",
                hp.display()
            )))),
        }
    }

    /// Scans the datafile at `path`, cutting a torn tail of the last file, and spills its hint.
    fn scan_file(&self, path: &Path, is_last: bool, mut out: Loaded) -> Result<Loaded> {
        let (id, keydir, now, opts) = (out.id, self.keydir, self.now, self.opts);
        let mode = if !is_last && opts.skip_damaged_records {
            ScanMode::Skip
        } else {
            ScanMode::Stop
        };
        // A read-only open writes no hint: it only counts the records.
        let mut hb = (!self.read_only).then(|| {
            HintBuilder::spilling(
                self.dir,
                id,
                opts.hint_spill_bytes,
                opts.fault_injector.clone(),
            )
        });
        let mut group = Group::default();
        let mut records = 0u64;
        // The end of the last value in the value file that a record kept refers to.
        let mut vals_end = 0u64;
        let scanned = datafile::scan(path, id, mode, self.fault(), |h| {
            if let Some(a) = &h.apart {
                vals_end = vals_end.max(a.offset + format::vals_span(u64::from(a.len)));
            }
            group.push(keydir, id, h, now);
            records += 1;
            if let Some(hb) = &mut hb {
                hb.push(h);
            }
        });
        group.flush(keydir, id);
        out.applied.absorb(group.applied);
        let outcome = match scanned {
            Ok(o) => o,
            Err(ScanError::Io(e)) => return Err(e.into()),
            Err(ScanError::Header { err, .. }) => {
                // Checked above; only a file changed under our feet gets here.
                return Err(corrupt(
                    path.to_path_buf(),
                    0,
                    format!("datafile header: {err}"),
                ));
            }
        };
        out.records = records;
        out.skipped_bytes = outcome.skipped_bytes;
        if let ScanEnd::Damaged { offset, reason } = &outcome.end {
            out.truncated_bytes = self.torn(path, is_last, *offset, reason, &outcome)?;
        }
        if self.read_only {
            out.file_len = outcome.valid_end;
            out.removed = is_last && out.records == 0;
            return Ok(out);
        }
        if outcome.valid_end < outcome.file_len {
            let f = fs::open_for_write(path)?;
            io::set_len(self.fault(), &f, outcome.valid_end)?;
            io::sync_file(self.fault(), &f)?;
            out.file_len = outcome.valid_end;
        } else if is_last {
            // The last file of a crashed writer may hold records never synced (`Never`,
            // `IntervalMs`). From now on it is a sealed file that merges rely on: a record
            // superseded by one of its records may be dropped. Make it durable first.
            io::sync_file(self.fault(), &fs::open_for_write(path)?)?;
        }
        if is_last {
            out.removed = self.finish_last(path, id, out.records, vals_end)?;
        }
        if !out.removed {
            out.hint = hb;
        }
        Ok(out)
    }

    /// Damage at `offset` of a scanned datafile: the last file's torn tail (the bytes to cut
    /// are returned), `Corrupt` in any other.
    fn torn(
        &self,
        path: &Path,
        is_last: bool,
        offset: u64,
        reason: &str,
        outcome: &datafile::ScanOutcome,
    ) -> Result<u64> {
        if !is_last {
            return Err(corrupt(path.to_path_buf(), offset, reason.to_string()));
        }
        let cut = outcome.file_len - outcome.valid_end;
        tracing::warn!(
            file = %path.display(),
            offset,
            cut_bytes = cut,
            read_only = self.read_only,
            "torn tail in the last datafile ({reason}); truncating (in memory only when \
             read-only)"
        );
        Ok(cut)
    }

    /// After the last datafile's scan: removes it if it holds no record (with its value
    /// file), else cuts its value file after `vals_end` ([`Ctx::trim_vals`]). Returns whether
    /// the file was removed.
    fn finish_last(&self, path: &Path, id: u32, records: u64, vals_end: u64) -> Result<bool> {
        if records > 0 {
            self.trim_vals(id, vals_end)?;
            return Ok(false);
        }
        tracing::info!(file = %path.display(), "removing the empty last datafile");
        let vals = vals_path(self.dir, id);
        if vals.exists() {
            fs::remove_file(self.fault(), &vals)?;
        }
        fs::remove_file(self.fault(), path)?;
        Ok(true)
    }

    /// Cuts the last datafile's value file after `end`, the end of the last value its records
    /// refer to: what follows is the zeroes the direct-IO writer wrote ahead (up to 1 MiB), or
    /// values of records cut with a torn tail. A sealed file's value file was cut at sealing.
    fn trim_vals(&self, id: u32, end: u64) -> Result<()> {
        let path = vals_path(self.dir, id);
        let f = match fs::open_for_write(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let keep = end.max(format::VALS_ALIGN);
        let len = f.metadata()?.len();
        if len > keep {
            tracing::info!(
                file = %path.display(),
                cut_bytes = len - keep,
                "cutting the last value file after its last value"
            );
            io::set_len(self.fault(), &f, keep)?;
            io::sync_file(self.fault(), &f)?;
        }
        Ok(())
    }
}

/// Recovers the store in `dir` (whose lock the caller holds): from its keydir snapshot when
/// there is a usable one, else from hint files and datafile scans.
///
/// `read_only` changes nothing on disk: the keydir snapshot is read and kept, a committed
/// merge is finished in memory only, leftovers stay, a torn tail is ignored rather than cut,
/// and no hint file is written.
pub(crate) fn open(dir: &Path, opts: &Options, read_only: bool) -> Result<(KeyDir, Recovered)> {
    if !read_only {
        manifest::remove_retired(dir, opts.fault_injector.as_deref())?;
    }
    if let Some((keydir, restored)) = snapshot::take(dir, opts, read_only)? {
        return Ok((keydir, Recovered::from(restored)));
    }
    let keydir = sized_keydir(dir);
    let rec = recover(dir, opts, &keydir, read_only)?;
    Ok((keydir, rec))
}

/// Rebuilds `keydir` from the store in `dir`: list the files (removing leftovers), load them
/// all, then account for what they hold.
pub(crate) fn recover(
    dir: &Path,
    opts: &Options,
    keydir: &KeyDir,
    read_only: bool,
) -> Result<Recovered> {
    let started = Instant::now();
    let mut report = RecoveryReport::default();
    let fault = opts.fault_injector.as_deref();
    let mut skip = BTreeSet::new();
    if read_only {
        if let Some(m) = manifest::pending(dir)? {
            skip = manifest::merged_in_memory(dir, &m);
            report.merge_finished = m.inputs.iter().all(|id| skip.contains(id));
        }
    } else if let Some(m) = manifest::finish_committed(dir, fault)? {
        report.merge_finished = true;
        tracing::info!(
            inputs = ?m.inputs,
            outputs = ?m.outputs,
            "finished a merge that a crash interrupted after its commit"
        );
    }
    let mut files = list(dir, (!read_only).then_some(fault), &mut report)?;
    if !skip.is_empty() {
        files.data.retain(|id| !skip.contains(id));
        files.last = last_log_file(dir, &files.data)?;
    }
    // Files load in parallel; when there are fewer files than threads, hint files are split.
    let parallelism = opts.recovery_workers();
    let cx = Ctx {
        dir,
        opts,
        keydir,
        read_only,
        now: now_ms(),
        hint_parts: (parallelism / files.data.len().max(1)).max(1),
    };
    let loaded = load_all(&cx, &files, parallelism)?;
    let mut rec = account(&cx, loaded, &files, report)?;
    rec.report.keys = keydir.len();
    rec.report.duration = started.elapsed();
    let report = &rec.report;
    tracing::info!(
        dir = %dir.display(),
        keys = report.keys,
        files_from_hints = report.files_from_hints,
        files_scanned = report.files_scanned,
        truncated_bytes = report.truncated_bytes,
        elapsed_ms = report.duration.as_millis() as u64,
        "recovered store"
    );
    Ok(rec)
}

/// Loads every datafile on `parallelism` threads; the first failure stops the rest.
fn load_all(cx: &Ctx<'_>, files: &Listing, parallelism: usize) -> Result<Vec<Loaded>> {
    let ids = &files.data;
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Result<Loaded>>> = Mutex::new(Vec::with_capacity(ids.len()));
    let workers = parallelism.min(ids.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ids.len() || failed.load(Ordering::Relaxed) {
                    return;
                }
                let id = ids[i];
                let r = cx.load_file(id, Some(id) == files.last, files.hints.contains(&id));
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut loaded = Vec::with_capacity(results.len());
    for r in results {
        loaded.push(r?);
    }
    loaded.sort_by_key(|l| l.id);
    Ok(loaded)
}

/// Per-file accounting and what the writer needs, from what every load applied.
fn account(
    cx: &Ctx<'_>,
    mut loaded: Vec<Loaded>,
    files: &Listing,
    mut report: RecoveryReport,
) -> Result<Recovered> {
    // Live bytes per file, from what each load installed and replaced; everything else past
    // the header is dead.
    let mut live: BTreeMap<u32, i64> = BTreeMap::new();
    let mut markers = 0;
    let mut has_ttl = false;
    let mut max_seq = 0;
    for l in &loaded {
        let tally = &l.applied.tally;
        *live.entry(l.id).or_default() += tally.own;
        for (id, d) in &tally.others {
            *live.entry(*id).or_default() += d;
        }
        markers += tally.markers;
        has_ttl |= tally.ttl;
        max_seq = max_seq.max(l.applied.max_seq);
    }
    if markers > 0 {
        cx.keydir.sweep(cx.now);
    }
    let mut usage: BTreeMap<u32, FileStats> = BTreeMap::new();
    let mut hints_to_write = Vec::new();
    for l in &mut loaded {
        report.records_loaded += l.records;
        report.truncated_bytes += l.truncated_bytes;
        report.skipped_damaged_bytes += l.skipped_bytes;
        if l.removed {
            report.empty_files_removed += 1;
            continue;
        }
        if l.from_hint {
            report.files_from_hints += 1;
        } else {
            report.files_scanned += 1;
        }
        if let Some(h) = l.hint.take() {
            hints_to_write.push((l.id, l.file_len, h));
        }
        let mut f = FileStats::new(l.id);
        f.vals_bytes = crate::layout::vals_len(cx.dir, l.id);
        f.total_bytes = l.file_len + f.vals_bytes;
        f.min_seq = l.applied.min_seq;
        // Read-only: the last file may end in a torn tail kept on disk, so a checkpoint
        // copies its valid part rather than linking it.
        f.sealed = !(cx.read_only && Some(l.id) == files.last);
        usage.insert(l.id, f);
    }
    for (id, u) in usage.iter_mut() {
        let l = live.get(id).copied().unwrap_or(0).max(0) as u64;
        u.dead_bytes = u.total_bytes.saturating_sub(FILE_HEADER_LEN as u64 + l);
    }
    let max_id = files.data.last().copied().unwrap_or(0);
    let Some(next_file_id) = max_id.checked_add(1) else {
        return Err(Error::InvalidOptions(
            "datafile ids are exhausted; merge the store into a new directory".into(),
        ));
    };
    Ok(Recovered {
        next_seq: max_seq + 1,
        next_file_id,
        hints_to_write,
        usage,
        report,
        has_ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Db, SyncPolicy};

    /// The estimate of a hintless datafile's records is close for small and large values, and
    /// falls back to a modest guess for bytes it cannot parse.
    #[test]
    fn record_estimate_follows_the_record_size() {
        for value_len in [1usize, 10, 100, 4000] {
            let tmp = tempfile::tempdir().expect("tmp");
            let opts = Options::default()
                .sync(SyncPolicy::Never)
                .max_file_bytes(1 << 30)
                .auto_merge(false);
            let n = 3000u64;
            futures::executor::block_on(async {
                let db = Db::open(tmp.path(), opts).await.expect("open");
                for i in 0..n {
                    db.put(format!("key{i:05}"), vec![7u8; value_len])
                        .await
                        .expect("put");
                }
                db.close().await.expect("close");
            });
            let path = data_path(tmp.path(), 1);
            let len = std::fs::metadata(&path).expect("datafile").len();
            let est = estimate_records(&path, len);
            let err = est.abs_diff(n) as f64 / n as f64;
            assert!(
                err < 0.02,
                "value {value_len}: estimated {est} records of {n}"
            );
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("garbage");
        let mut bytes = vec![0xA5u8; 1 << 16];
        bytes[..FILE_HEADER_LEN].fill(0);
        std::fs::write(&path, &bytes).expect("write");
        let body = (bytes.len() - FILE_HEADER_LEN) as u64;
        assert_eq!(estimate_records(&path, bytes.len() as u64), body / 256);
        let missing = estimate_records(&tmp.path().join("missing"), 1 << 20);
        assert_eq!(missing, ((1 << 20) - FILE_HEADER_LEN as u64) / 256);
    }
}
