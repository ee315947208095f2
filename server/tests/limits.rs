//! Bad input and hostile clients over raw sockets: bounded lengths, garbage, clients that die
//! or stall mid-request, the client limit, protected mode, RESP3 and inline commands, and a
//! shutdown that acknowledges nothing it has not made durable.

mod common;

use std::time::Duration;

use common::InProc;
use ringcask_server::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until `want` bytes arrived or the peer closed; what arrived, and whether it closed.
async fn read_some(s: &mut TcpStream, want: usize) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        match r.expect("no reply within 10 s") {
            Ok(0) | Err(_) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if got.len() >= want {
            return (got, false);
        }
    }
}

/// Sends `req` and reads the reply up to `want` bytes.
async fn ask(s: &mut TcpStream, req: &[u8], want: usize) -> String {
    s.write_all(req).await.expect("write");
    String::from_utf8_lossy(&read_some(s, want).await.0).into_owned()
}

/// Whether the server closes `s` (reads to EOF within 10 s).
async fn closes(s: &mut TcpStream) -> bool {
    read_some(s, usize::MAX).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_lengths_and_garbage_get_an_error_and_cost_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = InProc::default(tmp.path()).await;
    let cases: [(&[u8], &str); 4] = [
        (b"*1\r\n$10000000000\r\n", "invalid bulk length"),
        (b"*100000000000\r\n", "invalid multibulk length"),
        (b"*2\r\n$3\r\nGET\r\n:1\r\n", "expected '$'"),
        (b"*1\r\n$-7\r\n", "invalid bulk length"),
    ];
    for (req, want) in cases {
        let mut s = TcpStream::connect(srv.addr).await.expect("connect");
        let reply = ask(&mut s, req, 5).await;
        assert!(
            reply.starts_with("-ERR Protocol error") && reply.contains(want),
            "{reply}"
        );
        assert!(closes(&mut s).await, "closed after {want}");
    }
    // A line of binary garbage is an unknown inline command: answered, connection kept.
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    let reply = ask(&mut s, b"\x01\xfe\xff garbage\r\n", 5).await;
    assert!(reply.starts_with("-ERR unknown command"), "{reply}");
    assert_eq!(ask(&mut s, b"PING\r\n", 7).await, "+PONG\r\n");
    // Garbage with no line end at all is bounded by the inline limit.
    let reply = ask(&mut s, &vec![b'x'; 100 << 10], 5).await;
    assert!(reply.contains("too big inline request"), "{reply}");
    assert!(closes(&mut s).await);
    // The server still serves.
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    assert_eq!(ask(&mut s, b"*1\r\n$4\r\nPING\r\n", 7).await, "+PONG\r\n");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_request_applies_nothing_of_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = InProc::default(tmp.path()).await;
    let full = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n";
    for cut in [1, 10, 20, full.len() - 1] {
        let mut s = TcpStream::connect(srv.addr).await.expect("connect");
        s.write_all(&full[..cut]).await.expect("write");
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    assert_eq!(ask(&mut s, b"GET k\r\n", 5).await, "$-1\r\n");
    assert_eq!(ask(&mut s, full, 5).await, "+OK\r\n");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_timed_out_and_query_buffers_are_bounded() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = Config {
        request_timeout: Duration::from_millis(300),
        idle_timeout: Some(Duration::from_millis(600)),
        max_query_bytes: 1 << 20,
        ..Config::default()
    };
    config.limits.max_bulk_bytes = 4 << 20;
    let srv = InProc::start(tmp.path(), config).await;
    // Slowloris: a byte every 100 ms never finishes a request.
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    let t0 = std::time::Instant::now();
    let mut closed = false;
    for b in b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalu".iter() {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        closed || closes(&mut s).await,
        "a stalled request is dropped"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Idle: closed after the idle timeout.
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    assert_eq!(ask(&mut s, b"PING\r\n", 7).await, "+PONG\r\n");
    assert!(closes(&mut s).await, "an idle client is closed");
    // A request bigger than the query buffer limit (but with legal lengths) is refused.
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3000000\r\n")
        .await
        .expect("w");
    let chunk = vec![b'v'; 64 << 10];
    let mut reply = Vec::new();
    for _ in 0..40 {
        if s.write_all(&chunk).await.is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(5), s.read(&mut buf)).await {
            reply.extend_from_slice(&buf[..n]);
            break;
        }
    }
    if reply.is_empty() {
        reply = read_some(&mut s, 10).await.0;
    }
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.contains("query buffer limit"), "{reply}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_the_limit_are_told_and_closed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = Config {
        maxclients: 2,
        ..Config::default()
    };
    let srv = InProc::start(tmp.path(), config).await;
    let mut a = TcpStream::connect(srv.addr).await.expect("a");
    let mut b = TcpStream::connect(srv.addr).await.expect("b");
    assert_eq!(ask(&mut a, b"PING\r\n", 7).await, "+PONG\r\n");
    assert_eq!(ask(&mut b, b"PING\r\n", 7).await, "+PONG\r\n");
    let mut c = TcpStream::connect(srv.addr).await.expect("c");
    let (got, _) = read_some(&mut c, 36).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        "-ERR max number of clients reached\r\n"
    );
    assert!(closes(&mut c).await);
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut d = TcpStream::connect(srv.addr).await.expect("d");
    assert_eq!(
        ask(&mut d, b"PING\r\n", 7).await,
        "+PONG\r\n",
        "a slot freed"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_mode_refuses_a_public_bind_without_a_password() {
    let tmp = tempfile::tempdir().expect("tmp");
    let db = ringcask::Db::open(tmp.path(), ringcask::Options::default())
        .await
        .expect("open");
    let config = Config {
        bind: "0.0.0.0:0".parse().expect("addr"),
        ..Config::default()
    };
    let e = Server::bind(db.clone(), config)
        .await
        .err()
        .expect("refused");
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(e.to_string().contains("requirepass"), "{e}");
    db.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_after_hello_3_and_inline_commands() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = InProc::default(tmp.path()).await;
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    assert_eq!(ask(&mut s, b"GET nope\r\n", 5).await, "$-1\r\n");
    let hello = ask(&mut s, b"HELLO 3\r\n", 100).await;
    assert!(
        hello.starts_with("%7\r\n") && hello.contains("proto"),
        "{hello}"
    );
    assert_eq!(ask(&mut s, b"GET nope\r\n", 3).await, "_\r\n");
    assert_eq!(ask(&mut s, b"SET \"a b\" 'c d'\r\n", 5).await, "+OK\r\n");
    assert_eq!(ask(&mut s, b"GET \"a b\"\r\n", 9).await, "$3\r\nc d\r\n");
    let cfg = ask(&mut s, b"CONFIG GET appendonly\r\n", 30).await;
    assert_eq!(cfg, "%1\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n");
    assert_eq!(ask(&mut s, b"QUIT\r\n", 5).await, "+OK\r\n");
    assert!(closes(&mut s).await);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_acknowledges_only_what_it_made_durable() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = InProc::default(tmp.path()).await;
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    let mut pipeline = Vec::new();
    for i in 0..2000 {
        pipeline.extend_from_slice(format!("SET key{i} value{i}\r\n").as_bytes());
    }
    s.write_all(&pipeline).await.expect("write");
    let stop = srv.stop.clone();
    stop.shutdown();
    let (got, _) = read_some(&mut s, usize::MAX).await;
    srv.task.await.expect("join").expect("close");
    let acked = String::from_utf8_lossy(&got).matches("+OK\r\n").count();
    let db = ringcask::Db::open(tmp.path(), ringcask::Options::default())
        .await
        .expect("reopen");
    for i in 0..acked {
        let v = db.get(format!("key{i}")).await.expect("get");
        assert_eq!(
            v.as_deref(),
            Some(format!("value{i}").as_bytes()),
            "acked key{i}"
        );
    }
    assert!(
        db.stats().recovery.from_snapshot,
        "the store was closed cleanly"
    );
    db.close().await.expect("close");
}
