//! The wire: length-prefixed JSON frames, the messages and replies, one call.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Request, Response, SnapshotMeta, TypeConfig, Vote};

/// Largest frame accepted (a batch of log entries; snapshots are streamed, not framed).
const MAX_FRAME_BYTES: u32 = 256 << 20;

/// What one node asks another, or a client asks a node.
#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    /// Raft: append entries (and heartbeats).
    Append(AppendEntriesRequest<TypeConfig>),
    /// Raft: a vote request.
    Vote(VoteRequest<TypeConfig>),
    /// Raft: a whole snapshot, whose `len` bytes follow this frame raw on the connection.
    Snapshot {
        /// The leader's vote.
        vote: Vote,
        /// What the snapshot covers.
        meta: SnapshotMeta,
        /// The snapshot file's length in bytes.
        len: u64,
    },
    /// Client: a write, applied through the leader.
    Write(Request),
    /// Client: a linearizable read (read index, on the leader).
    Read(String),
    /// Client: this node's applied value, possibly stale.
    ReadLocal(String),
    /// Admin: make this node the first leader of a cluster of these members.
    Init(BTreeMap<u64, String>),
    /// Admin: the leader this node knows of.
    Leader,
}

/// A node's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// Raft: append result.
    Append(AppendEntriesResponse<TypeConfig>),
    /// Raft: vote result.
    Vote(VoteResponse<TypeConfig>),
    /// Raft: snapshot result.
    Snapshot(SnapshotResponse<TypeConfig>),
    /// Client: the write was committed and applied.
    Written(Response),
    /// Client: the value read.
    Value(Option<String>),
    /// Client: not the leader; ask this one (id, address), if known.
    NotLeader(Option<(u64, String)>),
    /// Admin: done.
    Done,
    /// Admin: the known leader.
    Leader(Option<u64>),
    /// The request failed.
    Error(String),
}

/// Writes one frame.
pub(crate) async fn send<T: Serialize>(s: &mut TcpStream, msg: &T) -> io::Result<()> {
    let body = crate::encode(msg)?;
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("frame too large"))?;
    s.write_all(&len.to_le_bytes()).await?;
    s.write_all(&body).await
}

/// Reads one frame (`None`: the peer closed between frames).
pub(crate) async fn recv<T: serde::de::DeserializeOwned>(
    s: &mut TcpStream,
) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame length out of range",
        ));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body).await?;
    crate::decode("frame", &body).map(Some)
}

/// One request and its reply over a fresh or kept connection.
pub async fn call(addr: &str, msg: &Msg, timeout: Duration) -> io::Result<Reply> {
    let mut s = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    exchange(&mut s, msg, timeout).await
}

pub(crate) async fn exchange(s: &mut TcpStream, msg: &Msg, timeout: Duration) -> io::Result<Reply> {
    let io = async {
        send(s, msg).await?;
        recv(s)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no reply"))
    };
    tokio::time::timeout(timeout, io)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no reply in time"))?
}

pub(crate) fn unexpected(r: &Reply) -> io::Error {
    io::Error::other(format!("unexpected reply {r:?}"))
}
