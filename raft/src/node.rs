//! A Raft node over TCP: openraft wired to the ringcask log store and state machine, a small
//! RPC between nodes (length-prefixed JSON frames on loopback; no TLS), and the client API
//! (writes through the leader, linearizable reads by read index, local reads).
//!
//! Frame: `len u32 LE | JSON`. One request, then one reply, per frame pair; a connection
//! carries any number of them in turn.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{RPCError, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, RaftNetworkFactory, ReadPolicy};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::{LogStore, Reader, Request, Response, SnapshotMeta, StateMachine, TypeConfig, Vote};

/// The openraft handle of a node.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// Largest frame accepted (a snapshot travels in one frame).
const MAX_FRAME_BYTES: u32 = 1 << 30;

/// What one node asks another, or a client asks a node.
#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    /// Raft: append entries (and heartbeats).
    Append(AppendEntriesRequest<TypeConfig>),
    /// Raft: a vote request.
    Vote(VoteRequest<TypeConfig>),
    /// Raft: a whole snapshot.
    Snapshot {
        /// The leader's vote.
        vote: Vote,
        /// What the snapshot covers.
        meta: SnapshotMeta,
        /// The snapshot file's bytes.
        data: Vec<u8>,
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
async fn send<T: Serialize>(s: &mut TcpStream, msg: &T) -> io::Result<()> {
    let body = crate::encode(msg)?;
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("frame too large"))?;
    s.write_all(&len.to_le_bytes()).await?;
    s.write_all(&body).await
}

/// Reads one frame (`None`: the peer closed between frames).
async fn recv<T: serde::de::DeserializeOwned>(s: &mut TcpStream) -> io::Result<Option<T>> {
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

async fn exchange(s: &mut TcpStream, msg: &Msg, timeout: Duration) -> io::Result<Reply> {
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

/// Connections to the other nodes.
#[derive(Clone, Default)]
pub struct Network;

/// A connection to one node, opened on first use and reopened after an error.
pub struct Peer {
    addr: String,
    conn: Mutex<Option<TcpStream>>,
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

fn unexpected(r: &Reply) -> io::Error {
    io::Error::other(format!("unexpected reply {r:?}"))
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, _target: u64, node: &BasicNode) -> Peer {
        Peer {
            addr: node.addr.clone(),
            conn: Mutex::new(None),
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
        _cancel: impl std::future::Future<Output = openraft::error::ReplicationClosed>
            + openraft::OptionalSend
            + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut file = snapshot.snapshot;
        let data = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek, SeekFrom};
            let mut data = Vec::new();
            file.seek(SeekFrom::Start(0))?;
            file.read_to_end(&mut data)?;
            Ok::<_, io::Error>(data)
        })
        .await
        .map_err(|e| unreachable(io::Error::other(e)))?
        .map_err(unreachable)?;
        let msg = Msg::Snapshot {
            vote,
            meta: snapshot.meta,
            data,
        };
        match self
            .rpc(&msg, option.hard_ttl().max(Duration::from_secs(30)))
            .await
        {
            Ok(Reply::Snapshot(r)) => Ok(r),
            Ok(other) => Err(unreachable(unexpected(&other)).into()),
            Err(e) => Err(unreachable(e).into()),
        }
    }
}

/// A running node.
#[derive(Clone)]
pub struct Node {
    /// Its id.
    pub id: u64,
    /// The openraft handle.
    pub raft: Raft,
    reader: Reader,
    dir: std::path::PathBuf,
}

impl Node {
    /// Opens the node's stores in `dir` and starts Raft (not yet serving: see [`Node::serve`]).
    ///
    /// # Errors
    /// Opening the stores or starting Raft failed.
    pub async fn start(id: u64, dir: &Path) -> io::Result<Node> {
        Self::start_with(id, dir, Self::config(5000)).await
    }

    /// The configuration [`Node::start`] uses, with a snapshot every `snapshot_logs` applied
    /// entries (and the log before a snapshot purged but for the last `snapshot_logs / 4`).
    pub fn config(snapshot_logs: u64) -> Config {
        Config {
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_logs),
            max_in_snapshot_log_to_keep: snapshot_logs / 4,
            ..Default::default()
        }
    }

    /// [`Node::start`] with a given openraft configuration.
    ///
    /// # Errors
    /// Opening the stores, an invalid configuration, or starting Raft failed.
    pub async fn start_with(id: u64, dir: &Path, config: Config) -> io::Result<Node> {
        let log = LogStore::open(dir.join("log")).await?;
        let sm = StateMachine::open(dir.join("sm")).await?;
        let reader = sm.reader();
        let config = Arc::new(config.validate().map_err(io::Error::other)?);
        let raft = Raft::new(id, config, Network, log, sm)
            .await
            .map_err(io::Error::other)?;
        Ok(Node {
            id,
            raft,
            reader,
            dir: dir.to_path_buf(),
        })
    }

    /// Serves Raft peers and clients on `listener` until the process ends.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let _ = s.set_nodelay(true);
            let node = self.clone();
            tokio::spawn(async move {
                while let Ok(Some(msg)) = recv::<Msg>(&mut s).await {
                    let reply = node.handle(msg).await;
                    if send(&mut s, &reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    }

    async fn handle(&self, msg: Msg) -> Reply {
        let err = |e: &dyn std::fmt::Display| Reply::Error(e.to_string());
        match msg {
            Msg::Append(r) => self
                .raft
                .append_entries(r)
                .await
                .map_or_else(|e| err(&e), Reply::Append),
            Msg::Vote(r) => self
                .raft
                .vote(r)
                .await
                .map_or_else(|e| err(&e), Reply::Vote),
            Msg::Snapshot { vote, meta, data } => match self.snapshot_file(data).await {
                Ok(file) => {
                    let snapshot = openraft::alias::SnapshotOf::<TypeConfig, std::fs::File> {
                        meta,
                        snapshot: file,
                    };
                    self.raft
                        .install_full_snapshot(vote, snapshot)
                        .await
                        .map_or_else(|e| err(&e), Reply::Snapshot)
                }
                Err(e) => err(&e),
            },
            Msg::Write(req) => match self.raft.client_write(req).await {
                Ok(r) => Reply::Written(r.data),
                Err(e) => match e.forward_to_leader() {
                    Some(f) => Reply::NotLeader(
                        f.leader_id
                            .zip(f.leader_node.as_ref().map(|n| n.addr.clone())),
                    ),
                    None => err(&e),
                },
            },
            Msg::Read(key) => match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                Ok(_) => self
                    .reader
                    .get(&key)
                    .await
                    .map_or_else(|e| err(&e), Reply::Value),
                Err(e) => match e.forward_to_leader() {
                    Some(f) => Reply::NotLeader(
                        f.leader_id
                            .zip(f.leader_node.as_ref().map(|n| n.addr.clone())),
                    ),
                    None => err(&e),
                },
            },
            Msg::ReadLocal(key) => self
                .reader
                .get(&key)
                .await
                .map_or_else(|e| err(&e), Reply::Value),
            Msg::Init(members) => {
                let members: BTreeMap<u64, BasicNode> = members
                    .into_iter()
                    .map(|(id, addr)| (id, BasicNode { addr }))
                    .collect();
                self.raft
                    .initialize(members)
                    .await
                    .map_or_else(|e| err(&e), |()| Reply::Done)
            }
            Msg::Leader => Reply::Leader(self.raft.current_leader().await),
        }
    }

    /// Writes a received snapshot to a file and opens it for reading.
    async fn snapshot_file(&self, data: Vec<u8>) -> io::Result<std::fs::File> {
        // Each received snapshot gets its own file, unlinked once open (two may overlap).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(format!("incoming.{n}.snapshot"));
        tokio::fs::write(&path, data).await?;
        let file = std::fs::File::open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(file)
    }
}

/// Writes `req` through the cluster: tries `addrs` in turn and follows "not the leader"
/// redirects, until the write is applied or `deadline` passes.
///
/// # Errors
/// No node accepted the write in time.
pub async fn client_write(
    addrs: &[String],
    req: Request,
    deadline: Duration,
) -> io::Result<Response> {
    match client(addrs, Msg::Write(req), deadline).await? {
        Reply::Written(r) => Ok(r),
        other => Err(unexpected(&other)),
    }
}

/// A linearizable read of `key` through the leader.
///
/// # Errors
/// No leader answered in time.
pub async fn client_read(
    addrs: &[String],
    key: &str,
    deadline: Duration,
) -> io::Result<Option<String>> {
    match client(addrs, Msg::Read(key.to_string()), deadline).await? {
        Reply::Value(v) => Ok(v),
        other => Err(unexpected(&other)),
    }
}

async fn client(addrs: &[String], msg: Msg, deadline: Duration) -> io::Result<Reply> {
    let end = tokio::time::Instant::now() + deadline;
    let mut target: Option<String> = None;
    let mut i = 0usize;
    let mut last = String::from("no node tried");
    while tokio::time::Instant::now() < end {
        let addr = target.take().unwrap_or_else(|| {
            i += 1;
            addrs[i % addrs.len()].clone()
        });
        match call(&addr, &msg, Duration::from_secs(3)).await {
            Ok(Reply::NotLeader(Some((_, leader)))) => target = Some(leader),
            Ok(Reply::NotLeader(None)) => {
                last = format!("{addr}: no leader known");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Reply::Error(e)) => {
                last = format!("{addr}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(r) => return Ok(r),
            Err(e) => {
                last = format!("{addr}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, last))
}

/// A client that keeps one connection, to the leader once it knows it.
pub struct Client {
    addrs: Vec<String>,
    next: usize,
    conn: Option<TcpStream>,
    target: Option<String>,
}

impl Client {
    /// A client of the cluster whose nodes listen on `addrs`.
    pub fn new(addrs: Vec<String>) -> Client {
        Client {
            addrs,
            next: 0,
            conn: None,
            target: None,
        }
    }

    /// Writes `req` through the leader (following redirects, retrying other nodes) within
    /// `deadline`.
    ///
    /// # Errors
    /// No leader applied it in time.
    pub async fn write(&mut self, req: Request, deadline: Duration) -> io::Result<Response> {
        let end = tokio::time::Instant::now() + deadline;
        let msg = Msg::Write(req);
        let mut last = io::Error::new(io::ErrorKind::TimedOut, "no node tried");
        while tokio::time::Instant::now() < end {
            if self.conn.is_none() {
                let addr = self.target.take().unwrap_or_else(|| {
                    self.next += 1;
                    self.addrs[self.next % self.addrs.len()].clone()
                });
                match TcpStream::connect(&addr).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        self.conn = Some(s);
                    }
                    Err(e) => {
                        last = e;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            let Some(s) = self.conn.as_mut() else {
                continue;
            };
            match exchange(s, &msg, Duration::from_secs(5)).await {
                Ok(Reply::Written(r)) => return Ok(r),
                Ok(Reply::NotLeader(leader)) => {
                    self.conn = None;
                    self.target = leader.map(|(_, a)| a);
                    if self.target.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Ok(other) => {
                    last = unexpected(&other);
                    self.conn = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    last = e;
                    self.conn = None;
                }
            }
        }
        Err(last)
    }
}

/// Binds `addr` (port 0: any free port).
///
/// # Errors
/// The bind failed.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
