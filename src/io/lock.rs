//! The `LOCK` file: an exclusive `flock` held for the life of a read-write store.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::layout::LOCK_NAME;
use crate::{Error, Result};

/// Holds the directory lock until dropped.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir` without waiting; [`Error::Locked`] if another handle holds it.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_NAME))
            .map_err(|e| {
                let what = format!("opening the lock file {}", dir.join(LOCK_NAME).display());
                crate::io::context(e, what)
            })?;
        // `try_lock` is `flock(LOCK_EX | LOCK_NB)` on Linux: released when the file is closed,
        // also when the process dies, so no stale lock is ever left behind.
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(Error::Locked {
                dir: dir.to_path_buf(),
            }),
            Err(TryLockError::Error(e)) => Err(e.into()),
        }
    }
}
