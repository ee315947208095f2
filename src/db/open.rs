//! The io threads a store runs on, and the writer thread's start: lock, recover, serve.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::io::lock::DirLock;
use crate::io::Runtime;
use crate::keydir::KeyDir;
use crate::options::IoBackendKind;
use crate::read::reader::{self, ReaderMsg};
use crate::recovery;
use crate::state::Shared;
use crate::write::{Appender, WriteMsg, Writer};
use crate::{Error, Options, Result};

pub(super) struct Threads(pub(super) Vec<JoinHandle<()>>, pub(super) Arc<Shared>);

impl Drop for Threads {
    fn drop(&mut self) {
        // A merge in progress stops at its next step.
        self.1.stopping.store(true, Ordering::SeqCst);
        for t in self.0.drain(..) {
            if t.join().is_err() {
                tracing::error!("a ringcask io thread panicked");
            }
        }
    }
}

/// What the writer thread reports once the store is open.
pub(super) struct Ready {
    pub(super) kind: IoBackendKind,
    pub(super) fallback_reason: Option<String>,
    pub(super) keydir: Arc<KeyDir>,
    pub(super) appender: Arc<Appender>,
    pub(super) lock: Arc<DirLock>,
}

/// Body of the writer thread: lock, recover, then serve writes.
pub(super) fn writer_main(
    dir: PathBuf,
    opts: Options,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<WriteMsg>,
    ready: oneshot::Sender<Result<Ready>>,
) {
    let (rt, kind, reason) = match Runtime::choose(opts.io_backend) {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let prepared = DirLock::acquire(&dir).and_then(|lock| {
        let (keydir, rec) = recovery::open(&dir, &opts)?;
        Ok((Arc::new(lock), rec, Arc::new(keydir)))
    });
    let (lock, rec, keydir) = match prepared {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    shared.with_usage(|u| *u = rec.usage);
    shared.has_ttl.store(rec.has_ttl, Ordering::Relaxed);
    shared
        .next_file_id
        .store(rec.next_file_id, Ordering::SeqCst);
    *shared.recovery.lock().unwrap_or_else(|p| p.into_inner()) = rec.report;
    rt.block_on(async move {
        let w = Writer::start(
            dir,
            kind,
            opts,
            keydir.clone(),
            shared,
            rec.next_seq,
            lock.clone(),
        )
        .await;
        match w {
            Ok(w) => {
                let _ = ready.send(Ok(Ready {
                    kind,
                    fallback_reason: reason,
                    keydir,
                    appender: w.appender(),
                    lock,
                }));
                w.write_recovery_hints(rec.hints_to_write).await;
                w.run(rx).await;
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        }
    });
}

/// Starts the writer thread, which locks the directory and recovers the store, and waits until
/// the store is open.
pub(super) async fn start_writer(
    dir: &Path,
    opts: &Options,
    shared: &Arc<Shared>,
    write_rx: mpsc::Receiver<WriteMsg>,
) -> Result<(JoinHandle<()>, Ready)> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let writer = {
        let (dir, opts, shared) = (dir.to_path_buf(), opts.clone(), shared.clone());
        std::thread::Builder::new()
            .name("ringcask-writer".into())
            .spawn(move || writer_main(dir, opts, shared, write_rx, ready_tx))?
    };
    match ready_rx.await {
        Ok(Ok(ready)) => Ok((writer, ready)),
        Ok(Err(e)) => {
            let _ = writer.join();
            Err(e)
        }
        Err(_) => {
            let _ = writer.join();
            Err(Error::Io(std::io::Error::other(
                "the writer thread stopped during open",
            )))
        }
    }
}

impl Threads {
    /// Starts the read threads (`Options::read_threads`) and returns their channels.
    pub(super) fn spawn_readers(
        &mut self,
        dir: &Path,
        opts: &Options,
        kind: IoBackendKind,
    ) -> Result<Vec<mpsc::Sender<ReaderMsg>>> {
        let mut readers = Vec::with_capacity(opts.read_threads);
        for i in 0..opts.read_threads {
            let (tx, rx) = mpsc::channel(opts.write_queue_depth);
            self.0.push(reader::spawn(
                i,
                kind,
                dir.to_path_buf(),
                opts.fault_injector.clone(),
                rx,
            )?);
            readers.push(tx);
        }
        Ok(readers)
    }
}
