//! The io threads a store runs on, and the writer thread's start: lock, recover, serve.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::io::lock::DirLock;
use crate::io::Runtime;
use crate::keydir::KeyDir;
use crate::options::IoBackendKind;
use crate::recovery;
use crate::state::Shared;
use crate::write::{Appender, WriteMsg, Writer};
use crate::{Options, Result};

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
