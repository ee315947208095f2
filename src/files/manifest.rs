//! The merge manifest `MERGE`: its rename into place commits a merge; open finishes a committed
//! merge before anything else is loaded.

use std::path::{Path, PathBuf};

use crate::fault::FaultInjector;
use crate::format::{self, Manifest};
use crate::io::fs::{self, remove_if_exists};
use crate::layout::{data_path, hint_path, temp_path, MANIFEST_NAME};
use crate::{Error, Result};

/// Path of the manifest in `dir`.
pub(crate) fn manifest_path(dir: &Path) -> PathBuf {
    dir.join(MANIFEST_NAME)
}

/// Open-time step: completes a merge whose manifest was committed. Returns its manifest.
pub(crate) fn finish_committed(
    dir: &Path,
    fault: Option<&FaultInjector>,
) -> Result<Option<Manifest>> {
    let path = manifest_path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let m = format::decode_manifest(&bytes).map_err(|e| Error::Corrupt {
        file: path.clone(),
        offset: 0,
        reason: format!("merge manifest: {e}"),
    })?;
    for &id in &m.outputs {
        for final_path in [data_path(dir, id), hint_path(dir, id)] {
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
    }
    fs::sync_dir(fault, dir)?;
    fs::remove_file(fault, &path)?;
    fs::sync_dir(fault, dir)?;
    Ok(Some(m))
}
