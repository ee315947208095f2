//! The direct-IO writer's descriptors: `O_DIRECT | O_DSYNC`, so that each write returns once
//! its bytes are durable (a FUA write where the device honours it, else the kernel adds the
//! cache flush). Writes go through the shared ring ([`SharedRing`]) when the store has one —
//! submitted by whichever thread leads a group commit, caller or writer thread — and are plain
//! blocking `pwrite`s on the writer thread otherwise (the `pread` backend).
//!
//! Every write passes the fault seam: with a [`FaultInjector`] it is a fault point, and the
//! power-loss model sees it as a write and a sync of its bytes. With
//! [`FaultInjector::tear_writes`] the write at the crash point is made but fails unsynced: the
//! write in flight when the power goes, which a power cut then tears to a random subset of its
//! sectors.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use super::ring::{RingBuf, RingWrite, SharedRing};
use crate::fault::{injected, FaultInjector};

/// A write started by [`DirectWriteFile::write`]: the write is submitted (or, without a ring,
/// made) already; this yields its result and gives the buffer back. It owns the write: as long
/// as it is kept, the write is known to be in flight or done.
pub(crate) type DirectWrite = Pin<Box<dyn Future<Output = (io::Result<()>, RingBuf)> + Send>>;

/// A file opened for the direct-IO writer.
pub(crate) struct DirectWriteFile {
    file: Arc<File>,
    fault: Option<Arc<FaultInjector>>,
}

/// Whether a write may wait for one of the ring's write slots.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Wait,
    /// Fail with `WouldBlock` when none is free (the zeroes written ahead, which can wait).
    IfFree,
}

fn done(res: io::Result<()>, buf: RingBuf) -> DirectWrite {
    Box::pin(std::future::ready((res, buf)))
}

/// Calls `f` with the `span` bytes of `buf` a write takes (see [`DirectWriteFile::write`]).
fn with_bytes<R>(buf: &RingBuf, at: usize, span: usize, f: impl FnOnce(&[u8]) -> R) -> R {
    match buf {
        RingBuf::Plain(v) => f(v.get(at..at + span).unwrap_or_default()),
        RingBuf::Fixed(b) => b.with(|x| f(x.get(..span).unwrap_or_default())),
    }
}

impl DirectWriteFile {
    /// Opens an existing file `O_DIRECT | O_DSYNC` for writing. Fails with `InvalidInput`
    /// where the file system refuses `O_DIRECT` (tmpfs).
    pub(crate) fn open(path: &Path, fault: Option<Arc<FaultInjector>>) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let flags = (rustix::fs::OFlags::DIRECT | rustix::fs::OFlags::DSYNC).bits() as i32;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(flags)
            .open(path)?;
        Ok(DirectWriteFile {
            file: Arc::new(f),
            fault,
        })
    }

    /// Starts writing `span` bytes of `buf` at `offset` (aligned: the bytes start at an address
    /// multiple of [`super::DIRECT_ALIGN`], `span` and `offset` are multiples of it): of a
    /// plain buffer from `at`, of a registered one from its start. On `ring`, else with a
    /// blocking `pwrite` made before this returns. A short write is an error.
    pub(crate) async fn write(
        self: &Arc<Self>,
        ring: Option<&SharedRing>,
        slot: Slot,
        buf: RingBuf,
        (at, span): (usize, usize),
        offset: u64,
    ) -> DirectWrite {
        let torn = match self.fault.as_deref() {
            // A write submitted to the ring waits for a held disk without blocking its thread.
            Some(f) if ring.is_some() => f.check_async(true).await,
            Some(f) => f.check(true),
            None => Ok(false),
        };
        let torn = match torn {
            Ok(t) => t,
            Err(e) => return done(Err(e), buf),
        };
        let Some(ring) = ring else {
            let res = with_bytes(&buf, at, span, |b| {
                let res = self.file.write_all_at(b, offset);
                self.finish(res, torn, b, offset)
            });
            return done(res, buf);
        };
        let file = self.file.clone();
        let started = match slot {
            Slot::Wait => ring.start_write(file, buf, at, span, offset).await,
            Slot::IfFree => ring.try_start_write(file, buf, at, span, offset),
        };
        match started {
            Ok(op) => self.clone().completion(op, torn, at, span, offset),
            Err((e, buf)) => done(Err(e), buf),
        }
    }

    fn completion(
        self: Arc<Self>,
        op: RingWrite,
        torn: bool,
        at: usize,
        span: usize,
        offset: u64,
    ) -> DirectWrite {
        Box::pin(async move {
            let (res, buf) = op.await;
            let res = match res {
                Ok(n) if n == span => Ok(()),
                Ok(n) => Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short direct write: {n} of {span} bytes"),
                )),
                Err(e) => Err(e),
            };
            let res = with_bytes(&buf, at, span, |b| self.finish(res, torn, b, offset));
            (res, buf)
        })
    }

    /// Tells the fault seam about a write made (and synced, unless `torn`).
    fn finish(&self, res: io::Result<()>, torn: bool, bytes: &[u8], offset: u64) -> io::Result<()> {
        if let (Ok(()), Some(fi)) = (&res, self.fault.as_deref()) {
            fi.note_write(&self.file, offset, bytes);
            if !torn {
                fi.note_sync(&self.file);
            }
        }
        if torn {
            return res.and(Err(injected()));
        }
        res
    }
}
