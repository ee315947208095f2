//! What callers hand to the write path: ops, requests, messages to the writer thread, and the
//! fan-out of a group commit's result to its waiters.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::format::{self};
use crate::state::Shared;
use crate::{Error, Result};

/// One mutation.
/// One mutation, over owned bytes (`Op`, as queued and batched) or borrowed ones
/// (`Op<&[u8]>`, a caller's single put appended inline without copying its arguments).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op<B = Bytes> {
    Put { key: B, value: B, expiry_ms: u64 },
    Delete { key: B },
}

impl<B: AsRef<[u8]>> Op<B> {
    pub(crate) fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key.as_ref(),
        }
    }

    /// Encoded record length.
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => {
                format::record_len(key.as_ref().len(), value.as_ref().len())
            }
            Op::Delete { key } => format::record_len(key.as_ref().len(), 0),
        }
    }

    /// The same op over borrowed bytes.
    pub(crate) fn view(&self) -> Op<&[u8]> {
        match self {
            Op::Put {
                key,
                value,
                expiry_ms,
            } => Op::Put {
                key: key.as_ref(),
                value: value.as_ref(),
                expiry_ms: *expiry_ms,
            },
            Op::Delete { key } => Op::Delete { key: key.as_ref() },
        }
    }

    /// The same op over owned bytes (copied), for the writer thread's queue.
    pub(crate) fn to_owned_op(&self) -> Op {
        match self.view() {
            Op::Put {
                key,
                value,
                expiry_ms,
            } => Op::Put {
                key: Bytes::copy_from_slice(key),
                value: Bytes::copy_from_slice(value),
                expiry_ms,
            },
            Op::Delete { key } => Op::Delete {
                key: Bytes::copy_from_slice(key),
            },
        }
    }
}

/// A request as the append path reads it: one borrowed op, or an atomic batch.
#[derive(Clone, Copy)]
pub(crate) enum ReqRef<'a> {
    Single(Op<&'a [u8]>),
    Batch(&'a [Op], BatchIf),
    /// A single op applied only if its key's current entry meets the condition.
    If(Op<&'a [u8]>, Cond),
}

/// A condition on a key's current keydir entry, checked under the append lock, so that it is
/// atomic with respect to every other write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cond {
    /// No live (present, unexpired) entry.
    Absent,
    /// A live entry with this seq.
    SeqIs(u64),
}

/// When an atomic batch applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchIf {
    /// Always.
    Always,
    /// Only if none of the keys it writes has a live entry (checked under the append lock).
    AllAbsent,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Appended {
    /// Appended and applied; the seq of its last record.
    Seq(u64),
    /// Its condition did not hold: nothing was written.
    Refused,
}

impl ReqRef<'_> {
    /// Records the request appends.
    pub(crate) fn ops(&self) -> usize {
        match self {
            ReqRef::Single(_) | ReqRef::If(..) => 1,
            ReqRef::Batch(ops, _) => ops.len(),
        }
    }

    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            ReqRef::Single(op) | ReqRef::If(op, _) => op.encoded_len(),
            ReqRef::Batch(ops, _) => ops.iter().map(Op::encoded_len).sum(),
        }
    }
}

/// What callers send to the writer.
pub(crate) enum WriteMsg {
    /// One op, or an atomic batch of ops.
    Write {
        ops: Request,
        /// `Ok(false)` when a conditional request was refused.
        reply: oneshot::Sender<Result<bool>>,
    },
    /// Make every record up to seq `upto` durable (`u64::MAX`: everything written so far).
    Sync { upto: u64, reply: SyncSender },
    /// Seal the active file, release the lock and stop.
    Close { reply: oneshot::Sender<Result<()>> },
}

/// The outcome of a sync, shared by every waiter of one group.
#[derive(Clone)]
pub(crate) enum SyncResult {
    Done,
    Io(std::io::ErrorKind, Arc<str>),
    Poisoned(Arc<str>),
}

impl SyncResult {
    pub(super) fn of(r: &Result<()>) -> Self {
        match r {
            Ok(()) => SyncResult::Done,
            Err(Error::Io(e)) => SyncResult::Io(e.kind(), Arc::from(e.to_string())),
            Err(Error::Poisoned(p)) => SyncResult::Poisoned(Arc::from(p.as_str())),
            Err(e) => SyncResult::Poisoned(Arc::from(e.to_string())),
        }
    }

    /// The caller's result.
    pub(crate) fn into_result(self) -> Result<()> {
        match self {
            SyncResult::Done => Ok(()),
            SyncResult::Io(kind, msg) => Err(Error::Io(std::io::Error::new(kind, msg.to_string()))),
            SyncResult::Poisoned(msg) => Err(Error::Poisoned(msg.to_string())),
        }
    }
}

/// Asks the writer thread behind `tx` to make every record up to seq `upto` durable
/// (`u64::MAX`: everything written so far) and waits for the answer.
pub(crate) async fn request_sync(tx: &mpsc::Sender<WriteMsg>, upto: u64) -> Result<()> {
    let (reply, rx) = oneshot::channel();
    tx.send(WriteMsg::Sync { upto, reply })
        .await
        .map_err(|_| Error::Closed)?;
    let reply = rx.await.map_err(|_| Error::Closed)?;
    // Dropping the reply wakes the waiters it carries.
    reply.result.clone().into_result()
}

/// Asks the writer for an `fdatasync` covering `upto` without waiting for it (a writeback).
/// Skipped when the queue is full: a later append asks again.
pub(crate) fn request_writeback(tx: &mpsc::Sender<WriteMsg>, upto: u64) {
    let (reply, _) = oneshot::channel();
    let _ = tx.try_send(WriteMsg::Sync { upto, reply });
}

/// Where a sync waiter's answer goes.
pub(crate) type SyncSender = oneshot::Sender<SyncReply>;

/// The answer to one sync waiter. It carries part of the group's other waiters: whoever drops
/// it (the waiter after reading it, or `send` failing because the waiter is gone) wakes them.
/// So waking a group of N waiters costs the writer thread about log2(N) wake-ups instead of N,
/// and it can start the next `fdatasync` sooner; the rest of the wake-ups happen in parallel on
/// the woken callers' threads.
pub(crate) struct SyncReply {
    pub(crate) result: SyncResult,
    forward: Vec<SyncSender>,
}

impl Drop for SyncReply {
    fn drop(&mut self) {
        fan_out(std::mem::take(&mut self.forward), &self.result);
    }
}

/// Answers every waiter in `list`: each one reached directly gets half of the remaining list to
/// answer in turn.
pub(crate) fn fan_out(mut list: Vec<SyncSender>, result: &SyncResult) {
    while let Some(first) = list.pop() {
        let half = list.split_off(list.len() / 2);
        // On failure the reply comes back and is dropped here, which answers its half.
        let _ = first.send(SyncReply {
            result: result.clone(),
            forward: half,
        });
    }
}

/// A single op or an atomic batch.
pub(crate) enum Request {
    Single(Op),
    Batch(Vec<Op>, BatchIf),
    If(Op, Cond),
}

impl Request {
    pub(super) fn as_ref(&self) -> ReqRef<'_> {
        match self {
            Request::Single(op) => ReqRef::Single(op.view()),
            Request::Batch(ops, when) => ReqRef::Batch(ops, *when),
            Request::If(op, cond) => ReqRef::If(op.view(), *cond),
        }
    }
}

/// Requests encoding to more bytes than this go to the writer thread instead of being written on
/// the caller's thread, so that a huge value does not stall an async worker thread for long.
pub(crate) const INLINE_MAX: usize = 1 << 20;

/// Op counts of one request, recorded in the stats when it is acknowledged.
#[derive(Clone, Copy)]
pub(super) struct Counts {
    puts: u64,
    deletes: u64,
    batch: bool,
}

impl Counts {
    pub(super) fn of(req: ReqRef<'_>) -> Counts {
        let (n, deletes) = match req {
            ReqRef::Single(op) | ReqRef::If(op, _) => {
                (1, u64::from(matches!(op, Op::Delete { .. })))
            }
            ReqRef::Batch(ops, _) => (
                ops.len() as u64,
                ops.iter()
                    .filter(|o| matches!(o, Op::Delete { .. }))
                    .count() as u64,
            ),
        };
        Counts {
            puts: n - deletes,
            deletes,
            batch: matches!(req, ReqRef::Batch(..)),
        }
    }

    pub(super) fn record(self, s: &Shared) {
        s.puts.add(self.puts);
        s.deletes.add(self.deletes);
        if self.batch {
            s.batches.add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every waiter still listening gets the group's result, whatever waiters in the tree went
    /// away, as long as each reply is dropped after reading (which forwards its part).
    #[test]
    fn fan_out_reaches_every_live_waiter() {
        for n in [0usize, 1, 2, 3, 7, 32, 100] {
            for gone_every in [0usize, 2, 3] {
                let mut senders = Vec::new();
                let mut live = Vec::new();
                for i in 0..n {
                    let (tx, rx) = oneshot::channel();
                    senders.push(tx);
                    if gone_every != 0 && i % gone_every == 0 {
                        drop(rx);
                    } else {
                        live.push(rx);
                    }
                }
                fan_out(senders, &SyncResult::Done);
                // Each reply forwards its part when it is dropped: poll until nothing moves.
                let mut answered = 0;
                let mut pending = live;
                loop {
                    let before = pending.len();
                    let mut still = Vec::new();
                    for mut rx in pending {
                        match rx.try_recv() {
                            Ok(reply) => {
                                assert!(reply.result.clone().into_result().is_ok());
                                answered += 1;
                                drop(reply);
                            }
                            Err(oneshot::error::TryRecvError::Empty) => still.push(rx),
                            Err(e) => panic!("a live waiter lost its answer: {e}"),
                        }
                    }
                    pending = still;
                    if pending.is_empty() || pending.len() == before {
                        break;
                    }
                }
                assert!(
                    pending.is_empty(),
                    "{} waiters never answered",
                    pending.len()
                );
                let expected = (0..n)
                    .filter(|i| gone_every == 0 || i % gone_every != 0)
                    .count();
                assert_eq!(answered, expected, "n={n} gone_every={gone_every}");
            }
        }
    }

    #[test]
    fn sync_errors_keep_their_kind() {
        let io = Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "disk full",
        )));
        match SyncResult::of(&io).into_result() {
            Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::StorageFull),
            other => panic!("unexpected {other:?}"),
        }
        let p = Err(Error::Poisoned("earlier failure".into()));
        assert!(matches!(
            SyncResult::of(&p).into_result(),
            Err(Error::Poisoned(_))
        ));
    }
}
