//! Three `ringcask-node` processes on 127.0.0.1: clients write through the leader while a
//! node is SIGKILLed and restarted on the same directory and port; after each round every
//! acknowledged write is readable on every node and no deleted key is back. Rounds cycle
//! through four kinds: kill the leader; kill a follower; kill a follower while it receives a
//! snapshot; kill the leader while it sends one. Rounds: `RINGCASK_RAFT_KILL_ROUNDS` (4 by
//! default). The cluster is made, and checked once, with the `ringcask-node` client commands.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringcask_raft::node::{call, client_write, Msg, Reply};
use ringcask_raft::Request;

struct NodeProc {
    id: u64,
    dir: PathBuf,
    addr: String,
    child: Option<Child>,
    /// The log lines of the current process.
    lines: Arc<Mutex<Vec<String>>>,
}

impl NodeProc {
    fn start(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringcask-node"))
            .args([
                "serve",
                "--id",
                &self.id.to_string(),
                "--addr",
                &self.addr,
                "--snapshot-logs",
                "200",
                // Slow enough that a snapshot transfer can be killed mid-way.
                "--snapshot-rate",
                "2048",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .env("RUST_LOG", "warn,ringcask_raft=info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn ringcask-node");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log_path = self.dir.with_extension("log");
        let lines = Arc::new(Mutex::new(Vec::new()));
        self.lines = lines.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_path)
                .ok();
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                lines.lock().expect("lines").push(line.clone());
                if line.starts_with("listening on") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("node did not start");
        self.child = Some(child);
    }

    /// Whether the current process has logged a line containing `what`.
    fn logged(&self, what: &str) -> bool {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.contains(what))
    }

    /// Waits up to `timeout` for the current process to log `what`.
    fn wait_logged(&self, what: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.logged(what) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// What clients know: acknowledged values (`None`: deleted), each writer's write in flight,
/// and writes never acknowledged (they may have been applied, now or later).
#[derive(Default)]
struct Model {
    acked: HashMap<String, Option<String>>,
    in_flight: HashMap<usize, (String, Option<String>)>,
    maybe: HashMap<String, Vec<Option<String>>>,
}

async fn writer(
    addrs: Vec<String>,
    w: usize,
    round: u64,
    model: Arc<Mutex<Model>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    // Values never repeat across rounds.
    let mut i = round * 1_000_000;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        i += 1;
        let key = format!("w{w}:{}", i % 40);
        let (req, value) = if i.is_multiple_of(7) {
            (Request::Delete { key: key.clone() }, None)
        } else {
            let v = format!("{w}-{i}");
            (
                Request::Set {
                    key: key.clone(),
                    value: v.clone(),
                },
                Some(v),
            )
        };
        model
            .lock()
            .expect("lock")
            .in_flight
            .insert(w, (key.clone(), value.clone()));
        match client_write(&addrs, req, Duration::from_secs(20)).await {
            Ok(_) => {
                let mut m = model.lock().expect("lock");
                m.in_flight.remove(&w);
                m.acked.insert(key, value);
            }
            // Not acknowledged: it may or may not have been applied.
            Err(_) => {
                let mut m = model.lock().expect("lock");
                if let Some((k, v)) = m.in_flight.remove(&w) {
                    m.maybe.entry(k).or_default().push(v);
                }
                return;
            }
        }
    }
}

/// Waits until `node` serves `key` as one of `allowed`.
async fn converges(addr: &str, key: &str, allowed: &[Option<String>], round: usize) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let got = call(
            addr,
            &Msg::ReadLocal(key.to_string()),
            Duration::from_secs(2),
        )
        .await;
        if let Ok(Reply::Value(v)) = &got {
            if allowed.contains(v) {
                return;
            }
        }
        assert!(
            Instant::now() < end,
            "round {round}: {addr} has {key} = {got:?}, want one of {allowed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn leader(nodes: &[NodeProc]) -> Option<u64> {
    for n in nodes.iter().filter(|n| n.child.is_some()) {
        if let Ok(Reply::Leader(Some(l))) =
            call(&n.addr, &Msg::Leader, Duration::from_secs(1)).await
        {
            return Some(l);
        }
    }
    None
}

/// Runs a `ringcask-node` client command; its exit code and stdout.
fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringcask-node"))
        .args(args)
        .output()
        .expect("run ringcask-node");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

fn dirs(root: &Path) -> Vec<PathBuf> {
    (1..=3).map(|i| root.join(format!("n{i}"))).collect()
}

#[test]
fn acknowledged_writes_survive_sigkill_of_leaders_and_followers() {
    let rounds: usize = std::env::var("RINGCASK_RAFT_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().to_path_buf();
    // RINGCASK_RAFT_KEEP=1 keeps the nodes' directories and logs (RUST_LOG) for a look after.
    let _cleanup = if std::env::var("RINGCASK_RAFT_KEEP").is_ok() {
        eprintln!("node directories in {}", tmp.keep().display());
        None
    } else {
        Some(tmp)
    };
    let mut nodes: Vec<NodeProc> = dirs(&root)
        .into_iter()
        .enumerate()
        .map(|(i, dir)| NodeProc {
            id: i as u64 + 1,
            dir,
            addr: format!("127.0.0.1:{}", free_port()),
            child: None,
            lines: Arc::default(),
        })
        .collect();
    for n in &mut nodes {
        n.start();
    }
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    // The cluster is made and checked with the command-line client.
    let members: Vec<String> = nodes
        .iter()
        .map(|n| format!("--node={}={}", n.id, n.addr))
        .collect();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let mut args = vec!["init"];
        args.extend(members.iter().map(String::as_str));
        let (code, out) = cli(&args);
        if code == 0 {
            assert_eq!(out, "OK");
            break;
        }
        assert!(Instant::now() < end, "init: {code} {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let cluster = format!("--cluster={}", addrs.join(","));
    let c = cluster.as_str();
    assert_eq!(cli(&["put", c, "cli", "one"]), (0, "OK".into()));
    assert_eq!(cli(&["get", c, "cli"]), (0, "one".into()));
    assert_eq!(
        cli(&["cas", c, "cli", "--expected", "two", "--new", "three"]),
        (3, "MISMATCH one".into())
    );
    assert_eq!(
        cli(&["cas", c, "cli", "--expected", "one", "--new", "two"]),
        (0, "OK".into())
    );
    assert_eq!(cli(&["del", c, "cli"]), (0, "1".into()));
    assert_eq!(cli(&["get", c, "cli"]), (0, "(nil)".into()));
    assert_eq!(cli(&["cas", c, "cli", "--new", "four"]), (0, "OK".into()));
    let (code, leader_id) = cli(&["leader", c]);
    assert_eq!(code, 0);
    assert!(leader_id.parse::<u64>().is_ok_and(|l| (1..=3).contains(&l)));
    let model = Arc::new(Mutex::new(Model::default()));
    for round in 0..rounds {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                rt.spawn(writer(
                    addrs.clone(),
                    w,
                    round as u64,
                    model.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700));
        let leader = rt.block_on(leader(&nodes)).expect("a leader");
        let follower = nodes
            .iter()
            .map(|n| n.id)
            .find(|&id| id != leader)
            .expect("a follower");
        let (l, f) = (leader as usize - 1, follower as usize - 1);
        match round % 4 {
            0 | 1 => {
                let victim = if round % 4 == 0 { l } else { f };
                nodes[victim].kill();
                // The cluster keeps taking writes with two nodes.
                std::thread::sleep(Duration::from_millis(1500));
                nodes[victim].start();
            }
            kind => {
                // Keep the follower down until the leader has purged the log it lacks, so
                // that it restarts into a snapshot transfer (paced by --snapshot-rate).
                let mut receiving = false;
                for attempt in 1..=5 {
                    nodes[f].kill();
                    std::thread::sleep(Duration::from_millis(1500 * attempt));
                    nodes[f].start();
                    if nodes[f].wait_logged("receiving snapshot", Duration::from_secs(5)) {
                        receiving = true;
                        break;
                    }
                }
                assert!(receiving, "round {round}: no snapshot transfer started");
                let victim = if kind == 2 { f } else { l };
                if kind == 3 {
                    assert!(
                        nodes[l].wait_logged("sending snapshot", Duration::from_secs(5)),
                        "round {round}: the leader did not log its snapshot transfer"
                    );
                }
                nodes[victim].kill();
                assert!(
                    !nodes[f].logged("installed snapshot"),
                    "round {round}: the transfer ended before the kill"
                );
                std::thread::sleep(Duration::from_millis(1000));
                nodes[victim].start();
                // The follower gets its snapshot whole now, from whichever node leads.
                assert!(
                    nodes[f].wait_logged("installed snapshot", Duration::from_secs(30)),
                    "round {round}: node {follower} never installed a snapshot"
                );
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        rt.block_on(async {
            for w in writers {
                w.await.expect("writer");
            }
        });
        let mut m = model.lock().expect("lock");
        assert!(!m.acked.is_empty(), "round {round}: nothing acknowledged");
        // Writers stopped between writes: nothing is in flight now.
        let left: Vec<_> = m.in_flight.drain().map(|(_, kv)| kv).collect();
        for (k, v) in left {
            m.maybe.entry(k).or_default().push(v);
        }
        rt.block_on(async {
            for (key, value) in &m.acked {
                let mut allowed = vec![value.clone()];
                allowed.extend(m.maybe.get(key).into_iter().flatten().cloned());
                for addr in &addrs {
                    converges(addr, key, &allowed, round).await;
                }
            }
        });
    }
    // Snapshots were built (every 200 entries) and purged the log behind them; a restarted
    // node that fell behind the purge point was brought up by a snapshot install.
    let built = nodes
        .iter()
        .filter(|n| n.dir.join("sm").join("snapshot").exists())
        .count();
    let installs: Vec<String> = nodes
        .iter()
        .map(|n| std::fs::read_to_string(n.dir.join("sm").join("CURRENT")).unwrap_or_default())
        .collect();
    eprintln!("snapshots built on {built} node(s); store generations {installs:?}");
    assert!(built > 0, "no snapshot was built");
    // SIGTERM: each node stops Raft and closes its stores, and exits 0.
    for n in &mut nodes {
        let mut child = n.child.take().expect("running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        let end = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < end, "node {} ignored SIGTERM", n.id);
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "node {} exited with {status}", n.id);
        // The log reader thread may still be reading the last lines.
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !n.logged("dropped without close"),
            "node {} did not close its stores",
            n.id
        );
    }
}
