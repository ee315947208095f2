//! Read io threads: serve positioned reads of records, many in flight per thread, so that the
//! reads that arrive together go to the kernel in one io_uring submission.

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::fault::FaultInjector;
use crate::io::{Access, IoFile, Registered, Runtime};
use crate::layout::read_path;
use crate::options::IoBackendKind;

/// Reads in flight per read thread (kept below the default submission queue size).
const MAX_IN_FLIGHT: usize = 128;

/// Direct reads of up to this many bytes (aligned blocks) go into registered buffers, one per
/// read in flight: 16 KiB holds a record of a 4 KiB value wherever it lies, with room to spare.
/// Larger reads use a plain allocation each.
const REGISTERED_READ_SPAN: usize = 16 << 10;

/// One positioned read: the whole record at `offset`, `len` bytes, of datafile `file_id`.
pub(crate) struct ReadReq {
    pub file_id: u32,
    pub offset: u64,
    pub len: usize,
    /// Read with `O_DIRECT` (`IoMode::Direct`, a sealed file). Where the file system refuses
    /// it the read is buffered, and the reply says so.
    pub direct: bool,
    pub reply: oneshot::Sender<std::io::Result<Read>>,
}

/// The bytes of a read, and whether they were read with `O_DIRECT`.
pub(crate) struct Read {
    pub bytes: Vec<u8>,
    pub direct: bool,
    /// Read into a buffer registered with the thread's ring.
    pub registered: bool,
}

/// What read threads serve.
pub(crate) enum ReaderMsg {
    Read(ReadReq),
    /// Close the handles of these datafiles (a merge is about to delete them) once the reads
    /// in flight have finished, then acknowledge.
    Retire {
        file_ids: Vec<u32>,
        ack: oneshot::Sender<()>,
    },
}

/// Starts read thread `index`; it stops when every sender of `rx` is gone.
pub(crate) fn spawn(
    index: usize,
    kind: IoBackendKind,
    dir: PathBuf,
    fault: Option<Arc<FaultInjector>>,
    rx: mpsc::Receiver<ReaderMsg>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("ringcask-read-{index}"))
        .spawn(move || {
            let (rt, kind) = match Runtime::new(kind) {
                Ok(rt) => (rt, kind),
                Err(e) => {
                    tracing::warn!("read thread {index}: {e}; using pread");
                    match Runtime::new(IoBackendKind::Pread) {
                        Ok(rt) => (rt, IoBackendKind::Pread),
                        Err(e) => {
                            tracing::error!("read thread {index} cannot start a runtime: {e}");
                            return;
                        }
                    }
                }
            };
            rt.block_on(serve(kind, dir, fault, rx));
        })
}

/// The read thread's open datafiles: buffered descriptors and `O_DIRECT` ones.
struct Handles {
    kind: IoBackendKind,
    dir: PathBuf,
    fault: Option<Arc<FaultInjector>>,
    files: HashMap<u32, Rc<IoFile>>,
    /// `None`: the file system refused `O_DIRECT` for this file; it is read buffered.
    direct_files: HashMap<u32, Option<Rc<IoFile>>>,
}

impl Handles {
    /// The handle `req` reads through, opened on first use, and whether it is `O_DIRECT`.
    fn get(&mut self, req: &ReadReq) -> std::io::Result<(Rc<IoFile>, bool)> {
        let (kind, fault) = (self.kind, &self.fault);
        let path = || read_path(&self.dir, req.file_id);
        if req.direct {
            let direct = self.direct_files.entry(req.file_id).or_insert_with(|| {
                match IoFile::open_direct(kind, &path(), fault.clone()) {
                    Ok(f) => Some(Rc::new(f)),
                    Err(e) => {
                        tracing::debug!(
                            "O_DIRECT refused for {} ({e}); reading it buffered",
                            path().display()
                        );
                        None
                    }
                }
            });
            if let Some(f) = direct {
                return Ok((f.clone(), true));
            }
        }
        if let Some(f) = self.files.get(&req.file_id) {
            return Ok((f.clone(), false));
        }
        let f = Rc::new(IoFile::open_read(
            kind,
            &path(),
            Access::Random,
            fault.clone(),
        )?);
        self.files.insert(req.file_id, f.clone());
        Ok((f, false))
    }

    fn retire(&mut self, file_ids: &[u32]) {
        for id in file_ids {
            self.files.remove(id);
            self.direct_files.remove(id);
        }
    }
}

async fn serve(
    kind: IoBackendKind,
    dir: PathBuf,
    fault: Option<Arc<FaultInjector>>,
    mut rx: mpsc::Receiver<ReaderMsg>,
) {
    let mut handles = Handles {
        kind,
        dir,
        fault,
        files: HashMap::new(),
        direct_files: HashMap::new(),
    };
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // Registered lazily, by the first direct read: a store that never reads direct pins nothing.
    let mut regs: Option<Option<Rc<Registered>>> = None;
    while let Some(msg) = rx.recv().await {
        let req = match msg {
            ReaderMsg::Read(req) => req,
            ReaderMsg::Retire { file_ids, ack } => {
                handles.retire(&file_ids);
                // Reads in flight hold their own handle; wait until they are all done.
                if let Ok(all) = slots.acquire_many(MAX_IN_FLIGHT as u32).await {
                    drop(all);
                }
                let _ = ack.send(());
                continue;
            }
        };
        let (file, is_direct) = match handles.get(&req) {
            Ok(x) => x,
            Err(e) => {
                let _ = req.reply.send(Err(e));
                continue;
            }
        };
        let regs = match (is_direct, kind) {
            (true, IoBackendKind::IoUring) => regs
                .get_or_insert_with(|| {
                    Registered::register(&[(MAX_IN_FLIGHT, REGISTERED_READ_SPAN)]).map(Rc::new)
                })
                .clone(),
            _ => None,
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        tokio::task::spawn_local(async move {
            let res = if is_direct {
                file.read_direct(req.len, req.offset, regs.as_deref()).await
            } else {
                file.read_exact_at(req.len, req.offset)
                    .await
                    .map(|bytes| (bytes, false))
            };
            let res = res.map(|(bytes, registered)| Read {
                bytes,
                direct: is_direct,
                registered,
            });
            let _ = req.reply.send(res);
            drop(permit);
        });
    }
}
