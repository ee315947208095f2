//! The merge thread: serves merge requests, automatic merges and expiry sweeps.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::io::lock::DirLock;
use crate::io::Runtime;
use crate::Result;

use super::{MergeReport, Merger};

/// Requests to the merge thread.
pub(crate) enum MergeMsg {
    /// Merge every sealed file now.
    Run {
        reply: oneshot::Sender<Result<MergeReport>>,
    },
    /// A snapshot dropped: delete the merged-away files no snapshot reads any more.
    Unpinned,
    /// Stop (after the merge in progress, which stops at its next step) and release the lock.
    Stop { reply: oneshot::Sender<()> },
}

/// Starts the merge thread.
pub(crate) fn spawn(
    merger: Merger,
    lock: Arc<DirLock>,
    rx: mpsc::Receiver<MergeMsg>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ringcask-merge".into())
        .spawn(move || {
            let rt = match Runtime::new(merger.kind) {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("merge thread cannot start a runtime: {e}");
                    return;
                }
            };
            let stop_reply = rt.block_on(serve(merger, rx));
            // Release the directory lock before telling `close` we are done.
            drop(lock);
            if let Some(reply) = stop_reply {
                let _ = reply.send(());
            }
        })
}

async fn serve(mut m: Merger, mut rx: mpsc::Receiver<MergeMsg>) -> Option<oneshot::Sender<()>> {
    let auto = m.opts.auto_merge;
    let period = Duration::from_millis(m.opts.merge_check_interval_ms.max(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    m.warm_cache(|| !rx.is_empty()).await;
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                None => return None,
                Some(MergeMsg::Stop { reply }) => return Some(reply),
                Some(MergeMsg::Unpinned) => m.delete_released().await,
                Some(MergeMsg::Run { reply }) => {
                    tracing::debug!("merge of every sealed file asked for");
                    let inputs = m.sealed_files().iter().map(|f| f.file_id).collect();
                    let r = m.merge(inputs, "Db::merge").await;
                    let _ = reply.send(r);
                }
            },
            _ = tick.tick() => {
                m.sweep_expired();
                m.delete_released().await;
                if !auto || m.broken.is_some() {
                    continue;
                }
                if let Some(inputs) = m.auto_inputs() {
                    tracing::debug!("automatic merge: fragmentation passed its trigger");
                    let trigger = "automatic: fragmentation passed merge_trigger_ratio or merge_trigger_bytes";
                    if let Err(e) = m.merge(inputs, trigger).await {
                        if !m.stopping() {
                            tracing::warn!("automatic merge failed: {e}");
                        }
                    }
                }
            }
        }
    }
}
