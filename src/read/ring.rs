//! Reads submitted by the caller to the shared ring ([`SharedRing`]), without a hop to a read
//! thread: under `IoMode::Direct` a `get` that misses the value cache reads its record's
//! blocks with `O_DIRECT`; under `IoMode::Buffered` one that the page cache could not serve on
//! the caller's thread reads the record through the page cache (io_uring waits for the pages
//! without blocking the submitting thread).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::fault::{read_point, FaultInjector};
use crate::io::ring::SharedRing;
use crate::io::DIRECT_ALIGN;
use crate::io::{open_for_reading, Access};
use crate::layout::read_path;
use crate::options::{IoBackendKind, IoMode, Options};

/// Reads in flight on the shared ring, from all callers together.
const DEPTH: usize = 256;

/// Size of the buffers kept for reuse: the blocks of a record of a 4 KiB value wherever it
/// lies, with room to spare, plus the alignment slack. Larger reads allocate their own.
const POOLED: usize = (16 << 10) + DIRECT_ALIGN as usize;

/// Registered buffers of the shared ring in direct mode: one per read in flight up to this
/// many (more wait for none: they read into ordinary buffers)...
const FIXED_COUNT: usize = 128;
/// ... of this size: the blocks of a record of a 4 KiB value wherever it lies, with room to
/// spare (2 MiB pinned in all). Larger reads use ordinary buffers.
const FIXED_SIZE: usize = 16 << 10;

/// The bytes of a read through the ring, and whether a registered buffer held them.
pub(crate) struct RingRead {
    pub bytes: Vec<u8>,
    pub registered: bool,
}

/// The shared ring and the descriptors of the datafiles read through it.
pub(crate) struct RingReads {
    ring: SharedRing,
    dir: PathBuf,
    fault: Option<Arc<FaultInjector>>,
    /// Datafile id → its `O_DIRECT` descriptor, or `None` where the file system refused
    /// `O_DIRECT` (those reads go to a read thread, which reads them buffered). Replaced whole
    /// when a file is first read or retired; a read only loads it.
    files: ArcSwap<HashMap<u32, Option<Arc<File>>>>,
    /// Datafile id → its buffered descriptor (advised random access).
    buffered: ArcSwap<HashMap<u32, Arc<File>>>,
    /// Buffers of [`POOLED`] bytes (initialised once) between reads, at most [`DEPTH`]: a read
    /// neither allocates nor zeroes its buffer.
    pool: Mutex<Vec<Vec<u8>>>,
}

impl RingReads {
    /// The shared ring for a store opened with `opts` on backend `kind`, when it reads through
    /// one (io_uring, `Options::caller_submits_reads`) or, with `writes`, when the direct-IO
    /// writer writes through one. If the ring cannot be set up (the kernel's limits on rings)
    /// reads go to the read threads, and the writer thread writes with `pwrite`.
    pub(crate) fn for_store(
        dir: &Path,
        opts: &Options,
        kind: IoBackendKind,
        writes: bool,
    ) -> Option<Arc<RingReads>> {
        if !(opts.caller_submits_reads || writes) || kind != IoBackendKind::IoUring {
            return None;
        }
        match RingReads::new(dir.to_path_buf(), opts) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                tracing::warn!(
                    "cannot set up the shared read ring ({e}); reads go to the read threads"
                );
                None
            }
        }
    }

    /// The shared ring itself (the direct-IO writer's group writes go through it too).
    pub(crate) fn ring(&self) -> &SharedRing {
        &self.ring
    }

    /// The shared ring (and its reaper thread) for the store in `dir`.
    fn new(dir: PathBuf, opts: &Options) -> io::Result<RingReads> {
        Ok(RingReads {
            ring: SharedRing::new(
                DEPTH,
                "ringcask-reap",
                opts.reap_on_tokio,
                (opts.io_mode == IoMode::Direct).then_some((FIXED_COUNT, FIXED_SIZE)),
            )?,
            dir,
            fault: opts.fault_injector.clone(),
            files: ArcSwap::from_pointee(HashMap::new()),
            buffered: ArcSwap::from_pointee(HashMap::new()),
            pool: Mutex::new(Vec::new()),
        })
    }

    /// The `O_DIRECT` descriptor of datafile `id`, opened on first use (or the one a racing
    /// caller opened); `None` if the file system refuses `O_DIRECT` for it.
    fn file(&self, id: u32) -> io::Result<Option<Arc<File>>> {
        if let Some(f) = self.files.load().get(&id) {
            return Ok(f.clone());
        }
        use std::os::unix::fs::OpenOptionsExt;
        let path = read_path(&self.dir, id);
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(&path);
        let f = match opened {
            Ok(f) => Some(Arc::new(f)),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                tracing::debug!(
                    "O_DIRECT refused for {} ({e}); reading it buffered",
                    path.display()
                );
                None
            }
            Err(e) => return Err(e),
        };
        let mut out = f.clone();
        self.files.rcu(|m| {
            let mut m = HashMap::clone(m);
            out = m.entry(id).or_insert_with(|| f.clone()).clone();
            m
        });
        Ok(out)
    }

    /// `len` bytes at `offset` of datafile `id`, read with `O_DIRECT` (`direct`) or
    /// through the page cache. `None` if `direct` and the file system refuses `O_DIRECT` for
    /// this file; a file that ends before them is `UnexpectedEof`. A direct read reads whole
    /// blocks up to `upto` bytes from `offset` (if more than `len`) and returns those bytes
    /// too, as far as the file reaches.
    pub(crate) async fn read(
        &self,
        id: u32,
        offset: u64,
        len: usize,
        upto: usize,
        direct: bool,
    ) -> io::Result<Option<RingRead>> {
        if direct {
            return self.read_direct(id, offset, len, upto).await;
        }
        read_point(self.fault.as_deref())?;
        let file = self.buffered_file(id)?;
        let mut buf = vec![0u8; len];
        let mut got = 0usize;
        while got < len {
            let (res, b) = self
                .ring
                .read_at(file.clone(), buf, got, len - got, offset + got as u64)
                .await;
            buf = b;
            match res {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(RingRead {
            bytes: buf,
            registered: false,
        }))
    }

    /// The buffered descriptor of datafile `id`, opened on first use.
    fn buffered_file(&self, id: u32) -> io::Result<Arc<File>> {
        if let Some(f) = self.buffered.load().get(&id) {
            return Ok(f.clone());
        }
        let f = Arc::new(open_for_reading(&read_path(&self.dir, id), Access::Random)?);
        let mut out = f.clone();
        self.buffered.rcu(|m| {
            let mut m = HashMap::clone(m);
            out = m.entry(id).or_insert_with(|| f.clone()).clone();
            m
        });
        Ok(out)
    }

    /// `len` bytes at `offset` of datafile `id`: one `O_DIRECT` read of the aligned blocks
    /// that hold them, or the first `upto` bytes from `offset` if more (resubmitted for the
    /// rest after a short read), then the bytes copied out, as many as were asked for and
    /// read. `None` if the file system refuses `O_DIRECT` for this file; a file that ends
    /// before the `len` bytes is `UnexpectedEof`.
    async fn read_direct(
        &self,
        id: u32,
        offset: u64,
        len: usize,
        upto: usize,
    ) -> io::Result<Option<RingRead>> {
        read_point(self.fault.as_deref())?;
        let Some(file) = self.file(id)? else {
            return Ok(None);
        };
        let align = DIRECT_ALIGN as usize;
        let first = offset / DIRECT_ALIGN * DIRECT_ALIGN;
        let end = (offset + upto.max(len) as u64).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let span = (end - first) as usize;
        let want = (offset - first) as usize + len;
        let skip = (offset - first) as usize;
        // Into a registered buffer when one is free and large enough. A read that comes back
        // short of the record (only where the file ends before it) is made again below.
        if self.ring.fixed_size().is_some_and(|size| span <= size) {
            if let Some((res, buf)) = self.ring.read_fixed(file.clone(), span, first).await {
                match res {
                    Ok(n) if n >= want => {
                        let end = skip + upto.clamp(len, n - skip);
                        let bytes = buf.with(|b| b[skip..end].to_vec());
                        return Ok(Some(RingRead {
                            bytes,
                            registered: true,
                        }));
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let pooled = span + align <= POOLED;
        let mut buf = match pooled {
            true => self.pool_lock().pop(),
            false => None,
        }
        .unwrap_or_else(|| vec![0u8; (span + align).max(POOLED)]);
        let at = buf.as_ptr().align_offset(align);
        let mut got = 0usize;
        while got < want {
            // Whole blocks from `got` on (a short read ends on a block boundary, or at the end
            // of the file, where the next read returns 0).
            let (res, b) = self
                .ring
                .read_at(file.clone(), buf, at + got, span - got, first + got as u64)
                .await;
            buf = b;
            match res {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    got += n;
                    // Short in the middle of a block: the file ends there.
                    if got < want && !got.is_multiple_of(align) {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let from = at + skip;
        let out = buf[from..from + upto.clamp(len, got - skip)].to_vec();
        if pooled {
            let mut pool = self.pool_lock();
            if pool.len() < DEPTH {
                pool.push(buf);
            }
        }
        Ok(Some(RingRead {
            bytes: out,
            registered: false,
        }))
    }

    fn pool_lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // Poisoned only by a panic between a pop and a push: the list is still whole.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads whose completion a reaper task on a caller's runtime took.
    pub(crate) fn task_reaped(&self) -> u64 {
        self.ring.task_reaped()
    }

    /// Forgets the descriptors of files a merge is about to delete; reads in flight keep
    /// theirs until they complete.
    pub(crate) fn retire(&self, ids: &[u32]) {
        self.files.rcu(|m| without(m, ids));
        self.buffered.rcu(|m| without(m, ids));
    }
}

/// `m` without the entries of `ids`.
fn without<V: Clone>(m: &HashMap<u32, V>, ids: &[u32]) -> HashMap<u32, V> {
    let mut m = m.clone();
    for id in ids {
        m.remove(id);
    }
    m
}
