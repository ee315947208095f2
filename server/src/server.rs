//! The TCP server: configuration, the accept loop with its client limit, and a clean shutdown
//! (stop accepting, let every connection finish the commands it is running, close the store).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringcask::{Db, SyncPolicy};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::conn;
use crate::resp::Limits;

/// When a write's reply is sent, relative to its `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// After the sync that covers it: an acknowledged write survives power loss. The writes of
    /// one pipeline (everything a client sent that was read together) share one sync, and the
    /// store's group commit shares it between connections.
    Always,
    /// Synced in the background at most this many milliseconds later: a server crash loses
    /// nothing acknowledged; power loss can lose that window (Redis's `appendfsync everysec`).
    IntervalMs(u64),
    /// Left to the operating system (sealing a file and shutdown still sync).
    Never,
}

impl SyncMode {
    /// The store's policy: under `Always` the server syncs once per pipeline itself, so the
    /// store does not sync per write.
    pub fn store_policy(self) -> SyncPolicy {
        match self {
            SyncMode::Always | SyncMode::Never => SyncPolicy::Never,
            SyncMode::IntervalMs(ms) => SyncPolicy::IntervalMs(ms),
        }
    }
}

impl FromStr for SyncMode {
    type Err = String;

    /// `always`, `interval:MS` or `never`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(SyncMode::Always),
            "never" => Ok(SyncMode::Never),
            _ => s
                .strip_prefix("interval:")
                .and_then(|ms| ms.parse().ok())
                .filter(|&ms| ms > 0)
                .map(SyncMode::IntervalMs)
                .ok_or_else(|| {
                    format!("expected always, interval:MS (MS > 0) or never, got {s:?}")
                }),
        }
    }
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncMode::Always => f.write_str("always"),
            SyncMode::IntervalMs(ms) => write!(f, "interval:{ms}"),
            SyncMode::Never => f.write_str("never"),
        }
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:6379`.
    pub bind: SocketAddr,
    /// When replies to writes are sent. Default [`SyncMode::Always`].
    pub sync: SyncMode,
    /// Password clients must give with `AUTH` (user `default`). Required for a bind address
    /// other than loopback. Default none.
    pub requirepass: Option<String>,
    /// Most clients connected at once; more are told so and closed. Default 10,000.
    pub maxclients: usize,
    /// Bounds on one request. Default [`Limits::default`] (64 MiB bulk strings).
    pub limits: Limits,
    /// Most bytes buffered for one connection's unparsed requests. Default 256 MiB.
    pub max_query_bytes: usize,
    /// A request started but not finished within this is dropped with its connection
    /// (slow-sending clients cannot hold buffers for ever). Default 30 s.
    pub request_timeout: Duration,
    /// Close a connection idle this long (`None`: never, Redis's `timeout 0`). Default none.
    pub idle_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 6379)),
            sync: SyncMode::Always,
            requirepass: None,
            maxclients: 10_000,
            limits: Limits::default(),
            max_query_bytes: 256 << 20,
            request_timeout: Duration::from_secs(30),
            idle_timeout: None,
        }
    }
}

/// State every connection shares.
pub struct Shared {
    /// The store.
    pub db: Db,
    /// The settings.
    pub config: Config,
    /// Clients connected now.
    pub clients: AtomicUsize,
    /// Connections accepted since start.
    pub connections: AtomicU64,
    /// Connections refused (client limit).
    pub rejected: AtomicU64,
    /// Commands run since start.
    pub commands: AtomicU64,
    /// When the server started.
    pub started: Instant,
    next_id: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    /// Asks the server to shut down (as SIGTERM does).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// A receiver that sees the shutdown request.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// A bound server, ready to [`Server::run`].
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// Asks a running server to shut down.
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Shared>);

impl ShutdownHandle {
    /// Stops accepting, lets connections finish their commands, and closes the store.
    pub fn shutdown(&self) {
        self.0.begin_shutdown();
    }
}

impl Server {
    /// Binds `config.bind` for `db`.
    ///
    /// # Errors
    /// A bind address other than loopback without a password (Redis's protected mode), or the
    /// bind's own error.
    pub async fn bind(db: Db, config: Config) -> std::io::Result<Server> {
        if !config.bind.ip().is_loopback() && config.requirepass.is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "refusing to listen on {} without --requirepass: only loopback addresses \
                     may be served without a password",
                    config.bind
                ),
            ));
        }
        let listener = TcpListener::bind(config.bind).await?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            db,
            config,
            clients: AtomicUsize::new(0),
            connections: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            shutdown,
        });
        Ok(Server { listener, shared })
    }

    /// The address it listens on (the port chosen, when bound to port 0).
    ///
    /// # Errors
    /// As [`TcpListener::local_addr`].
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that shuts the server down.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shared.clone())
    }

    /// Serves until shut down, then waits for the connections and closes the store.
    ///
    /// # Errors
    /// The store's close error.
    pub async fn run(self) -> ringcask::Result<()> {
        let Server { listener, shared } = self;
        let mut stop = shared.shutdown_signal();
        let mut conns = JoinSet::new();
        tracing::info!(
            "ringcask serving {} on {} (sync {})",
            shared.db.path().display(),
            listener
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string()),
            shared.config.sync
        );
        loop {
            tokio::select! {
                () = stopped(&mut stop) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => admit(&shared, &mut conns, stream, peer),
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(listener);
        tracing::info!("shutting down: waiting for {} connection(s)", conns.len());
        while conns.join_next().await.is_some() {}
        shared.db.close().await?;
        tracing::info!("store closed");
        Ok(())
    }
}

/// Resolves once shutdown is asked for (or the sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, never across an await.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Starts a connection's task, or refuses it over the client limit.
fn admit(shared: &Arc<Shared>, conns: &mut JoinSet<()>, mut stream: TcpStream, peer: SocketAddr) {
    shared.connections.fetch_add(1, Ordering::Relaxed);
    if shared.clients.fetch_add(1, Ordering::AcqRel) >= shared.config.maxclients {
        shared.clients.fetch_sub(1, Ordering::AcqRel);
        shared.rejected.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = stream
                .write_all(b"-ERR max number of clients reached\r\n")
                .await;
        });
        return;
    }
    let _ = stream.set_nodelay(true);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let shared = shared.clone();
    conns.spawn(async move {
        tracing::debug!("client {id} connected from {peer}");
        conn::serve(stream, &shared, id).await;
        shared.clients.fetch_sub(1, Ordering::AcqRel);
        tracing::debug!("client {id} gone");
    });
}
