//! The ringcask server and command line: a store served over the Redis protocol (RESP2, and
//! RESP3 after `HELLO 3`) so that clients in any language and tools such as `redis-cli` and
//! `redis-benchmark` can use it, and commands to inspect, check, dump and load a store.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use ringcask_server::{Config, Server};
//! let config = Config::default(); // 127.0.0.1:6379, --sync always
//! let options = ringcask::Options::default().sync(config.sync.store_policy());
//! let db = ringcask::Db::open("/var/lib/ringcask", options).await?;
//! let server = Server::bind(db, config).await?;
//! let stop = server.shutdown_handle(); // stop.shutdown() from a signal handler
//! server.run().await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod commands;
mod conn;
pub mod glob;
pub mod resp;
mod server;

pub use commands::command_names;
pub use server::{Config, Server, Shared, ShutdownHandle, SyncMode};
