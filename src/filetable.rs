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
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::datafile::data_path;

/// Datafile id → shared read-only handle.
///
/// The map is replaced whole (copy on write) when a file is first read or retired, which is
/// rare; a read only loads it. `ArcSwap::load` touches no shared reference count, so two
/// threads reading side by side do not pass a lock word or an `Arc` count between their cores
/// on every `get` (a `RwLock` plus an `Arc<File>` clone cost 4 contended atomics per read).
#[derive(Debug)]
pub(crate) struct FileTable {
    dir: PathBuf,
    files: ArcSwap<HashMap<u32, Arc<File>>>,
}

impl FileTable {
    pub(crate) fn new(dir: PathBuf) -> FileTable {
        FileTable {
            dir,
            files: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// Opens datafile `id` and adds its handle (or the one a racing caller added).
    fn open(&self, id: u32) -> io::Result<Arc<File>> {
        let f = Arc::new(File::open(data_path(&self.dir, id))?);
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
        let files = self.files.load();
        let opened;
        let file: &File = match files.get(&id) {
            Some(f) => f,
            None => {
                opened = self.open(id)?;
                &opened
            }
        };
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
