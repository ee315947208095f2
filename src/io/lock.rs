//! Directory locks: a read-write store holds an exclusive `flock` on its directory and on its
//! `LOCK` file; read-only handles hold shared `flock`s on the directory (they create nothing,
//! so they cannot rely on a `LOCK` file existing). Any number of read-only handles share a
//! store; a read-write one excludes every other handle.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::layout::LOCK_NAME;
use crate::{Error, Result};

/// Holds the directory lock until dropped.
#[derive(Debug)]
pub(crate) struct DirLock {
    _dir: File,
    _file: Option<File>,
}

/// `flock`s `file` (shared or exclusive) without waiting; [`Error::Locked`] if a conflicting
/// lock is held. Released when the file is closed, also when the process dies, so no stale
/// lock is ever left behind.
fn try_flock(file: &File, shared: bool, dir: &Path) -> Result<()> {
    let res = if shared {
        file.try_lock_shared()
    } else {
        file.try_lock()
    };
    match res {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(Error::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(e.into()),
    }
}

fn open_dir(dir: &Path) -> Result<File> {
    File::open(dir).map_err(|e| {
        crate::io::context(e, format!("opening the store directory {}", dir.display())).into()
    })
}

impl DirLock {
    /// Takes the exclusive lock of `dir` without waiting; [`Error::Locked`] if another handle
    /// (read-write or read-only) holds it.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock> {
        let dir_file = open_dir(dir)?;
        try_flock(&dir_file, false, dir)?;
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
        // Also lock `LOCK`, which earlier versions of ringcask locked alone.
        try_flock(&file, false, dir)?;
        Ok(DirLock {
            _dir: dir_file,
            _file: Some(file),
        })
    }

    /// Takes a shared lock of `dir` without waiting, for a read-only handle; [`Error::Locked`]
    /// if a read-write handle holds it.
    pub(crate) fn acquire_shared(dir: &Path) -> Result<DirLock> {
        let dir_file = open_dir(dir)?;
        try_flock(&dir_file, true, dir)?;
        Ok(DirLock {
            _dir: dir_file,
            _file: None,
        })
    }
}
