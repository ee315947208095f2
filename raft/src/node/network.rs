//! Connections from a node to its peers: appends and votes on a kept connection, snapshots
//! streamed on a connection of their own.

use std::io;
use std::time::Duration;

use openraft::error::{RPCError, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetworkFactory};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::wire::{exchange, recv, send, unexpected, Msg, Reply};
use super::{SNAPSHOT_CHUNK, SNAPSHOT_STALL};
use crate::{TypeConfig, Vote};

/// How long a sender waits for the receiver to install a snapshot it has received.
const SNAPSHOT_INSTALL_WAIT: Duration = Duration::from_secs(600);

/// Connections to the other nodes.
#[derive(Clone, Default)]
pub struct Network {
    /// Bytes per second one snapshot transfer may send (`None`: unlimited).
    pub(crate) snapshot_rate: Option<u64>,
}

/// A connection to one node, opened on first use and reopened after an error.
pub struct Peer {
    target: u64,
    addr: String,
    conn: Mutex<Option<TcpStream>>,
    snapshot_rate: Option<u64>,
}

impl Peer {
    async fn rpc(&self, msg: &Msg, timeout: Duration) -> io::Result<Reply> {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            let s = tokio::time::timeout(timeout, TcpStream::connect(&self.addr))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            s.set_nodelay(true)?;
            *conn = Some(s);
        }
        let Some(s) = conn.as_mut() else {
            return Err(io::Error::other("no connection"));
        };
        let r = exchange(s, msg, timeout).await;
        if r.is_err() {
            *conn = None;
        }
        r
    }
}

fn unreachable(e: io::Error) -> Unreachable<TypeConfig> {
    Unreachable::new(&e)
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            conn: Mutex::new(None),
            snapshot_rate: self.snapshot_rate,
        }
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = std::fs::File;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.rpc(&Msg::Append(rpc), option.hard_ttl()).await {
            Ok(Reply::Append(r)) => Ok(r),
            Ok(other) => Err(RPCError::Unreachable(unreachable(unexpected(&other)))),
            Err(e) => Err(RPCError::Unreachable(unreachable(e))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.rpc(&Msg::Vote(rpc), option.hard_ttl()).await {
            Ok(Reply::Vote(r)) => Ok(r),
            Ok(other) => Err(RPCError::Unreachable(unreachable(unexpected(&other)))),
            Err(e) => Err(RPCError::Unreachable(unreachable(e))),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, std::fs::File>,
        cancel: impl std::future::Future<Output = openraft::error::ReplicationClosed>
            + openraft::OptionalSend
            + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let transfer = self.stream_snapshot(vote, snapshot, option.hard_ttl());
        tokio::select! {
            r = transfer => r.map_err(|e| {
                tracing::warn!(target = self.target, "snapshot transfer failed: {e}");
                unreachable(e).into()
            }),
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}

impl Peer {
    /// Sends a snapshot on a connection of its own (appends and heartbeats go on meanwhile on
    /// the kept one): the [`Msg::Snapshot`] frame, then the file in chunks of
    /// [`SNAPSHOT_CHUNK`] at no more than the configured rate, then waits for the receiver's
    /// reply, which comes once it has installed the snapshot.
    async fn stream_snapshot(
        &self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, std::fs::File>,
        ttl: Duration,
    ) -> io::Result<SnapshotResponse<TypeConfig>> {
        use tokio::io::AsyncSeekExt;
        let ttl = ttl.max(Duration::from_secs(5));
        let len = snapshot.snapshot.metadata()?.len();
        let mut file = tokio::fs::File::from_std(snapshot.snapshot);
        file.seek(io::SeekFrom::Start(0)).await?;
        let mut s = tokio::time::timeout(ttl, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        s.set_nodelay(true)?;
        tracing::info!(
            target = self.target,
            bytes = len,
            last_log_id = ?snapshot.meta.last_log_id,
            "sending snapshot"
        );
        let started = tokio::time::Instant::now();
        let msg = Msg::Snapshot {
            vote,
            meta: snapshot.meta,
            len,
        };
        stalled(send(&mut s, &msg)).await?;
        // Under a rate limit, chunks of a tenth of a second's worth keep the pace even.
        let chunk = self.snapshot_rate.map_or(SNAPSHOT_CHUNK, |r| {
            usize::try_from(r / 10).map_or(SNAPSHOT_CHUNK, |c| c.clamp(1, SNAPSHOT_CHUNK))
        });
        let mut buf = vec![0u8; chunk];
        let mut sent = 0u64;
        while sent < len {
            let want = usize::try_from(len - sent).map_or(chunk, |l| l.min(chunk));
            let n = file.read(&mut buf[..want]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "snapshot file shorter than its length",
                ));
            }
            stalled(s.write_all(&buf[..n])).await?;
            sent += n as u64;
            if let Some(rate) = self.snapshot_rate.filter(|&r| r > 0) {
                let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
                tokio::time::sleep_until(due).await;
            }
        }
        let reply = tokio::time::timeout(SNAPSHOT_INSTALL_WAIT, recv::<Reply>(&mut s))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "snapshot not installed in time")
            })??;
        match reply {
            Some(Reply::Snapshot(r)) => {
                tracing::info!(
                    target = self.target,
                    bytes = len,
                    ms = started.elapsed().as_millis() as u64,
                    "snapshot sent and installed"
                );
                Ok(r)
            }
            Some(other) => Err(unexpected(&other)),
            None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no reply")),
        }
    }
}

/// `io` bounded by [`SNAPSHOT_STALL`].
pub(crate) async fn stalled<T>(
    io: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(SNAPSHOT_STALL, io)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "snapshot stream stalled"))?
}
