//! Replicated durable writes on a 3-node cluster in this process (each node its own stores and
//! TCP port on 127.0.0.1) with 1, 32 and 128 concurrent clients, beside single-node
//! `SyncPolicy::Always` puts of the same size; then the time for a new node to catch up (by
//! snapshot) with KEYS keys. Prints a markdown table.
//!
//! `cargo run --release -p ringcask-raft --example bench` (SECS=5 per row, KEYS=1000000,
//! VALUE=100 bytes; DIR=/var/tmp/... for the stores, a temporary directory by default;
//! RUST_LOG=ringcask_raft=info logs the snapshot's transfer and install to stderr).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::BasicNode;
use ringcask::{Db, Options, SyncPolicy};
use ringcask_raft::node::{call, Client, Msg, Node, Reply};
use ringcask_raft::Request;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

struct Row {
    what: String,
    clients: usize,
    ops: u64,
    secs: f64,
    lat_us: Vec<u64>,
}

impl Row {
    fn print(&mut self) {
        self.lat_us.sort_unstable();
        let pct = |p: f64| {
            let i =
                ((self.lat_us.len() as f64 * p) as usize).min(self.lat_us.len().saturating_sub(1));
            self.lat_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
        };
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} |",
            self.what,
            self.clients,
            self.ops as f64 / self.secs,
            pct(0.5),
            pct(0.99)
        );
    }
}

async fn start_node(id: u64, root: &std::path::Path) -> (Node, String) {
    let listener = ringcask_raft::node::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let node = Node::start_with(
        id,
        &root.join(format!("n{id}")),
        Node::config(5000),
        Default::default(),
    )
    .await
    .expect("node");
    tokio::spawn(node.clone().serve(listener));
    (node, addr)
}

/// `clients` tasks writing for `secs`; latencies of every write.
async fn replicated(addrs: &[String], clients: usize, secs: u64, value: &str) -> Row {
    let end = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (addrs, value) = (addrs.to_vec(), value.to_string());
            tokio::spawn(async move {
                let mut client = Client::new(addrs);
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < end {
                    let req = Request::Set {
                        key: format!("c{c}:{}", i % 10_000),
                        value: value.clone(),
                    };
                    let t = Instant::now();
                    client
                        .write(req, Duration::from_secs(20))
                        .await
                        .expect("write");
                    lat.push(t.elapsed().as_micros() as u64);
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let t0 = Instant::now();
    let mut lat_us = Vec::new();
    for t in tasks {
        lat_us.extend(t.await.expect("task"));
    }
    Row {
        what: "3-node replicated write".into(),
        clients,
        ops: lat_us.len() as u64,
        secs: t0.elapsed().as_secs_f64(),
        lat_us,
    }
}

async fn single(db: &Db, clients: usize, secs: u64, value: &str) -> Row {
    let end = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (db, value) = (db.clone(), value.to_string());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < end {
                    let t = Instant::now();
                    db.put(format!("c{c}:{}", i % 10_000), &value)
                        .await
                        .expect("put");
                    lat.push(t.elapsed().as_micros() as u64);
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let t0 = Instant::now();
    let mut lat_us = Vec::new();
    for t in tasks {
        lat_us.extend(t.await.expect("task"));
    }
    Row {
        what: "single node, SyncPolicy::Always".into(),
        clients,
        ops: lat_us.len() as u64,
        secs: t0.elapsed().as_secs_f64(),
        lat_us,
    }
}

/// The node that is leader by its own metrics (waits for one).
async fn leader_of(nodes: &[(Node, String)]) -> &Node {
    loop {
        for (n, _) in nodes {
            if n.raft.metrics().borrow_watched().current_leader == Some(n.id) {
                return n;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `kB` field of /proc/self/status (0 where unreadable).
fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    // RUST_LOG=ringcask_raft=info shows the snapshot transfer and install times.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let secs: u64 = env("SECS", 5);
    let keys: u64 = env("KEYS", 1_000_000);
    let value = "v".repeat(env("VALUE", 100));
    let tmp = tempfile::tempdir().expect("tmp");
    let root = std::env::var("DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let mut nodes = Vec::new();
        for id in 1..=3 {
            nodes.push(start_node(id, &root).await);
        }
        let addrs: Vec<String> = nodes.iter().map(|(_, a)| a.clone()).collect();
        let members: BTreeMap<u64, String> = (1..=3).zip(addrs.iter().cloned()).collect();
        match call(&addrs[0], &Msg::Init(members), Duration::from_secs(10)).await {
            Ok(Reply::Done) => {}
            other => panic!("init: {other:?}"),
        }
        println!("| what | clients | writes/s | p50 ms | p99 ms |\n|---|---|---|---|---|");
        let db = Db::open(root.join("single"), Options::default().sync(SyncPolicy::Always)).await.expect("open");
        for clients in [1, 32, 128] {
            replicated(&addrs, clients, secs, &value).await.print();
            single(&db, clients, secs, &value).await.print();
        }
        db.close().await.expect("close");

        // Load KEYS keys, then add a fourth node and time its catch-up.
        let term_before = nodes[0].0.raft.metrics().borrow_watched().current_term;
        let t0 = Instant::now();
        let per = keys.div_ceil(128);
        let tasks: Vec<_> = (0..128u64)
            .map(|c| {
                let (addrs, value) = (addrs.clone(), value.clone());
                tokio::spawn(async move {
                    let mut client = Client::new(addrs);
                    for i in c * per..((c + 1) * per).min(keys) {
                        let req = Request::Set { key: format!("key{i:09}"), value: value.clone() };
                        client.write(req, Duration::from_secs(30)).await.expect("load");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("load task");
        }
        let load = t0.elapsed();
        let term = nodes[0].0.raft.metrics().borrow_watched().current_term;
        println!(
            "\nloaded {keys} keys ({} B values) through 128 clients in {:.1} s ({:.0} writes/s); term {term_before} -> {term}",
            value.len(),
            load.as_secs_f64(),
            keys as f64 / load.as_secs_f64(),
        );
        let leader = leader_of(&nodes).await;
        let leader_id = leader.id;
        // A snapshot of everything, and the log behind it purged: the new node must catch up
        // by snapshot (the node's own policy snapshots once entries outnumber keys).
        let t_snap = Instant::now();
        let applied = leader.raft.metrics().borrow_watched().last_applied.expect("applied");
        leader.raft.trigger().snapshot().await.expect("snapshot");
        loop {
            let snap = leader.raft.metrics().borrow_watched().snapshot;
            if snap.is_some_and(|s| s.index >= applied.index) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let snap_secs = t_snap.elapsed().as_secs_f64();
        leader.raft.trigger().purge_log(applied.index).await.expect("purge");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (learner, learner_addr) = start_node(4, &root).await;
        // Peak memory while the new node catches up (the 3 old nodes are in this process too).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let rss_before = proc_status_kib("VmRSS");
        let t1 = Instant::now();
        // Retried through whichever node leads (a leader may have changed meanwhile).
        for attempt in 0.. {
            let leader = leader_of(&nodes).await;
            match leader.raft.add_learner(4, BasicNode { addr: learner_addr.clone() }, true).await {
                Ok(_) => break,
                Err(e) if attempt < 5 => eprintln!("add learner: {e}; retrying"),
                Err(e) => panic!("add learner: {e}"),
            }
        }
        let catch_up = t1.elapsed();
        let peak = proc_status_kib("VmHWM");
        let learner_addr2 = learner_addr;
        let last_key = format!("key{:09}", keys - 1);
        let on_learner = call(&learner_addr2, &Msg::ReadLocal(last_key), Duration::from_secs(5)).await;
        drop(learner);
        let snapshot_bytes = std::fs::metadata(root.join(format!("n{leader_id}/sm/snapshot")))
            .map_or(0, |m| m.len());
        println!(
            "a snapshot of it ({:.1} MB) built in {snap_secs:.2} s; a new node caught up by snapshot \
             in {:.2} s (its last key: {:?}); process RSS {:.0} MB before the catch-up, peak {:.0} MB during it",
            snapshot_bytes as f64 / 1e6,
            catch_up.as_secs_f64(),
            on_learner,
            rss_before as f64 / 1024.0,
            peak as f64 / 1024.0,
        );
    });
}
