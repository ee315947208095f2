//! Closing: the sequence `Db::close` runs, and the background close of a handle dropped
//! without it.

use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};

use super::open::{self, Threads};
use super::Inner;
use crate::merge::MergeMsg;
use crate::state::Shared;
use crate::write::WriteMsg;
use crate::Result;

impl Drop for Inner {
    /// The last handle was dropped without [`Db::close`]: close on a thread of the engine's
    /// own (a final sync and seal can take long, and the dropping thread may be an executor's),
    /// as `close` would, keydir snapshot included. An open of the same directory in this
    /// process waits for it.
    fn drop(&mut self) {
        if self.closed.load(Ordering::Acquire) || self.read_only {
            return;
        }
        tracing::warn!(
            dir = %self.dir.display(),
            "store dropped without close: closing it in the background (call Db::close to \
             wait for the close and see its errors)"
        );
        let (write_tx, merge_tx) = (self.write_tx.clone(), self.merge_tx.clone());
        let mut threads = Threads(std::mem::take(&mut self._threads.0), self.shared.clone());
        let shared = self.shared.clone();
        let dir = self.dir.clone();
        open::begin_background_close(&dir);
        let spawned = std::thread::Builder::new()
            .name("ringcask-close".into())
            .spawn({
                let dir = dir.clone();
                move || {
                    let res = futures::executor::block_on(close_engine(&shared, &write_tx, &merge_tx));
                    drop((write_tx, merge_tx));
                    threads.join();
                    match res {
                        Ok(()) => tracing::info!(dir = %dir.display(), "store closed"),
                        Err(e) => tracing::error!(dir = %dir.display(), "closing the dropped store failed: {e}"),
                    }
                    open::end_background_close(&dir);
                }
            });
        if let Err(e) = spawned {
            // No thread: the channels close as the handle drops, and the engine's threads seal
            // on their own; waiting here is all that is left.
            tracing::warn!("cannot start a close thread ({e}); closing on the dropping thread");
            open::end_background_close(&dir);
        }
    }
}

/// Stops merging, then closes the writer (final sync, seal, keydir snapshot).
pub(super) async fn close_engine(
    shared: &Shared,
    write_tx: &mpsc::Sender<WriteMsg>,
    merge_tx: &mpsc::Sender<MergeMsg>,
) -> Result<()> {
    // Stop merging first: the merge thread holds the directory lock too.
    shared.stopping.store(true, Ordering::SeqCst);
    let (reply, rx) = oneshot::channel();
    if merge_tx.send(MergeMsg::Stop { reply }).await.is_ok() {
        let _ = rx.await;
    }
    let (reply, rx) = oneshot::channel();
    if write_tx.send(WriteMsg::Close { reply }).await.is_err() {
        return Ok(());
    }
    rx.await.unwrap_or(Ok(()))
}
