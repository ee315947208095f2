//! The node's own protocol and policies, in one process: snapshots streamed over TCP are
//! verified before openraft sees them (a damaged or cut-short stream changes nothing and the
//! node keeps serving), garbage frames close their connection and nothing else, and the
//! snapshot interval grows with the state.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use ringcask_raft::node::{self, call, Msg, Node, Reply, Settings};
use ringcask_raft::Request;

/// A single-node cluster (itself the leader) serving on a free port.
async fn single(dir: &Path, snapshot_logs: u64) -> (Node, String) {
    let settings = Settings {
        snapshot_logs,
        snapshot_rate: None,
    };
    let n = Node::start_with(1, dir, Node::config(snapshot_logs), settings)
        .await
        .expect("start");
    let listener = node::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(n.clone().serve(listener));
    let members = BTreeMap::from([(1, addr.clone())]);
    match call(&addr, &Msg::Init(members), Duration::from_secs(5)).await {
        Ok(Reply::Done) => {}
        other => panic!("init: {other:?}"),
    }
    (n, addr)
}

/// A node that is in no cluster yet, serving on a free port.
async fn lone(dir: &Path) -> (Node, String) {
    let n = Node::start(2, dir).await.expect("start");
    let listener = node::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(n.clone().serve(listener));
    (n, addr)
}

async fn put(addr: &str, key: &str, value: &str) {
    let req = Request::Set {
        key: key.into(),
        value: value.into(),
    };
    node::client_write(&[addr.to_string()], req, Duration::from_secs(10))
        .await
        .expect("write");
}

async fn local(addr: &str, key: &str) -> Option<String> {
    match call(addr, &Msg::ReadLocal(key.into()), Duration::from_secs(5)).await {
        Ok(Reply::Value(v)) => v,
        other => panic!("read: {other:?}"),
    }
}

/// Sends a snapshot frame announcing `len` bytes, then `body`, on a fresh connection; returns
/// the reply, or `None` if the node closed the connection.
fn stream(addr: &str, msg: &Msg, body: &[u8]) -> Option<Reply> {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let frame = serde_json::to_vec(msg).expect("encode");
    s.write_all(&(frame.len() as u32).to_le_bytes())
        .expect("frame");
    s.write_all(&frame).expect("frame");
    s.write_all(body).expect("body");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut reply = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut reply).ok()?;
    Some(serde_json::from_slice(&reply).expect("reply"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_cut_snapshot_stream_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, a_addr) = single(&tmp.path().join("a"), 5000).await;
    for i in 0..500 {
        put(&a_addr, &format!("k{i}"), &format!("v{i}")).await;
    }
    a.raft.trigger().snapshot().await.expect("trigger");
    let end = Instant::now() + Duration::from_secs(10);
    let snapshot = loop {
        if let Some(s) = a.raft.get_snapshot().await.expect("get") {
            break s;
        }
        assert!(Instant::now() < end, "no snapshot built");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let vote = a.raft.metrics().borrow_watched().vote;
    let mut bytes = Vec::new();
    let mut file = snapshot.snapshot;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).expect("seek");
    file.read_to_end(&mut bytes).expect("read");
    let msg = Msg::Snapshot {
        vote,
        meta: snapshot.meta.clone(),
        len: bytes.len() as u64,
    };

    let (b, b_addr) = lone(&tmp.path().join("b")).await;
    let generation = || std::fs::read_to_string(tmp.path().join("b/sm/CURRENT")).expect("CURRENT");
    let addr = b_addr.clone();
    let run = move |body: Vec<u8>, msg: Msg| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || stream(&addr, &msg, &body))
    };
    let same_msg = || Msg::Snapshot {
        vote,
        meta: snapshot.meta.clone(),
        len: bytes.len() as u64,
    };

    // One flipped byte in a record: refused, nothing installed.
    let mut damaged = bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x40;
    match run(damaged, same_msg()).await.expect("join") {
        Some(Reply::Error(e)) => assert!(e.contains("CRC"), "{e}"),
        other => panic!("a damaged snapshot was answered {other:?}"),
    }
    assert_eq!(generation(), "0");
    assert_eq!(local(&b_addr, "k1").await, None);

    // Cut short: the node drops the connection and keeps serving.
    let cut = bytes[..bytes.len() / 3].to_vec();
    assert!(run(cut, same_msg()).await.expect("join").is_none());
    assert_eq!(generation(), "0");
    assert!(matches!(
        call(&b_addr, &Msg::Leader, Duration::from_secs(5)).await,
        Ok(Reply::Leader(_))
    ));
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("b"))
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("incoming."))
        .collect();
    assert!(leftovers.is_empty(), "a cut transfer left {leftovers:?}");

    // Whole and intact: installed.
    match run(bytes.clone(), msg).await.expect("join") {
        Some(Reply::Snapshot(_)) => {}
        other => panic!("an intact snapshot was answered {other:?}"),
    }
    assert_eq!(generation(), "1");
    assert_eq!(local(&b_addr, "k1").await.as_deref(), Some("v1"));
    assert_eq!(local(&b_addr, "k499").await.as_deref(), Some("v499"));
    a.shutdown().await.expect("shutdown a");
    b.shutdown().await.expect("shutdown b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_interval_grows_with_the_state() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (n, addr) = single(&tmp.path().join("n"), 10).await;
    let snapshot = || n.raft.metrics().borrow_watched().snapshot;
    // 60 new keys: as many keys as entries since the last snapshot, so none is due (with a
    // fixed interval of 10 there would have been several).
    for i in 0..60 {
        put(&addr, &format!("k{i}"), "v").await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(snapshot(), None, "snapshot before entries outnumbered keys");
    // 80 overwrites of one key: the entries since the last snapshot now outnumber the keys.
    for i in 0..80 {
        put(&addr, "k0", &format!("v{i}")).await;
    }
    let end = Instant::now() + Duration::from_secs(10);
    while snapshot().is_none() {
        assert!(
            Instant::now() < end,
            "no snapshot once entries outnumbered keys"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_wire_closes_that_connection_and_nothing_else() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (n, addr) = single(&tmp.path().join("n"), 5000).await;
    put(&addr, "k", "v").await;
    // A snapshot announced as endless, of which a few bytes come before the end.
    let endless = Msg::Snapshot {
        vote: n.raft.metrics().borrow_watched().vote,
        meta: Default::default(),
        len: u64::MAX,
    };
    let endless = serde_json::to_vec(&endless).expect("json");
    let a = addr.clone();
    let closed = tokio::task::spawn_blocking(move || {
        let send = |bytes: &[u8]| {
            let mut s = std::net::TcpStream::connect(&a).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(bytes).expect("write");
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut rest = Vec::new();
            // The node answers nothing and closes: EOF (or a reset), never a reply.
            matches!(s.read_to_end(&mut rest), Ok(0) | Err(_)) && rest.is_empty()
        };
        let frame = |len: u32, body: &[u8]| {
            let mut b = len.to_le_bytes().to_vec();
            b.extend_from_slice(body);
            send(&b)
        };
        let whole = |body: &[u8]| frame(body.len() as u32, body);
        let mut then_bytes = endless.clone();
        then_bytes.splice(0..0, (endless.len() as u32).to_le_bytes());
        then_bytes.extend_from_slice(b"RCSNAP01 and then nothing");
        [
            // A length past the frame limit, before any body.
            frame(u32::MAX, b""),
            // A frame that is not JSON.
            whole(b"\xff\xfe not json"),
            // JSON, but no message.
            whole(b"{\"Nope\":1}"),
            // A frame cut short.
            frame(100, b"{\"Leader\""),
            // The endless snapshot.
            send(&then_bytes),
        ]
    })
    .await
    .expect("join");
    assert!(
        closed.iter().all(|&c| c),
        "a garbage frame got a reply: {closed:?}"
    );
    // The node still serves, with its data, and kept no partial snapshot.
    assert_eq!(local(&addr, "k").await.as_deref(), Some("v"));
    put(&addr, "k2", "v2").await;
    assert_eq!(local(&addr, "k2").await.as_deref(), Some("v2"));
    let incoming = std::fs::read_dir(tmp.path().join("n"))
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("incoming."))
        .count();
    assert_eq!(incoming, 0);
    n.shutdown().await.expect("shutdown");
}
