//! The client API: writes through the leader (following redirects), linearizable reads.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use super::wire::{call, exchange, unexpected, Msg, Reply};
use crate::{Request, Response};

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
