//! File-system operations of the engine outside datafile reads and appends, each through the fault
//! seam: rename, unlink, directory sync, and writing a new file in one synced piece.

use std::io;
use std::path::Path;
use std::sync::Arc;

use super::IoFile;
use crate::fault::{fault_point, FaultInjector};
use crate::options::IoBackendKind;

/// `rename(from, to)` through the fault seam.
pub(crate) fn rename(fault: Option<&FaultInjector>, from: &Path, to: &Path) -> io::Result<()> {
    fault_point(fault)?;
    std::fs::rename(from, to)
}

/// `unlink(path)` through the fault seam.
pub(crate) fn remove_file(fault: Option<&FaultInjector>, path: &Path) -> io::Result<()> {
    fault_point(fault)?;
    std::fs::remove_file(path)
}

/// `fsync` of a directory, so that creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(fault: Option<&FaultInjector>, dir: &Path) -> io::Result<()> {
    fault_point(fault)?;
    std::fs::File::open(dir)?.sync_all()?;
    if let Some(fi) = fault {
        fi.note_dir_sync(dir);
    }
    Ok(())
}

/// Creates `path` for writing (and reading); fails if it exists.
pub(crate) fn create_file(fault: Option<&FaultInjector>, path: &Path) -> io::Result<std::fs::File> {
    fault_point(fault)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    if let Some(fi) = fault {
        fi.note_created(path);
    }
    Ok(f)
}

/// Opens the existing file `path` for writing (truncation at recovery).
pub(crate) fn open_for_write(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).open(path)
}

/// `unlink(path)`; `Ok(false)` if it did not exist.
pub(crate) fn remove_if_exists(
    fault: Option<&FaultInjector>,
    path: &Path,
) -> std::io::Result<bool> {
    match remove_file(fault, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates `path` (a temporary name), writes `bytes` and syncs it.
pub(crate) async fn write_temp(
    kind: IoBackendKind,
    path: &Path,
    bytes: Vec<u8>,
    fault: Option<&Arc<FaultInjector>>,
) -> std::io::Result<()> {
    let f = IoFile::create_new(kind, path, fault.cloned())?;
    let (r, _) = f.write_all_at(bytes, 0).await;
    r?;
    f.sync_all().await
}
