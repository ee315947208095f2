//! One client connection: read what the client sent, run every complete request in order,
//! and send the replies together. Under `--sync always` the replies to a pipeline's writes
//! wait for one `fdatasync` that covers all of them: nothing is acknowledged before it is
//! durable, and a pipeline of writes costs one sync, not one per write.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::commands::{self, Session};
use crate::resp::{self, Reply};
use crate::server::{stopped, Shared, SyncMode};

/// Replies buffered before they are sent even if more requests are waiting.
const FLUSH_BYTES: usize = 1 << 20;

/// What a pass over the buffered requests ended with.
enum Pass {
    /// Every complete request ran; read more.
    Drained,
    /// The reply buffer filled: send, then run the rest before reading.
    Full,
    /// Send the replies, then close.
    Close,
}

/// Serves one client until it leaves, breaks the protocol, times out or the server shuts down.
pub async fn serve(mut stream: TcpStream, shared: &Shared, id: u64) {
    let mut session = Session::new(id, shared.config.requirepass.is_none());
    let mut stop = shared.shutdown_signal();
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut out = BytesMut::with_capacity(16 << 10);
    // When the first byte of the request now buffered (incomplete) arrived.
    let mut started: Option<Instant> = None;
    loop {
        let mut wrote = false;
        let pass = run_requests(shared, &mut session, &mut buf, &mut out, &mut wrote).await;
        if wrote && shared.config.sync == SyncMode::Always {
            if let Err(e) = shared.db.sync().await {
                // The writes were not made durable: their replies must not be sent.
                tracing::error!("client {id}: sync failed, closing without replying: {e}");
                return;
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        match pass {
            Pass::Close => return,
            Pass::Full => continue,
            Pass::Drained => {}
        }
        if *stop.borrow() {
            return;
        }
        if buf.len() > shared.config.max_query_bytes {
            let _ = stream
                .write_all(b"-ERR Protocol error: query buffer limit exceeded\r\n")
                .await;
            return;
        }
        started = if buf.is_empty() {
            None
        } else {
            started.or(Some(Instant::now()))
        };
        let deadline = match started {
            Some(t) => Some(t + shared.config.request_timeout),
            None => shared.config.idle_timeout.map(|d| Instant::now() + d),
        };
        let read = async {
            match deadline {
                Some(at) => tokio::time::timeout_at(at.into(), stream.read_buf(&mut buf))
                    .await
                    .ok(),
                None => Some(stream.read_buf(&mut buf).await),
            }
        };
        tokio::select! {
            r = read => match r {
                Some(Ok(n)) if n > 0 => {}
                None => {
                    tracing::debug!("client {id}: timed out");
                    return;
                }
                _ => return, // closed by the client, or a read error
            },
            () = stopped(&mut stop) => return,
        }
    }
}

/// Runs the complete requests in `buf` in order, encoding replies into `out`.
async fn run_requests(
    shared: &Shared,
    session: &mut Session,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    wrote: &mut bool,
) -> Pass {
    loop {
        let args = match resp::parse(buf, &shared.config.limits) {
            Ok(Some(args)) => args,
            Ok(None) => return Pass::Drained,
            Err(e) => {
                Reply::err(e).encode(session.proto, out);
                return Pass::Close;
            }
        };
        if args.is_empty() {
            continue;
        }
        shared.commands.fetch_add(1, Ordering::Relaxed);
        let outcome = commands::execute(shared, session, args).await;
        outcome.reply.encode(session.proto, out);
        *wrote |= outcome.wrote;
        if outcome.close {
            return Pass::Close;
        }
        if out.len() >= FLUSH_BYTES {
            return Pass::Full;
        }
    }
}
