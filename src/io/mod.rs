//! The IO seam: every datafile and hint-file operation of the running engine goes through
//! [`IoFile`] and the helpers here. Two backends sit behind it — io_uring (tokio-uring, the
//! default) and plain `pread`/`pwrite` (chosen automatically when io_uring cannot be set up) —
//! and an optional [`FaultInjector`] that tests use to fail, tear or "crash" IO.
//!
//! The async methods of [`IoFile`] run on the engine's own io threads, inside their
//! single-threaded runtime; [`pwrite_all`] and [`fallocate`] are plain system calls that the
//! append path also makes on callers' threads.

pub(crate) mod device;
pub(crate) mod direct;
mod direct_read;
pub(crate) mod fixed;
pub(crate) mod fs;
pub(crate) mod lock;
pub(crate) mod ring;

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub(crate) use fixed::{DirectBuf, Registered};

use crate::fault::{fault_point, injected, read_point, FaultInjector};
use crate::options::{IoBackend, IoBackendKind};
use std::sync::Arc;

enum Handle {
    Uring(tokio_uring::fs::File),
    Pread(std::fs::File),
}

/// One open file on an io thread.
pub(crate) struct IoFile {
    handle: Handle,
    /// A second descriptor of a writable file, for the calls io_uring has no op for here
    /// (`ftruncate`, and `fallocate` without an await point).
    meta: Option<std::fs::File>,
    fault: Option<Arc<FaultInjector>>,
    /// Opened `O_DSYNC`: each write is durable when it returns.
    dsync: bool,
}

/// How a descriptor opened for reading will be read: the kernel's readahead is advised to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Single records at random offsets (`get`): `POSIX_FADV_RANDOM`, so that a cache miss
    /// reads the record's pages and no readahead around them.
    Random,
    /// Whole files front to back (merge): the default readahead.
    Sequential,
}

/// Opens an existing file read-only, with the readahead advice for `access`.
pub(crate) fn open_for_reading(path: &Path, access: Access) -> io::Result<std::fs::File> {
    let f = OpenOptions::new().read(true).open(path)?;
    if access == Access::Random {
        // Advice only: a file system that ignores it still reads correctly.
        if let Err(e) = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::Random) {
            tracing::debug!("posix_fadvise(RANDOM) on {}: {e}", path.display());
        }
    }
    Ok(f)
}

/// Alignment of `O_DIRECT` reads: offsets, lengths and buffer addresses are multiples of it
/// (4 KiB covers 512-byte and 4 KiB logical blocks alike).
pub(crate) const DIRECT_ALIGN: u64 = 4096;

impl IoFile {
    /// Opens an existing file for `O_DIRECT` reads ([`IoFile::read_direct`]). Fails with
    /// `InvalidInput` where the file system refuses `O_DIRECT` (tmpfs).
    pub(crate) fn open_direct(
        kind: IoBackendKind,
        path: &Path,
        fault: Option<Arc<FaultInjector>>,
    ) -> io::Result<IoFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let flags = rustix::fs::OFlags::DIRECT.bits() as i32;
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)?;
        Ok(IoFile::wrap(kind, f, None, fault))
    }

    /// Opens an existing datafile (or value file) for the direct-IO writer: `O_DIRECT`, and
    /// with `dsync` also `O_DSYNC`, so each [`IoFile::write_direct`] is one ring operation that
    /// returns once its bytes are durable (a FUA write where the device honours it, else the
    /// kernel adds the cache flush); without, a write is durable after an `fdatasync` (see
    /// [`crate::GroupFlush::Once`]). Fails with `InvalidInput` where the file system refuses
    /// `O_DIRECT` (tmpfs).
    pub(crate) fn open_direct_write(
        kind: IoBackendKind,
        path: &Path,
        fault: Option<Arc<FaultInjector>>,
        dsync: bool,
    ) -> io::Result<IoFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut flags = rustix::fs::OFlags::DIRECT;
        if dsync {
            flags |= rustix::fs::OFlags::DSYNC;
        }
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(flags.bits() as i32)
            .open(path)?;
        let meta = f.try_clone()?;
        let mut file = IoFile::wrap(kind, f, Some(meta), fault);
        file.dsync = dsync;
        Ok(file)
    }

    /// Tells the fault seam that this file's completed writes are durable: an `fdatasync` of
    /// another file on the same device flushed the device's whole write cache (see
    /// [`crate::GroupFlush::Once`]).
    pub(crate) fn note_flushed(&self) {
        self.note(|fi, f| fi.note_sync(f));
    }

    /// Writes `buf[at..at + span]` (aligned: `at` to an address multiple of [`DIRECT_ALIGN`],
    /// `span` and `offset` multiples of it) at `offset` of a file opened with
    /// [`IoFile::open_direct_write`], and returns the buffer. Through the fault seam this is a
    /// write, and a sync of those bytes when the file was opened `O_DSYNC`. With [`FaultInjector::tear_writes`] the write at the
    /// crash point is made but fails unsynced: the write in flight when the power goes, which a
    /// power cut then tears to a random subset of its sectors.
    pub(crate) async fn write_direct(
        &self,
        buf: DirectBuf,
        at: usize,
        span: usize,
        offset: u64,
    ) -> (io::Result<()>, DirectBuf) {
        let torn = match self.write_point() {
            Ok(t) => t,
            Err(e) => return (Err(e), buf),
        };
        let (res, buf) = self.write_aligned(buf, at, span, offset).await;
        if res.is_ok() {
            self.note(|fi, f| fi.note_write(f, offset, &buf[at..at + span]));
            if !torn && self.dsync {
                self.note(|fi, f| fi.note_sync(f));
            }
        }
        if torn {
            return (res.and(Err(injected())), buf);
        }
        (res, buf)
    }

    /// Writes `buf[at..at + n]` at `offset`, resubmitting the rest after a short write; a
    /// registered buffer as a fixed-buffer write.
    async fn write_aligned(
        &self,
        mut buf: DirectBuf,
        at: usize,
        n: usize,
        offset: u64,
    ) -> (io::Result<()>, DirectBuf) {
        use tokio_uring::buf::BoundedBuf;
        let mut done = 0usize;
        while done < n {
            let (from, to, pos) = (at + done, at + n, offset + done as u64);
            let res = match (&self.handle, buf) {
                (Handle::Uring(f), DirectBuf::Plain(v)) => {
                    let (res, slice) = f.write_at(v.slice(from..to), pos).submit().await;
                    buf = DirectBuf::Plain(slice.into_inner());
                    res
                }
                (Handle::Uring(f), DirectBuf::Fixed(b)) => {
                    let (res, slice) = f.write_fixed_at(b.slice(from..to), pos).await;
                    buf = DirectBuf::Fixed(slice.into_inner());
                    res
                }
                (Handle::Pread(f), b) => {
                    buf = b;
                    f.write_at(&buf[from..to], pos)
                }
            };
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(k) => done += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Opens an existing file for reading, with the readahead advice for `access`.
    pub(crate) fn open_read(
        kind: IoBackendKind,
        path: &Path,
        access: Access,
        fault: Option<Arc<FaultInjector>>,
    ) -> io::Result<IoFile> {
        let f = open_for_reading(path, access)?;
        Ok(IoFile::wrap(kind, f, None, fault))
    }

    /// Creates a new file for reading and writing; fails if it exists.
    pub(crate) fn create_new(
        kind: IoBackendKind,
        path: &Path,
        fault: Option<Arc<FaultInjector>>,
    ) -> io::Result<IoFile> {
        fault_point(fault.as_deref())?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        if let Some(fi) = fault.as_deref() {
            fi.note_created(path);
        }
        let meta = f.try_clone()?;
        Ok(IoFile::wrap(kind, f, Some(meta), fault))
    }

    fn wrap(
        kind: IoBackendKind,
        f: std::fs::File,
        meta: Option<std::fs::File>,
        fault: Option<Arc<FaultInjector>>,
    ) -> IoFile {
        let handle = match kind {
            IoBackendKind::IoUring => Handle::Uring(tokio_uring::fs::File::from_std(f)),
            IoBackendKind::Pread => Handle::Pread(f),
        };
        IoFile {
            handle,
            meta,
            fault,
            dsync: false,
        }
    }

    /// A std descriptor of this file, for the fault layer's notes.
    fn std_file(&self) -> Option<&std::fs::File> {
        match &self.handle {
            Handle::Pread(f) => Some(f),
            Handle::Uring(_) => self.meta.as_ref(),
        }
    }

    /// Tells the fault layer (in power-loss mode) what just happened to this file.
    fn note(&self, what: impl FnOnce(&FaultInjector, &std::fs::File)) {
        if let (Some(fi), Some(f)) = (self.fault.as_deref(), self.std_file()) {
            what(fi, f);
        }
    }

    fn meta(&self) -> io::Result<&std::fs::File> {
        self.meta
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "file opened read-only"))
    }

    /// [`IoFile::read_exact_at`] into `reuse`, whose allocation is kept from one read to the
    /// next (a fresh one costs a page fault a page when it is large).
    pub(crate) async fn read_exact_into(
        &self,
        mut reuse: Vec<u8>,
        len: usize,
        offset: u64,
    ) -> io::Result<Vec<u8>> {
        use tokio_uring::buf::BoundedBuf;
        read_point(self.fault.as_deref())?;
        reuse.clear();
        reuse.reserve(len);
        match &self.handle {
            Handle::Uring(f) => {
                let (res, slice) = f.read_exact_at(reuse.slice(..len), offset).await;
                res.map(|()| slice.into_inner())
            }
            Handle::Pread(f) => {
                reuse.resize(len, 0);
                f.read_exact_at(&mut reuse, offset)?;
                Ok(reuse)
            }
        }
    }

    /// Reads exactly `len` bytes at `offset`. A short file is `UnexpectedEof`.
    pub(crate) async fn read_exact_at(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        self.read_exact_into(Vec::new(), len, offset).await
    }

    /// Counts a write at the fault seam: `Ok(true)` when it must be torn.
    fn write_point(&self) -> io::Result<bool> {
        match self.fault.as_deref() {
            Some(f) => f.check(true),
            None => Ok(false),
        }
    }

    /// Writes all of `buf` at `offset`, returning the buffer for reuse.
    pub(crate) async fn write_all_at(
        &self,
        buf: Vec<u8>,
        offset: u64,
    ) -> (io::Result<()>, Vec<u8>) {
        let torn = match self.write_point() {
            Ok(t) => t,
            Err(e) => return (Err(e), buf),
        };
        if torn {
            let half = buf.len() / 2;
            let res = match &self.handle {
                Handle::Uring(f) => {
                    let (r, _) = f.write_all_at(buf[..half].to_vec(), offset).await;
                    r
                }
                Handle::Pread(f) => f.write_all_at(&buf[..half], offset),
            };
            if res.is_ok() {
                self.note(|fi, f| fi.note_write(f, offset, &buf[..half]));
            }
            return (res.and(Err(injected())), buf);
        }
        let (res, buf) = match &self.handle {
            Handle::Uring(f) => f.write_all_at(buf, offset).await,
            Handle::Pread(f) => {
                let r = f.write_all_at(&buf, offset);
                (r, buf)
            }
        };
        if res.is_ok() {
            self.note(|fi, f| fi.note_write(f, offset, &buf));
        }
        (res, buf)
    }

    /// `fdatasync` as a plain system call on the calling thread. An io_uring fsync always runs
    /// on a kernel io-wq worker; on the dedicated writer thread, which has nothing else to do
    /// while its group waits, the direct call saves that hand-off.
    pub(crate) fn sync_data_now(&self) -> io::Result<()> {
        fault_point(self.fault.as_deref())?;
        match &self.handle {
            Handle::Uring(_) => self.meta()?.sync_data(),
            Handle::Pread(f) => f.sync_data(),
        }?;
        self.note(|fi, f| fi.note_sync(f));
        Ok(())
    }

    /// `fsync` (data and metadata, e.g. after a truncation).
    pub(crate) async fn sync_all(&self) -> io::Result<()> {
        fault_point(self.fault.as_deref())?;
        match &self.handle {
            Handle::Uring(f) => f.sync_all().await,
            Handle::Pread(f) => f.sync_all(),
        }?;
        self.note(|fi, f| fi.note_sync(f));
        Ok(())
    }

    /// Sets the file length (used to trim preallocated space when a file is sealed).
    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        set_len(self.fault.as_deref(), self.meta()?, len)
    }

    /// A plain descriptor of this writable file, for appends made outside the io thread.
    pub(crate) fn clone_std(&self) -> io::Result<std::fs::File> {
        self.meta()?.try_clone()
    }
}

/// A positioned write of all of `buf` at `offset` (`pwrite`), through the fault seam: with
/// [`FaultInjector::tear_writes`] the write at the crash point writes its leading half and fails.
pub(crate) fn pwrite_all(
    fault: Option<&FaultInjector>,
    f: &std::fs::File,
    buf: &[u8],
    offset: u64,
) -> io::Result<()> {
    if let Some(fi) = fault {
        if fi.check(true)? {
            let half = &buf[..buf.len() / 2];
            f.write_all_at(half, offset)?;
            fi.note_write(f, offset, half);
            return Err(injected());
        }
    }
    f.write_all_at(buf, offset)?;
    if let Some(fi) = fault {
        fi.note_write(f, offset, buf);
    }
    Ok(())
}

/// A positioned read of all of `buf` at `offset` of `f`, through the fault seam.
pub(crate) fn read_exact_at(
    fault: Option<&FaultInjector>,
    f: &std::fs::File,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<()> {
    read_point(fault)?;
    f.read_exact_at(buf, offset)
}

/// `e` with `what` (the operation and the file) in front of its message, same kind.
pub(crate) fn context(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// `fsync` of `f` through the fault seam.
pub(crate) fn sync_file(fault: Option<&FaultInjector>, f: &std::fs::File) -> io::Result<()> {
    fault_point(fault)?;
    f.sync_all()?;
    if let Some(fi) = fault {
        fi.note_sync(f);
    }
    Ok(())
}

/// Allocates `[offset, offset + len)` of `f` and extends its size over it (`fallocate` mode 0).
pub(crate) fn fallocate(
    fault: Option<&FaultInjector>,
    f: &std::fs::File,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    fault_point(fault)?;
    rustix::fs::fallocate(f, rustix::fs::FallocateFlags::empty(), offset, len)
        .map_err(io::Error::from)?;
    if let Some(fi) = fault {
        fi.note_allocate(f, offset + len);
    }
    Ok(())
}

/// Sets the length of `f` (used to trim preallocated space when a file is sealed).
pub(crate) fn set_len(
    fault: Option<&FaultInjector>,
    f: &std::fs::File,
    len: u64,
) -> io::Result<()> {
    fault_point(fault)?;
    f.set_len(len)?;
    if let Some(fi) = fault {
        fi.note_set_len(f, len);
    }
    Ok(())
}

/// A runtime built for an io thread.
pub(crate) enum Runtime {
    Uring(Box<tokio_uring::Runtime>),
    Pread(tokio::runtime::Runtime),
}

impl Runtime {
    /// Runs `fut` to completion on this runtime, on the calling (dedicated io) thread. The
    /// future may spawn local tasks with `tokio::task::spawn_local`.
    pub(crate) fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        match self {
            Runtime::Uring(rt) => rt.block_on(fut),
            Runtime::Pread(rt) => {
                let local = tokio::task::LocalSet::new();
                rt.block_on(local.run_until(fut))
            }
        }
    }

    /// Builds the runtime for `kind` on the current thread.
    pub(crate) fn new(kind: IoBackendKind) -> io::Result<Runtime> {
        match kind {
            IoBackendKind::IoUring => Ok(Runtime::Uring(Box::new(tokio_uring::Runtime::new(
                &tokio_uring::builder(),
            )?))),
            IoBackendKind::Pread => Ok(Runtime::Pread(
                tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()?,
            )),
        }
    }

    /// Builds the runtime the options ask for; under [`IoBackend::Auto`] an io_uring failure falls
    /// back to `pread`/`pwrite` and the reason is returned.
    pub(crate) fn choose(want: IoBackend) -> io::Result<(Runtime, IoBackendKind, Option<String>)> {
        match want {
            IoBackend::IoUring => Ok((
                Runtime::new(IoBackendKind::IoUring)?,
                IoBackendKind::IoUring,
                None,
            )),
            IoBackend::Pread => Ok((
                Runtime::new(IoBackendKind::Pread)?,
                IoBackendKind::Pread,
                None,
            )),
            _ => match Runtime::new(IoBackendKind::IoUring) {
                Ok(rt) => Ok((rt, IoBackendKind::IoUring, None)),
                Err(e) => {
                    let reason = format!("io_uring unavailable ({e}); using pread/pwrite");
                    tracing::warn!("{reason}");
                    Ok((
                        Runtime::new(IoBackendKind::Pread)?,
                        IoBackendKind::Pread,
                        Some(reason),
                    ))
                }
            },
        }
    }
}
