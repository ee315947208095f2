//! A Raft node over TCP: openraft wired to the ringcask log store and state machine, a small
//! RPC between nodes (length-prefixed JSON frames on loopback; no TLS), and the client API
//! (writes through the leader, linearizable reads by read index, local reads).
//!
//! Frame: `len u32 LE | JSON`. One request, then one reply, per frame pair; a connection
//! carries any number of them in turn. A snapshot is the one exception: its request frame
//! ([`Msg::Snapshot`]) gives the file's length, and the file's bytes follow it raw, streamed in
//! chunks from the sender's file to the receiver's (neither holds the whole snapshot in memory).

mod client;
mod network;
mod wire;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, ReadPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use client::{client_read, client_write, Client};
pub use network::{Network, Peer};
pub use wire::{call, Msg, Reply};

use network::stalled;
use wire::{recv, send};

use crate::{LogStore, Reader, SnapshotMeta, StateMachine, TypeConfig, Vote};

/// The openraft handle of a node.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// Bytes per read or write of a snapshot stream.
const SNAPSHOT_CHUNK: usize = 256 << 10;
/// A snapshot stream that moves no bytes for this long is dropped.
const SNAPSHOT_STALL: Duration = Duration::from_secs(30);

/// How a node snapshots and sends snapshots (beside openraft's [`Config`]).
#[derive(Clone, Debug)]
pub struct Settings {
    /// A snapshot is built once at least this many entries were applied since the last one
    /// **and** more entries than the state has keys: a snapshot rewrites the whole state, so
    /// its cost per applied entry stays bounded as the state grows. Default 5000.
    pub snapshot_logs: u64,
    /// Bytes per second one snapshot transfer to a peer may send, so a catch-up does not
    /// starve log replication (`None`, the default: unlimited).
    pub snapshot_rate: Option<u64>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            snapshot_logs: 5000,
            snapshot_rate: None,
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
    log: LogStore,
    reader: Reader,
    dir: std::path::PathBuf,
}

impl Node {
    /// Opens the node's stores in `dir` and starts Raft with [`Node::config`] and default
    /// [`Settings`] (not yet serving: see [`Node::serve`]).
    ///
    /// # Errors
    /// Opening the stores or starting Raft failed.
    pub async fn start(id: u64, dir: &Path) -> io::Result<Node> {
        let settings = Settings::default();
        Self::start_with(id, dir, Self::config(settings.snapshot_logs), settings).await
    }

    /// The openraft configuration [`Node::start`] uses: snapshots are left to the node's
    /// [`Settings`] (openraft's own policy is off), and the log before a snapshot is purged
    /// but for the last `snapshot_logs / 4` entries.
    pub fn config(snapshot_logs: u64) -> Config {
        Config {
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: snapshot_logs / 4,
            ..Default::default()
        }
    }

    /// [`Node::start`] with a given openraft configuration and settings.
    ///
    /// # Errors
    /// Opening the stores, an invalid configuration, or starting Raft failed.
    pub async fn start_with(
        id: u64,
        dir: &Path,
        config: Config,
        settings: Settings,
    ) -> io::Result<Node> {
        remove_incoming(dir)?;
        let log = LogStore::open(dir.join("log")).await?;
        let sm = StateMachine::open(dir.join("sm")).await?;
        let reader = sm.reader();
        let config = Arc::new(config.validate().map_err(io::Error::other)?);
        let network = Network {
            snapshot_rate: settings.snapshot_rate,
        };
        let raft = Raft::new(id, config, network, log.clone(), sm)
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(snapshot_policy(
            raft.clone(),
            reader.clone(),
            settings.snapshot_logs.max(1),
        ));
        Ok(Node {
            id,
            raft,
            log,
            reader,
            dir: dir.to_path_buf(),
        })
    }

    /// Stops Raft, then closes the node's stores (synced, sealed, keydir snapshots written, so
    /// the next start is quick). Dropping a node without this loses nothing acknowledged.
    ///
    /// # Errors
    /// Raft's shutdown or a store's close failed.
    pub async fn shutdown(&self) -> io::Result<()> {
        self.raft.shutdown().await.map_err(io::Error::other)?;
        let log = self.log.close().await;
        let sm = self.reader.close().await;
        log.and(sm)
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
                    let reply = match msg {
                        Msg::Snapshot { vote, meta, len } => {
                            match node.receive_snapshot(&mut s, vote, meta, len).await {
                                Ok(reply) => reply,
                                // The stream broke or was cut short: drop the connection.
                                Err(e) => {
                                    tracing::warn!("snapshot receive failed: {e}");
                                    break;
                                }
                            }
                        }
                        other => node.handle(other).await,
                    };
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
            Msg::Snapshot { .. } => err(&"a snapshot is streamed on its connection"),
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

    /// Receives the `len` bytes of a snapshot that follow its frame on `s` into a file of
    /// its own (unlinked once created, so a crash leaves nothing behind) and installs it.
    /// `Err` means the stream is broken (the connection is dropped); a failed install is a
    /// [`Reply::Error`].
    async fn receive_snapshot(
        &self,
        s: &mut TcpStream,
        vote: Vote,
        meta: SnapshotMeta,
        len: u64,
    ) -> io::Result<Reply> {
        tracing::info!(bytes = len, last_log_id = ?meta.last_log_id, "receiving snapshot");
        let started = tokio::time::Instant::now();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(format!("{INCOMING}{n}.snapshot"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        let mut file = tokio::fs::File::from_std(file);
        let mut buf = vec![0u8; SNAPSHOT_CHUNK];
        let mut check = crate::snapshot_file::StreamCheck::new(len);
        let mut left = len;
        while left > 0 {
            let want = usize::try_from(left).map_or(SNAPSHOT_CHUNK, |l| l.min(SNAPSHOT_CHUNK));
            let n = stalled(s.read(&mut buf[..want])).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "snapshot stream ended early",
                ));
            }
            check.update(&buf[..n]);
            file.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        file.flush().await?;
        let mut file = file.into_std().await;
        // Verified before openraft sees it: a failed install would stop this node.
        if let Err(e) = check.finish().and_then(|()| {
            let in_file = crate::snapshot_file::read_meta(&mut file)?;
            if in_file.last_log_id == meta.last_log_id {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "snapshot file does not match its metadata",
                ))
            }
        }) {
            tracing::warn!("refused a received snapshot: {e}");
            return Ok(Reply::Error(e.to_string()));
        }
        let received = started.elapsed();
        tracing::info!(
            bytes = len,
            ms = received.as_millis() as u64,
            "snapshot received; installing"
        );
        let snapshot = openraft::alias::SnapshotOf::<TypeConfig, std::fs::File> {
            meta,
            snapshot: file,
        };
        Ok(
            match self.raft.install_full_snapshot(vote, snapshot).await {
                Ok(r) => {
                    let ms = (started.elapsed() - received).as_millis() as u64;
                    tracing::info!(bytes = len, ms, "installed snapshot");
                    Reply::Snapshot(r)
                }
                Err(e) => Reply::Error(e.to_string()),
            },
        )
    }
}

/// Name prefix of a snapshot being received.
const INCOMING: &str = "incoming.";

/// Removes snapshot files a crash left half received.
fn remove_incoming(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(INCOMING))
        {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Triggers a snapshot once at least `min_logs` entries, and more entries than the state has
/// keys, were applied since the last snapshot. Ends when Raft shuts down.
async fn snapshot_policy(raft: Raft, reader: Reader, min_logs: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let (applied, snapshot) = {
            use openraft::async_runtime::WatchReceiver;
            let m = raft.metrics();
            let m = m.borrow_watched();
            (
                m.last_applied.map_or(0, |l| l.index + 1),
                m.snapshot.map_or(0, |l| l.index + 1),
            )
        };
        let since = applied.saturating_sub(snapshot);
        let due = since >= min_logs && since > reader.len() as u64;
        if due && raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}
/// Binds `addr` (port 0: any free port).
///
/// # Errors
/// The bind failed.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
