//! The merge manifest `MERGE`: its rename into place commits a merge; open finishes a committed
//! merge before anything else is loaded.

use std::path::{Path, PathBuf};

use crate::fault::FaultInjector;
use crate::format::{self, Manifest};
use crate::io::fs::{self, remove_if_exists};
use crate::layout::{self, data_path, hint_path, retired_path, temp_path, DirEntry, MANIFEST_NAME};
use crate::{Error, Result};

/// Path of the manifest in `dir`.
pub(crate) fn manifest_path(dir: &Path) -> PathBuf {
    dir.join(MANIFEST_NAME)
}

/// The committed merge manifest of `dir`, if any, read without changing anything.
pub(crate) fn pending(dir: &Path) -> Result<Option<Manifest>> {
    let path = manifest_path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    format::decode_manifest(&bytes)
        .map(Some)
        .map_err(|e| Error::Corrupt {
            file: path,
            offset: 0,
            reason: format!("merge manifest: {e}"),
        })
}

/// For a read-only open, which finishes nothing on disk: the datafiles to leave out so that
/// the committed merge `m` reads as finished. When every output has its final name, the
/// inputs (some may be deleted already: a tombstone the merge dropped may be gone with them).
/// Otherwise no input was deleted yet (outputs are renamed before inputs go): the outputs are
/// left out and the store reads as before the merge, which holds the same records.
pub(crate) fn merged_in_memory(dir: &Path, m: &Manifest) -> std::collections::BTreeSet<u32> {
    if m.outputs.iter().all(|&id| data_path(dir, id).exists()) {
        m.inputs.iter().copied().collect()
    } else {
        m.outputs.iter().copied().collect()
    }
}

/// Open-time step: completes a merge whose manifest was committed. Returns its manifest.
pub(crate) fn finish_committed(
    dir: &Path,
    fault: Option<&FaultInjector>,
) -> Result<Option<Manifest>> {
    let path = manifest_path(dir);
    let Some(m) = pending(dir)? else {
        return Ok(None);
    };
    for &id in &m.outputs {
        let names = [
            layout::vals_path(dir, id),
            data_path(dir, id),
            hint_path(dir, id),
        ];
        for final_path in names {
            let tmp = temp_path(&final_path);
            if tmp.exists() {
                fs::rename(fault, &tmp, &final_path)?;
            }
        }
        if !data_path(dir, id).exists() {
            return Err(Error::Corrupt {
                file: path,
                offset: 0,
                reason: format!("merge output {id} named by the manifest is missing"),
            });
        }
    }
    fs::sync_dir(fault, dir)?;
    for &id in &m.inputs {
        remove_if_exists(fault, &data_path(dir, id))?;
        remove_if_exists(fault, &hint_path(dir, id))?;
        remove_if_exists(fault, &layout::vals_path(dir, id))?;
    }
    fs::sync_dir(fault, dir)?;
    fs::remove_file(fault, &path)?;
    fs::sync_dir(fault, dir)?;
    Ok(Some(m))
}

/// Marks merged-away datafiles `ids` as retired (their hint files are deleted now, the
/// datafiles once no snapshot reads them): after a crash, open deletes them.
pub(crate) fn mark_retired(
    dir: &Path,
    ids: &[u32],
    fault: Option<&FaultInjector>,
) -> std::io::Result<()> {
    for &id in ids {
        remove_if_exists(fault, &hint_path(dir, id))?;
        fs::create_file(fault, &retired_path(dir, id))?;
    }
    fs::sync_dir(fault, dir)
}

/// Deletes retired datafiles `ids` (see [`mark_retired`]), then their markers.
pub(crate) fn delete_retired(
    dir: &Path,
    ids: &[u32],
    fault: Option<&FaultInjector>,
) -> std::io::Result<()> {
    for &id in ids {
        remove_if_exists(fault, &data_path(dir, id))?;
        remove_if_exists(fault, &hint_path(dir, id))?;
        remove_if_exists(fault, &layout::vals_path(dir, id))?;
    }
    fs::sync_dir(fault, dir)?;
    for &id in ids {
        remove_if_exists(fault, &retired_path(dir, id))?;
    }
    fs::sync_dir(fault, dir)
}

/// Open-time step: deletes every retired datafile a previous run left (it closed or crashed
/// while a snapshot still read them). Returns their ids.
pub(crate) fn remove_retired(dir: &Path, fault: Option<&FaultInjector>) -> Result<Vec<u32>> {
    let ids = retired_ids(dir)?;
    if !ids.is_empty() {
        tracing::info!(files = ?ids, "deleting merged-away datafiles left for a snapshot");
        delete_retired(dir, &ids, fault)?;
    }
    Ok(ids)
}

/// Ids of the datafiles marked retired in `dir`.
pub(crate) fn retired_ids(dir: &Path) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(DirEntry::Retired(id)) = name.to_str().and_then(layout::parse_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}
