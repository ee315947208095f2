//! Read io threads: serve positioned reads of records, many in flight per thread, so that the
//! reads that arrive together go to the kernel in one io_uring submission.

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::fault::FaultInjector;
use crate::io::{Access, IoFile, Runtime};
use crate::layout::data_path;
use crate::options::IoBackendKind;

/// Reads in flight per read thread (kept below the default submission queue size).
const MAX_IN_FLIGHT: usize = 128;

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

async fn serve(
    kind: IoBackendKind,
    dir: PathBuf,
    fault: Option<Arc<FaultInjector>>,
    mut rx: mpsc::Receiver<ReaderMsg>,
) {
    let mut files: HashMap<u32, Rc<IoFile>> = HashMap::new();
    // `None`: the file system refused `O_DIRECT` for this file; it is read buffered.
    let mut direct_files: HashMap<u32, Option<Rc<IoFile>>> = HashMap::new();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(msg) = rx.recv().await {
        let req = match msg {
            ReaderMsg::Read(req) => req,
            ReaderMsg::Retire { file_ids, ack } => {
                for id in &file_ids {
                    files.remove(id);
                    direct_files.remove(id);
                }
                // Reads in flight hold their own handle; wait until they are all done.
                if let Ok(all) = slots.acquire_many(MAX_IN_FLIGHT as u32).await {
                    drop(all);
                }
                let _ = ack.send(());
                continue;
            }
        };
        let path = || data_path(&dir, req.file_id);
        let direct = if req.direct {
            direct_files
                .entry(req.file_id)
                .or_insert_with(|| match IoFile::open_direct(kind, &path(), fault.clone()) {
                    Ok(f) => Some(Rc::new(f)),
                    Err(e) => {
                        tracing::debug!(
                            "O_DIRECT refused for {} ({e}); reading it buffered",
                            path().display()
                        );
                        None
                    }
                })
                .clone()
        } else {
            None
        };
        let file = match (&direct, files.get(&req.file_id)) {
            (Some(f), _) | (None, Some(f)) => f.clone(),
            (None, None) => match IoFile::open_read(kind, &path(), Access::Random, fault.clone()) {
                Ok(f) => {
                    let f = Rc::new(f);
                    files.insert(req.file_id, f.clone());
                    f
                }
                Err(e) => {
                    let _ = req.reply.send(Err(e));
                    continue;
                }
            },
        };
        let is_direct = direct.is_some();
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        tokio::task::spawn_local(async move {
            let res = if is_direct {
                file.read_direct(req.len, req.offset).await
            } else {
                file.read_exact_at(req.len, req.offset).await
            };
            let res = res.map(|bytes| Read {
                bytes,
                direct: is_direct,
            });
            let _ = req.reply.send(res);
            drop(permit);
        });
    }
}
