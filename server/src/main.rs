//! `ringcask`: serve a store over the Redis protocol, or inspect, check, merge, dump and load
//! one. Logs go to stderr (`RUST_LOG` filters them).

mod tools;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringcask_server::{Config, Server, SyncMode};

#[derive(Parser)]
#[command(
    name = "ringcask",
    version,
    about = "A Bitcask-style key-value store: server and tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the store at DIR over the Redis protocol until SIGINT, SIGTERM or SHUTDOWN.
    Serve(ServeArgs),
    /// Verifies every record's and hint's checksum and the keydir snapshot, reporting damage by
    /// file and offset; exit code 0 when clean, 1 on damage.
    Check {
        /// The store directory.
        dir: PathBuf,
    },
    /// Prints the store's statistics.
    Stats {
        /// The store directory.
        dir: PathBuf,
    },
    /// Compacts the store (merges its sealed files).
    Merge {
        /// The store directory.
        dir: PathBuf,
    },
    /// Prints a key's value (exit code 1 if absent).
    Get {
        /// The store directory.
        dir: PathBuf,
        /// The key.
        key: String,
    },
    /// Stores a value, durably.
    Put {
        /// The store directory.
        dir: PathBuf,
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Expire after this many seconds.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Deletes a key, durably.
    Del {
        /// The store directory.
        dir: PathBuf,
        /// The key.
        key: String,
    },
    /// Lists the keys (those starting with PREFIX), one per line.
    Keys {
        /// The store directory.
        dir: PathBuf,
        /// Only keys starting with this.
        prefix: Option<String>,
    },
    /// Writes every key, value and expiry as JSON lines (base64 keys and values) to stdout.
    Dump {
        /// The store directory.
        dir: PathBuf,
    },
    /// Reads JSON lines as written by `dump` from stdin into the store, durably.
    Load {
        /// The store directory (created if missing).
        dir: PathBuf,
    },
    /// Writes a consistent copy of the store to DEST (which must not exist).
    Checkpoint {
        /// The store directory.
        dir: PathBuf,
        /// Where the copy goes.
        dest: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The store directory (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on; other than loopback only with --requirepass.
    #[arg(long, default_value = "127.0.0.1:6379")]
    bind: SocketAddr,
    /// When writes are acknowledged: always (after fdatasync), interval:MS, never.
    #[arg(long, default_value = "always")]
    sync: SyncMode,
    /// Password for AUTH (user "default").
    #[arg(long)]
    requirepass: Option<String>,
    /// Most clients connected at once.
    #[arg(long, default_value_t = 10_000)]
    maxclients: usize,
    /// Largest key or value a request may carry, bytes.
    #[arg(long, default_value_t = 64 << 20)]
    max_bulk_bytes: usize,
    /// Close clients idle this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    timeout: u64,
    /// Bytes of recently read values kept in memory (0: none; reads then come from the OS page
    /// cache with one system call each).
    #[arg(long, default_value_t = 0)]
    cache_bytes: u64,
    /// Threads serving connections (default: one per core). The store's io threads come on top.
    #[arg(long)]
    threads: Option<usize>,
    /// Close clients that leave a request unfinished this many seconds.
    #[arg(long, default_value_t = 30)]
    request_timeout: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
            eprintln!("ringcask: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await.map(|()| true),
            Command::Check { dir } => tools::check(&dir),
            Command::Stats { dir } => tools::stats(&dir).await.map(|()| true),
            Command::Merge { dir } => tools::merge(&dir).await.map(|()| true),
            Command::Get { dir, key } => tools::get(&dir, &key).await,
            Command::Put {
                dir,
                key,
                value,
                ttl,
            } => tools::put(&dir, &key, &value, ttl).await.map(|()| true),
            Command::Del { dir, key } => tools::del(&dir, &key).await.map(|()| true),
            Command::Keys { dir, prefix } => {
                tools::keys(&dir, prefix.as_deref()).await.map(|()| true)
            }
            Command::Dump { dir } => tools::dump(&dir).await.map(|()| true),
            Command::Load { dir } => tools::load(&dir).await.map(|()| true),
            Command::Checkpoint { dir, dest } => {
                tools::checkpoint(&dir, &dest).await.map(|()| true)
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ringcask: {e}");
            ExitCode::from(2)
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config {
        bind: args.bind,
        sync: args.sync,
        requirepass: args.requirepass,
        maxclients: args.maxclients,
        request_timeout: Duration::from_secs(args.request_timeout.max(1)),
        idle_timeout: (args.timeout > 0).then(|| Duration::from_secs(args.timeout)),
        ..Config::default()
    };
    config.limits.max_bulk_bytes = args.max_bulk_bytes;
    let options = ringcask::Options::default()
        .sync(config.sync.store_policy())
        .max_value_bytes(args.max_bulk_bytes.min(ringcask::VALUE_LEN_LIMIT as usize))
        .value_cache_bytes(args.cache_bytes);
    let db = ringcask::Db::open(&args.dir, options).await?;
    let server = match Server::bind(db.clone(), config).await {
        Ok(server) => server,
        Err(e) => {
            db.close().await?;
            return Err(e.into());
        }
    };
    // The line tests and scripts wait for (with the port actually bound).
    tracing::info!("ready to accept connections on {}", server.local_addr()?);
    let stop = server.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        stop.shutdown();
        tracing::info!("signal received: shutting down");
    });
    server.run().await?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop the server with SHUTDOWN");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
