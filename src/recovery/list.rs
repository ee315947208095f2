//! Listing a store directory for recovery, and sizing the keydir for what it holds.

use std::collections::BTreeSet;
use std::path::Path;

use crate::fault::FaultInjector;
use crate::files::hint;
use crate::format::FILE_HEADER_LEN;
use crate::io::fs;
use crate::keydir::KeyDir;
use crate::layout::{self, data_path, hint_path, DirEntry};
use crate::stats::RecoveryReport;
use crate::Result;

/// The datafiles and hint files of a store directory.
pub(super) struct Listing {
    /// Datafile ids, ascending.
    pub(super) data: Vec<u32>,
    /// Ids of the hint files that have their datafile.
    pub(super) hints: BTreeSet<u32>,
    /// The datafile the writer appended to last (see [`last_log_file`]).
    pub(super) last: Option<u32>,
}

/// Lists the files of `dir`, removing leftover temporary files and hint files without a
/// datafile.
/// With `fault` `None` (a read-only open) nothing is removed.
pub(super) fn list(
    dir: &Path,
    fault: Option<Option<&FaultInjector>>,
    report: &mut RecoveryReport,
) -> Result<Listing> {
    let mut data_ids = BTreeSet::new();
    let mut hint_ids = BTreeSet::new();
    let mut retired = BTreeSet::new();
    let mut vals_ids = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match layout::parse_name(name) {
            Some(DirEntry::Data(id)) => {
                data_ids.insert(id);
            }
            Some(DirEntry::Hint(id)) => {
                hint_ids.insert(id);
            }
            Some(DirEntry::Retired(id)) => {
                retired.insert(id);
            }
            Some(DirEntry::Vals(id)) => {
                vals_ids.insert(id);
            }
            Some(DirEntry::Temp) => {
                if let Some(fault) = fault {
                    tracing::info!(file = name, "removing a leftover temporary file");
                    fs::remove_file(fault, &entry.path())?;
                    report.temp_files_removed += 1;
                }
            }
            None => {}
        }
    }
    // A retired datafile is merged away: its records are in the merge's outputs.
    data_ids.retain(|id| !retired.contains(id));
    if let Some(fault) = fault {
        for &id in hint_ids.difference(&data_ids) {
            tracing::info!(id, "removing a hint file without its datafile");
            fs::remove_file(fault, &hint_path(dir, id))?;
        }
        for &id in vals_ids.difference(&data_ids) {
            // Left by a crash while its (empty) datafile was removed, or by a merge's
            // deletion of its inputs: nothing points into it.
            tracing::info!(id, "removing a value file without its datafile");
            fs::remove_file(fault, &layout::vals_path(dir, id))?;
        }
    }
    let data: Vec<u32> = data_ids.iter().copied().collect();
    let last = last_log_file(dir, &data)?;
    Ok(Listing {
        data,
        hints: hint_ids,
        last,
    })
}

/// The datafile the writer appended to last: the highest id not written by a merge. Only it may
/// end in a torn record (merge outputs are complete before they get their final name).
pub(super) fn last_log_file(dir: &Path, ids: &[u32]) -> Result<Option<u32>> {
    use std::os::unix::fs::FileExt;
    for &id in ids.iter().rev() {
        let f = std::fs::File::open(data_path(dir, id))?;
        let mut hdr = [0u8; FILE_HEADER_LEN];
        let merged = f.read_exact_at(&mut hdr, 0).is_ok()
            && matches!(
                crate::format::decode_any_file_header(&hdr),
                Ok((_, crate::format::FileKind::Merged))
            );
        if !merged {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// Bytes of a datafile without a hint that [`estimate_records`] looks at.
const ESTIMATE_SAMPLE: u64 = 1 << 20;

/// The records in a datafile of `len` bytes that has no hint, estimated from the record sizes
/// in its first MiB. A fixed bytes-per-record guess is wrong either way: too high for large
/// values (the keydir would be sized, and its pages touched, for many times the keys), too low
/// for tiny ones (many rebuilds while loading).
pub(super) fn estimate_records(path: &Path, len: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let body = len.saturating_sub(FILE_HEADER_LEN as u64);
    let fallback = body / 256;
    let Ok(f) = std::fs::File::open(path) else {
        return fallback;
    };
    let mut buf = vec![0u8; body.min(ESTIMATE_SAMPLE) as usize];
    if f.read_exact_at(&mut buf, FILE_HEADER_LEN as u64).is_err() {
        return fallback;
    }
    let (mut off, mut n) = (0u64, 0u64);
    while let Some(rest) = buf.get(off as usize..) {
        let Ok(h) = crate::format::decode_record_header(rest) else {
            break;
        };
        if off + h.record_len() > buf.len() as u64 {
            break;
        }
        off += h.record_len();
        n += 1;
    }
    if n == 0 {
        return fallback;
    }
    // body < 4 GiB and n < 1 MiB: no overflow.
    body / off.max(1) * n + body % off.max(1) * n / off.max(1)
}

/// A keydir sized for the store in `dir`: the record counts of its hint files, plus an estimate
/// for datafiles without one. Saves the rehashing of a growing map during recovery.
pub(crate) fn sized_keydir(dir: &Path) -> KeyDir {
    let mut n = 0u64;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            match name.to_str().and_then(layout::parse_name) {
                Some(DirEntry::Hint(_)) => n += hint::footer_count(&e.path()).unwrap_or(0),
                Some(DirEntry::Data(id)) if !hint_path(dir, id).exists() => {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    n += estimate_records(&e.path(), len);
                }
                _ => {}
            }
        }
    }
    // Hints count records, not keys (overwrites, tombstones): cap the guess.
    KeyDir::with_capacity(n.min(1 << 28) as usize)
}
