//! Read handles shared by every caller thread, for the non-blocking read fast path.
//!
//! A `get` first tries `preadv2(RWF_NOWAIT)` on the caller's thread: when the record is in the
//! page cache (the common case for a hot store) the read costs one system call and no thread
//! hop. When it is not, the kernel answers `EAGAIN` instead of blocking the caller's executor,
//! and the read goes to an io thread (io_uring) as before.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use crate::fault::{read_point, FaultInjector};
use crate::io::{open_for_reading, Access};
use crate::layout::read_path;

/// Most descriptors one datafile is read through.
const MAX_FDS_PER_FILE: usize = 4;

/// Read descriptors of one datafile. Threads read through descriptor `thread number % n`:
/// every `pread` takes and drops a reference on its open file description in the kernel
/// (`fdget`/`fput`, an atomic on a shared line in a multi-threaded process), so threads on
/// different cores reading one file through one descriptor pass that line back and forth
/// (measured: two threads, 149-byte preads, 1.8–2.0M/s through one descriptor, 2.2M/s through
/// one each). Extra descriptors open on first use; if one cannot be opened (descriptor limit)
/// the first is used.
#[derive(Debug)]
struct Handles {
    first: File,
    more: Box<[OnceLock<File>]>,
}

impl Handles {
    /// The descriptor for this thread.
    fn for_thread(&self, path: impl FnOnce() -> PathBuf) -> &File {
        let n = self.more.len() + 1;
        let i = crate::stats::thread_number() % n;
        if i == 0 {
            return &self.first;
        }
        let slot = &self.more[i - 1];
        if let Some(f) = slot.get() {
            return f;
        }
        match open_for_reading(&path(), Access::Random) {
            Ok(f) => {
                // A racing thread may have set it first: either descriptor reads the same file.
                let _ = slot.set(f);
                slot.get().unwrap_or(&self.first)
            }
            Err(_) => &self.first,
        }
    }
}

/// Datafile id → shared read-only handles.
///
/// The map is replaced whole (copy on write) when a file is first read or retired, which is
/// rare; a read only loads it. `ArcSwap::load` touches no shared reference count, so two
/// threads reading side by side do not pass a lock word or an `Arc` count between their cores
/// on every `get` (a `RwLock` plus an `Arc<File>` clone cost 4 contended atomics per read).
#[derive(Debug)]
pub(crate) struct FileTable {
    dir: PathBuf,
    files: ArcSwap<HashMap<u32, Arc<Handles>>>,
    /// Descriptors per file: one per CPU, at most [`MAX_FDS_PER_FILE`].
    fds_per_file: usize,
    fault: Option<Arc<FaultInjector>>,
}

impl FileTable {
    pub(crate) fn new(dir: PathBuf, fault: Option<Arc<FaultInjector>>) -> FileTable {
        FileTable {
            fault,
            dir,
            files: ArcSwap::from_pointee(HashMap::new()),
            fds_per_file: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .clamp(1, MAX_FDS_PER_FILE),
        }
    }

    /// Opens datafile `id` and adds its handle (or the one a racing caller added).
    fn open(&self, id: u32) -> io::Result<Arc<Handles>> {
        let f = Arc::new(Handles {
            first: open_for_reading(&read_path(&self.dir, id), Access::Random)?,
            more: (1..self.fds_per_file).map(|_| OnceLock::new()).collect(),
        });
        let mut out = f.clone();
        self.files.rcu(|m| {
            let mut m = HashMap::clone(m);
            out = m.entry(id).or_insert_with(|| f.clone()).clone();
            m
        });
        Ok(out)
    }

    /// `len` bytes at `offset` of datafile `id` if the page cache holds all of them; `None` if
    /// reading would block (or came up short), so the caller must go through an io thread.
    pub(crate) fn read_nowait(
        &self,
        id: u32,
        offset: u64,
        len: usize,
    ) -> io::Result<Option<Vec<u8>>> {
        read_point(self.fault.as_deref())?;
        let files = self.files.load();
        let opened;
        let handles: &Handles = match files.get(&id) {
            Some(h) => h,
            None => {
                opened = self.open(id)?;
                &opened
            }
        };
        let file = handles.for_thread(|| read_path(&self.dir, id));
        let mut buf = vec![0u8; len];
        let res = rustix::io::preadv2(
            file,
            &mut [io::IoSliceMut::new(&mut buf)],
            offset,
            rustix::io::ReadWriteFlags::NOWAIT,
        );
        match res {
            Ok(n) if n == len => Ok(Some(buf)),
            Ok(_) => Ok(None),
            Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::OPNOTSUPP => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Forgets the handles of files a merge is about to delete. Reads holding one finish on
    /// the (unlinked) file; the descriptor closes with the last of them.
    pub(crate) fn retire(&self, ids: &[u32]) {
        self.files.rcu(|m| {
            let mut m = HashMap::clone(m);
            for id in ids {
                m.remove(id);
            }
            m
        });
    }
}
