//! `ringcask-node`: runs one Raft node of a ringcask cluster, or talks to a cluster.
//!
//! - `ringcask-node serve --id N --dir DIR --addr 127.0.0.1:PORT`: a node. Prints
//!   `listening on ADDR` to stderr once it serves; stop it with SIGTERM or SIGINT (or kill it:
//!   every acknowledged write is durable).
//! - `ringcask-node init --node 1=ADDR --node 2=ADDR --node 3=ADDR`: makes the cluster.
//! - `ringcask-node put|get|del|cas|leader --cluster ADDR,ADDR,ADDR ...`: a client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringcask_raft::node::{self, Msg, Node, Reply, Settings};
use ringcask_raft::Request;

#[derive(Parser)]
#[command(
    name = "ringcask-node",
    version,
    about = "A Raft node of a ringcask cluster, and its client"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a node.
    Serve {
        /// This node's id (the same on every restart).
        #[arg(long)]
        id: u64,
        /// The node's directory (its log and state machine; created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The address to serve peers and clients on.
        #[arg(long)]
        addr: SocketAddr,
        /// Build a snapshot once at least this many entries, and more entries than the state
        /// has keys, were applied since the last one.
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
        snapshot_logs: u64,
        /// Bytes per second one snapshot transfer to a peer may send (default: unlimited).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        snapshot_rate: Option<u64>,
    },
    /// Makes the first leader of a new cluster of these members (sent to the first one).
    Init {
        /// A member, as ID=ADDR; give every member.
        #[arg(long = "node", required = true, value_parser = parse_member)]
        nodes: Vec<(u64, String)>,
    },
    /// Sets a key.
    Put {
        #[command(flatten)]
        cluster: ClusterArgs,
        key: String,
        value: String,
    },
    /// Reads a key (linearizable, through the leader; `--local`: this node's applied state).
    Get {
        #[command(flatten)]
        cluster: ClusterArgs,
        key: String,
        /// Read the first node's applied state, possibly stale, without asking the leader.
        #[arg(long)]
        local: bool,
    },
    /// Deletes a key.
    Del {
        #[command(flatten)]
        cluster: ClusterArgs,
        key: String,
    },
    /// Sets (or deletes) a key only if it holds the expected value.
    Cas {
        #[command(flatten)]
        cluster: ClusterArgs,
        key: String,
        /// The value expected now (omit: the key must be absent).
        #[arg(long)]
        expected: Option<String>,
        /// The new value (omit: delete the key).
        #[arg(long)]
        new: Option<String>,
    },
    /// Prints the leader's id as a node knows it.
    Leader {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

#[derive(clap::Args)]
struct ClusterArgs {
    /// The nodes' addresses, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    cluster: Vec<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

fn parse_member(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s.split_once('=').ok_or("expected ID=ADDR")?;
    let id = id.parse().map_err(|_| format!("bad node id {id:?}"))?;
    Ok((id, addr.to_string()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringcask-node: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve {
            id,
            dir,
            addr,
            snapshot_logs,
            snapshot_rate,
        } => {
            init_logging();
            let settings = Settings {
                snapshot_logs,
                snapshot_rate,
            };
            rt.block_on(serve(id, dir, addr, settings))
        }
        other => rt.block_on(client(other)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringcask-node: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        // A log pipe that breaks (its reader gone) must not make logging panic: the default
        // reports write errors with `eprintln!`, which panics on a broken stderr and took the
        // signal handler's task down with it (SIGTERM was then ignored).
        .log_internal_errors(false)
        .init();
}

async fn serve(
    id: u64,
    dir: PathBuf,
    addr: SocketAddr,
    settings: Settings,
) -> std::io::Result<ExitCode> {
    let listener = node::bind(addr).await?;
    let config = Node::config(settings.snapshot_logs);
    let node = Node::start_with(id, &dir, config, settings).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    tokio::select! {
        () = node.clone().serve(listener) => {}
        () = signal() => {}
    }
    node.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs one client command; prints its result on stdout.
async fn client(command: Command) -> std::io::Result<ExitCode> {
    let write = |cluster: &ClusterArgs, req| {
        let addrs = cluster.cluster.clone();
        let deadline = Duration::from_secs(cluster.timeout);
        async move { node::client_write(&addrs, req, deadline).await }
    };
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(nil)".to_string());
    match command {
        Command::Serve { .. } => Ok(ExitCode::from(2)),
        Command::Init { nodes } => {
            let first = nodes[0].1.clone();
            let members: BTreeMap<u64, String> = nodes.into_iter().collect();
            match node::call(&first, &Msg::Init(members), Duration::from_secs(10)).await? {
                Reply::Done => {
                    println!("OK");
                    Ok(ExitCode::SUCCESS)
                }
                other => Err(std::io::Error::other(format!("init: {other:?}"))),
            }
        }
        Command::Put {
            cluster,
            key,
            value,
        } => {
            write(&cluster, Request::Set { key, value }).await?;
            println!("OK");
            Ok(ExitCode::SUCCESS)
        }
        Command::Del { cluster, key } => {
            let r = write(&cluster, Request::Delete { key }).await?;
            println!("{}", u8::from(r.previous.is_some()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Cas {
            cluster,
            key,
            expected,
            new,
        } => {
            let r = write(&cluster, Request::CompareAndSwap { key, expected, new }).await?;
            if r.ok {
                println!("OK");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("MISMATCH {}", show(&r.previous));
                Ok(ExitCode::from(3))
            }
        }
        Command::Get {
            cluster,
            key,
            local,
        } => {
            let v = if local {
                let addr = &cluster.cluster[0];
                let deadline = Duration::from_secs(cluster.timeout);
                match node::call(addr, &Msg::ReadLocal(key), deadline).await? {
                    Reply::Value(v) => v,
                    other => return Err(std::io::Error::other(format!("{other:?}"))),
                }
            } else {
                let deadline = Duration::from_secs(cluster.timeout);
                node::client_read(&cluster.cluster, &key, deadline).await?
            };
            println!("{}", show(&v));
            Ok(ExitCode::SUCCESS)
        }
        Command::Leader { cluster } => {
            let deadline = Duration::from_secs(cluster.timeout);
            match node::call(&cluster.cluster[0], &Msg::Leader, deadline).await? {
                Reply::Leader(Some(id)) => {
                    println!("{id}");
                    Ok(ExitCode::SUCCESS)
                }
                Reply::Leader(None) => {
                    println!("(none)");
                    Ok(ExitCode::from(3))
                }
                other => Err(std::io::Error::other(format!("{other:?}"))),
            }
        }
    }
}

async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
