//! `ringcask-node --id N --dir D --addr 127.0.0.1:PORT [--snapshot-logs N]`: one Raft node of a
//! ringcask cluster (a snapshot every N applied entries, default 5000).
//! Prints `listening on ADDR` to stderr once it serves; stop it with SIGTERM or SIGINT (or kill
//! it: every acknowledged write is durable).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: ringcask-node --id N --dir DIR --addr 127.0.0.1:PORT [--snapshot-logs N]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut id, mut dir, mut addr, mut snapshot_logs) = (None, None, None, Some(5000));
    while let Some(a) = args.next() {
        let v = args.next();
        match (a.as_str(), v) {
            ("--id", Some(v)) => id = v.parse::<u64>().ok(),
            ("--dir", Some(v)) => dir = Some(PathBuf::from(v)),
            ("--addr", Some(v)) => addr = v.parse::<SocketAddr>().ok(),
            ("--snapshot-logs", Some(v)) => {
                snapshot_logs = v.parse::<u64>().ok().filter(|&n| n > 0)
            }
            _ => return usage(),
        }
    }
    let (Some(id), Some(dir), Some(addr), Some(snapshot_logs)) = (id, dir, addr, snapshot_logs)
    else {
        return usage();
    };
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
    let result = rt.block_on(async move {
        let listener = ringcask_raft::node::bind(addr).await?;
        let config = ringcask_raft::node::Node::config(snapshot_logs);
        let node = ringcask_raft::node::Node::start_with(id, &dir, config).await?;
        let raft = node.raft.clone();
        eprintln!("listening on {}", listener.local_addr()?);
        tokio::select! {
            () = node.serve(listener) => {}
            () = signal() => {}
        }
        raft.shutdown().await.map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringcask-node: {e}");
            ExitCode::from(1)
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
