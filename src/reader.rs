//! Read io threads: serve positioned reads of records, many in flight per thread, so that the
//! reads that arrive together go to the kernel in one io_uring submission.

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::datafile::data_path;
use crate::io::{FaultInjector, IoFile, Kind, Runtime};

/// Reads in flight per read thread (kept below the default submission queue size).
const MAX_IN_FLIGHT: usize = 128;

/// One positioned read: the whole record at `offset`, `len` bytes, of datafile `file_id`.
pub(crate) struct ReadReq {
    pub file_id: u32,
    pub offset: u64,
    pub len: usize,
    pub reply: oneshot::Sender<std::io::Result<Vec<u8>>>,
}

/// Starts read thread `index`; it stops when every sender of `rx` is gone.
pub(crate) fn spawn(
    index: usize,
    kind: Kind,
    dir: PathBuf,
    fault: Option<Arc<FaultInjector>>,
    rx: mpsc::Receiver<ReadReq>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("ringcask-read-{index}"))
        .spawn(move || {
            let (rt, kind) = match Runtime::new(kind) {
                Ok(rt) => (rt, kind),
                Err(e) => {
                    tracing::warn!("read thread {index}: {e}; using pread");
                    match Runtime::new(Kind::Pread) {
                        Ok(rt) => (rt, Kind::Pread),
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
    kind: Kind,
    dir: PathBuf,
    fault: Option<Arc<FaultInjector>>,
    mut rx: mpsc::Receiver<ReadReq>,
) {
    let mut files: HashMap<u32, Rc<IoFile>> = HashMap::new();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(req) = rx.recv().await {
        let file = match files.get(&req.file_id) {
            Some(f) => f.clone(),
            None => match IoFile::open_read(kind, &data_path(&dir, req.file_id), fault.clone()) {
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
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        tokio::task::spawn_local(async move {
            let res = file.read_exact_at(req.len, req.offset).await;
            let _ = req.reply.send(res);
            drop(permit);
        });
    }
}
