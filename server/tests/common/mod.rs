//! Helpers: a server in this process on an ephemeral port, or the `ringcask` binary as a child.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringcask_server::{Config, Server, ShutdownHandle, SyncMode};

/// A server running in this process.
pub struct InProc {
    pub addr: SocketAddr,
    pub stop: ShutdownHandle,
    pub task: tokio::task::JoinHandle<ringcask::Result<()>>,
}

impl InProc {
    /// Starts a server on `dir` with `config` (its bind port replaced by an ephemeral one).
    pub async fn start(dir: &Path, mut config: Config) -> InProc {
        config.bind = "127.0.0.1:0".parse().expect("addr");
        let opts = ringcask::Options::default().sync(config.sync.store_policy());
        let db = ringcask::Db::open(dir, opts).await.expect("open");
        let server = Server::bind(db, config).await.expect("bind");
        let addr = server.local_addr().expect("addr");
        let stop = server.shutdown_handle();
        let task = tokio::spawn(server.run());
        InProc { addr, stop, task }
    }

    /// A server with default settings.
    pub async fn default(dir: &Path) -> InProc {
        InProc::start(dir, Config::default()).await
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }

    /// Shuts down and waits for the store to close.
    pub async fn stop(self) {
        self.stop.shutdown();
        self.task.await.expect("join").expect("close");
    }
}

/// Settings with `--sync` as given.
pub fn with_sync(sync: SyncMode) -> Config {
    Config {
        sync,
        ..Config::default()
    }
}

/// The `ringcask` binary serving `dir` as a child process; its address is read from the
/// "ready to accept connections on" log line.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for ServerProcess {
    /// A test that fails leaves no server behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn spawn_server(dir: &Path, extra: &[&str]) -> ServerProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcask"))
        .arg("serve")
        .arg("--dir")
        .arg(dir)
        .args(["--bind", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn ringcask serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(at) = line.find("ready to accept connections on ") {
                let addr = line[at + 31..].trim().to_string();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr);
                }
            }
            // Keep draining so the child never blocks on a full pipe.
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("server did not report its address")
        .parse()
        .expect("address");
    ServerProcess { child, addr }
}

/// Runs a tool binary (`redis-cli`, `redis-benchmark`) that must be installed: a missing one
/// fails the test (CI installs them; they are never skipped).
pub fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: apt-get install redis-tools"
    );
    Command::new(name)
}
