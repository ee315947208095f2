//! Consistent backups of a live store.
//!
//! Protocol (DESIGN.md §8c):
//! 1. Pin the datafiles (as a snapshot does) so that no merge deletes one meanwhile.
//! 2. With appends paused (the append lock), read the file list: every datafile's id, length
//!    and whether it is sealed. Every write acknowledged before the call is applied, so it is
//!    inside these lengths; the pause lasts a copy of the usage table.
//! 3. On a thread of its own (never the caller's executor): into `<dest>.checkpoint.tmp`,
//!    hard-link each sealed datafile and its hint file (copy where a link is refused: another
//!    file system, ...), and copy the first `length` bytes of each unsealed (active) one.
//!    Copies are fsynced; linked files were fsynced when sealed.
//! 4. fsync the temporary directory, rename it to `dest`, fsync the parent: a crash before the
//!    rename leaves only the temporary directory (the next checkpoint to `dest` removes it).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::snapshot::FilePin;
use super::Db;
use crate::io::context;
use crate::layout::{data_path, hint_path, vals_path};
use crate::{Error, Result};

/// What [`Db::checkpoint`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointReport {
    /// The checkpoint's directory.
    pub path: PathBuf,
    /// Files hard-linked (sealed datafiles and their hint files).
    pub files_linked: u64,
    /// Bytes of the files hard-linked (no data was written for them).
    pub bytes_linked: u64,
    /// Files copied (the active datafile, and files that could not be linked).
    pub files_copied: u64,
    /// Bytes copied.
    pub bytes_copied: u64,
    /// Wall time.
    pub duration: Duration,
}

/// A datafile as the checkpoint found it.
struct Source {
    id: u32,
    /// Bytes of the datafile, and of its value file, to copy when it is not sealed.
    len: u64,
    vals_len: u64,
    sealed: bool,
}

impl Db {
    /// Writes a consistent copy of the store to the new directory `dest` while the store keeps
    /// serving: everything acknowledged before the call is in it, and it opens as an ordinary
    /// store (with [`Db::open`] or [`Db::open_read_only`]).
    ///
    /// Sealed datafiles are hard-linked (so a checkpoint on the same file system costs
    /// little space and time), the active datafile is copied up to the checkpoint's point.
    /// Everything is written under `<dest>.checkpoint.tmp`, fsynced, then renamed to `dest`:
    /// a crash never leaves a `dest` that looks complete but is not. The work runs on a
    /// thread of its own; appends pause only while the file list is read.
    ///
    /// ```
    /// # fn main() -> Result<(), ringcask::Error> {
    /// # let tmp = tempfile::tempdir()?;
    /// # futures::executor::block_on(async {
    /// use ringcask::{Db, Options};
    /// let db = Db::open(tmp.path().join("live"), Options::default()).await?;
    /// db.put("k", "v").await?;
    /// let report = db.checkpoint(tmp.path().join("backup")).await?;
    /// assert!(report.files_copied + report.files_linked > 0);
    /// let backup = Db::open(tmp.path().join("backup"), Options::default()).await?;
    /// assert_eq!(backup.get("k").await?.as_deref(), Some(&b"v"[..]));
    /// # backup.close().await?;
    /// # db.close().await })
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] if `dest` already exists (kind `AlreadyExists`) or a file cannot be
    /// linked, copied or synced (the temporary directory is then removed);
    /// [`Error::Closed`].
    pub async fn checkpoint(&self, dest: impl AsRef<Path>) -> Result<CheckpointReport> {
        let inner = self.live()?;
        let dest = dest.as_ref().to_path_buf();
        if dest.exists() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("checkpoint destination {} already exists", dest.display()),
            )));
        }
        let pin = FilePin::new(inner);
        let (sources, upto): (Vec<Source>, u64) = inner.appender.quiesced(|| {
            let sources = inner.shared.with_usage(|u| {
                u.values()
                    .map(|f| Source {
                        id: f.file_id,
                        len: f.data_bytes(),
                        vals_len: f.vals_bytes,
                        sealed: f.sealed,
                    })
                    .collect()
            });
            (sources, inner.appender.appended_seq())
        });
        if inner.opts.direct_writes() && !inner.appender.is_synced(upto) {
            // The direct-IO writer holds the active file's last records in memory until its
            // next group write: have it write them before that file is copied.
            crate::write::request_sync(&inner.write_tx, upto).await?;
        }
        let dir = inner.dir.clone();
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("ringcask-checkpoint".into())
            .spawn(move || {
                let res = write_checkpoint(&dir, &sources, &dest);
                drop(pin);
                let _ = tx.send(res);
            })?;
        let report = rx
            .await
            .map_err(|_| Error::Io(std::io::Error::other("the checkpoint thread stopped")))??;
        tracing::info!(
            dest = %report.path.display(),
            files_linked = report.files_linked,
            bytes_linked = report.bytes_linked,
            files_copied = report.files_copied,
            bytes_copied = report.bytes_copied,
            elapsed_ms = report.duration.as_millis() as u64,
            "checkpoint written"
        );
        Ok(report)
    }
}

/// Path of the temporary directory a checkpoint to `dest` is written in.
fn temp_dir(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".checkpoint.tmp");
    PathBuf::from(name)
}

/// Steps 3 and 4 of the protocol.
fn write_checkpoint(dir: &Path, sources: &[Source], dest: &Path) -> Result<CheckpointReport> {
    let started = Instant::now();
    let tmp = temp_dir(dest);
    let ctx =
        |e: std::io::Error, what: &str, p: &Path| context(e, format!("{what} {}", p.display()));
    if tmp.exists() {
        tracing::info!(dir = %tmp.display(), "removing an unfinished checkpoint");
        std::fs::remove_dir_all(&tmp).map_err(|e| ctx(e, "removing", &tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| ctx(e, "creating", &tmp))?;
    let mut report = CheckpointReport {
        path: dest.to_path_buf(),
        ..CheckpointReport::default()
    };
    let res = (|| -> std::io::Result<()> {
        for s in sources {
            let (from, to) = (data_path(dir, s.id), data_path(&tmp, s.id));
            if s.sealed {
                link_or_copy(&from, &to, &mut report)?;
                let (hint_from, hint_to) = (hint_path(dir, s.id), hint_path(&tmp, s.id));
                link_hint(&hint_from, &hint_to, &mut report)?;
                if s.vals_len > 0 {
                    let (vals_from, vals_to) = (vals_path(dir, s.id), vals_path(&tmp, s.id));
                    link_or_copy(&vals_from, &vals_to, &mut report)?;
                }
            } else {
                copy_prefix(&from, &to, s.len)?;
                report.files_copied += 1;
                report.bytes_copied += s.len;
                if s.vals_len > 0 {
                    let (vals_from, vals_to) = (vals_path(dir, s.id), vals_path(&tmp, s.id));
                    copy_prefix(&vals_from, &vals_to, s.vals_len)?;
                    report.files_copied += 1;
                    report.bytes_copied += s.vals_len;
                }
            }
        }
        crate::io::fs::sync_dir(None, &tmp)?;
        std::fs::rename(&tmp, dest).map_err(|e| ctx(e, "renaming the checkpoint to", dest))?;
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        crate::io::fs::sync_dir(None, parent)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::Io(context(
            e,
            format!("writing checkpoint {}", dest.display()),
        )));
    }
    report.duration = started.elapsed();
    Ok(report)
}

/// Hard-links `from` to `to`, or copies it (then fsyncs the copy) where a link is refused.
/// [`link_or_copy`] for a sealed datafile's hint file, which may be gone: the datafile has
/// none (its hint failed), or a merge retired the datafile while the checkpoint ran — the pin
/// keeps a retired datafile, but its hint is removed at once (`manifest::mark_retired`), so
/// it can vanish between the file list and the link. A hint is optional (the checkpoint's
/// open scans a datafile without one), so a missing one is skipped.
fn link_hint(from: &Path, to: &Path, report: &mut CheckpointReport) -> std::io::Result<()> {
    match link_or_copy(from, to, report) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(file = %from.display(), "no hint file to put in the checkpoint");
            Ok(())
        }
        other => other,
    }
}

fn link_or_copy(from: &Path, to: &Path, report: &mut CheckpointReport) -> std::io::Result<()> {
    let len = std::fs::metadata(from)
        .map_err(|e| context(e, format!("reading {}", from.display())))?
        .len();
    match std::fs::hard_link(from, to) {
        Ok(()) => {
            report.files_linked += 1;
            report.bytes_linked += len;
            Ok(())
        }
        Err(e) => {
            tracing::debug!(file = %from.display(), "cannot hard-link ({e}); copying");
            copy_prefix(from, to, len)?;
            report.files_copied += 1;
            report.bytes_copied += len;
            Ok(())
        }
    }
}

/// Copies the first `len` bytes of `from` to the new file `to` and fsyncs it.
fn copy_prefix(from: &Path, to: &Path, len: u64) -> std::io::Result<()> {
    let src = File::open(from).map_err(|e| context(e, format!("opening {}", from.display())))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| context(e, format!("creating {}", to.display())))?;
    let copied = std::io::copy(&mut std::io::Read::take(src, len), &mut dst)
        .map_err(|e| context(e, format!("copying {}", from.display())))?;
    if copied != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{} is shorter ({copied} bytes) than {len}", from.display()),
        ));
    }
    dst.sync_all()
        .map_err(|e| context(e, format!("syncing {}", to.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_file_without_its_hint_is_checkpointed_without_it() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("live");
        std::fs::create_dir(&dir).expect("dir");
        let bytes = b"datafile bytes".to_vec();
        std::fs::write(data_path(&dir, 7), &bytes).expect("datafile");
        std::fs::write(hint_path(&dir, 8), b"hint").expect("hint");
        std::fs::write(data_path(&dir, 8), &bytes).expect("datafile");
        let source = |id| Source {
            id,
            len: bytes.len() as u64,
            vals_len: 0,
            sealed: true,
        };
        let dest = tmp.path().join("cp");
        let report = write_checkpoint(&dir, &[source(7), source(8)], &dest).expect("checkpoint");
        assert_eq!(report.files_linked + report.files_copied, 3, "{report:?}");
        assert_eq!(std::fs::read(data_path(&dest, 7)).expect("data 7"), bytes);
        assert!(!hint_path(&dest, 7).exists());
        assert_eq!(std::fs::read(hint_path(&dest, 8)).expect("hint 8"), b"hint");
    }
}
