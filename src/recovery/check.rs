//! [`check`]: verifies a store directory without changing it: every record's CRC in every
//! datafile, every hint file, and the keydir snapshot; damage is reported by file and offset.

use std::path::{Path, PathBuf};

use super::list::{self, Listing};
use crate::files::datafile::{self, ScanEnd, ScanError, ScanMode};
use crate::files::{hint, snapshot};
use crate::io::lock::DirLock;
use crate::layout::{data_path, hint_path, SNAPSHOT_NAME};
use crate::stats::RecoveryReport;
use crate::Result;

/// One damaged place found by [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Damage {
    /// The damaged file.
    pub file: PathBuf,
    /// Where in it the damage starts, when known.
    pub offset: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// Datafiles checked.
    pub datafiles: usize,
    /// Records whose CRC checked out (tombstones and expired records included).
    pub records: u64,
    /// Bytes of datafiles read.
    pub bytes: u64,
    /// Hint files checked.
    pub hints: usize,
    /// Whether a keydir snapshot was found (it is checked when found).
    pub snapshot_found: bool,
    /// Why the keydir snapshot would not be used by the next open although it is intact (it
    /// describes another state of the directory: normal after a crash).
    pub snapshot_stale: Option<String>,
    /// A torn tail of the last datafile (normal after a crash: the next open cuts it).
    pub torn_tail: Option<Damage>,
    /// Everything damaged: datafile records, hint files, the keydir snapshot.
    pub damage: Vec<Damage>,
}

impl CheckReport {
    /// Whether nothing is damaged (a torn tail or a stale snapshot is not damage).
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

/// Checks the store in `dir` without changing anything: every record of every datafile
/// (header, CRC, batch framing), every hint file, and the keydir snapshot. `progress` is called
/// after each datafile with the bytes checked so far and the total. Takes the directory's
/// shared lock, so it runs beside read-only opens but not beside a writer.
///
/// ```
/// # futures::executor::block_on(async {
/// # let tmp = tempfile::tempdir()?;
/// let db = ringcask::Db::open(tmp.path(), ringcask::Options::default()).await?;
/// db.put("k", "v").await?;
/// db.close().await?;
/// let report = ringcask::check(tmp.path(), |_, _| {})?;
/// assert!(report.is_clean());
/// assert_eq!(report.records, 1);
/// # Ok::<(), ringcask::Error>(()) })?; Ok::<(), ringcask::Error>(())
/// ```
///
/// # Errors
/// [`crate::Error::Locked`] while a writer has the store open; [`crate::Error::Io`] if the
/// directory cannot be listed. Damage is reported, not returned as an error.
pub fn check(dir: impl AsRef<Path>, mut progress: impl FnMut(u64, u64)) -> Result<CheckReport> {
    let dir = dir.as_ref();
    let _lock = DirLock::acquire_shared(dir)?;
    let listing = list::list(dir, None, &mut RecoveryReport::default())?;
    let mut report = CheckReport::default();
    let total: u64 = listing
        .data
        .iter()
        .map(|&id| std::fs::metadata(data_path(dir, id)).map_or(0, |m| m.len()))
        .sum();
    // Where each datafile's committed records end: what its hint must describe.
    let mut valid_end = std::collections::HashMap::new();
    for &id in &listing.data {
        if let Some(end) = check_datafile(dir, id, &listing, &mut report) {
            valid_end.insert(id, end);
        }
        progress(report.bytes, total);
    }
    for &id in &listing.hints {
        let end = valid_end.get(&id).copied();
        check_hint(dir, id, end, &mut report);
    }
    match snapshot::verify(dir) {
        snapshot::Verified::Absent => {}
        snapshot::Verified::Valid => report.snapshot_found = true,
        snapshot::Verified::Stale(why) => {
            report.snapshot_found = true;
            report.snapshot_stale = Some(why);
        }
        snapshot::Verified::Damaged(reason) => {
            report.snapshot_found = true;
            report.damage.push(Damage {
                file: dir.join(SNAPSHOT_NAME),
                offset: None,
                reason,
            });
        }
    }
    Ok(report)
}

/// Checks datafile `id`; where its committed records end, if its header is readable.
fn check_datafile(dir: &Path, id: u32, listing: &Listing, report: &mut CheckReport) -> Option<u64> {
    let path = data_path(dir, id);
    let damage = |offset, reason| Damage {
        file: path.clone(),
        offset,
        reason,
    };
    report.datafiles += 1;
    let mut records = 0u64;
    let scanned = datafile::scan(&path, id, ScanMode::Stop, None, |_| records += 1);
    report.records += records;
    let outcome = match scanned {
        Ok(o) => o,
        Err(ScanError::Io(e)) => {
            report
                .damage
                .push(damage(None, format!("cannot read: {e}")));
            return None;
        }
        Err(ScanError::Header { err, torn }) if torn && listing.last == Some(id) => {
            report.torn_tail = Some(damage(Some(0), format!("torn header: {err}")));
            return None;
        }
        Err(ScanError::Header { err, .. }) => {
            report
                .damage
                .push(damage(Some(0), format!("bad header: {err}")));
            return None;
        }
    };
    report.bytes += outcome.file_len;
    let ScanEnd::Damaged { offset, reason } = outcome.end else {
        return Some(outcome.valid_end);
    };
    // Only the last file may end torn, and only if no valid record follows the damage (a
    // scan that skips damaged regions finds none).
    let mut all = 0u64;
    let skipped = datafile::scan(&path, id, ScanMode::Skip, None, |_| all += 1);
    if listing.last == Some(id) && skipped.is_ok() && all == records {
        report.torn_tail = Some(damage(Some(offset), reason));
        return Some(outcome.valid_end);
    }
    report.records += all.saturating_sub(records);
    let skipped = skipped.map_or(0, |o| o.skipped_bytes);
    let reason = format!("{reason} ({skipped} bytes of damaged regions in the file)");
    report.damage.push(damage(Some(offset), reason));
    // Its hint was written for the whole file (the damage came later).
    Some(outcome.file_len)
}

/// Checks the hint file of datafile `id`, whose committed records end at `data_end` (`None`:
/// the datafile's header is damaged; its length is used).
fn check_hint(dir: &Path, id: u32, data_end: Option<u64>, report: &mut CheckReport) {
    let path = hint_path(dir, id);
    report.hints += 1;
    let file_len = || std::fs::metadata(data_path(dir, id)).map_or(0, |m| m.len());
    let data_len = data_end.unwrap_or_else(file_len);
    let loaded = hint::load(&path, id, data_len, 1, None, || (), |_, _| {});
    if let Err(e) = loaded {
        report.damage.push(Damage {
            file: path,
            offset: None,
            reason: e.to_string(),
        });
    }
}
