//! The `ringcask` binary driven by the real `redis-cli` and `redis-benchmark` (Debian's
//! redis-tools; CI installs them, a missing one fails the test), killed with SIGKILL under
//! load and restarted, stopped with SIGTERM, and its command-line tools.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{spawn_server, tool, ServerProcess};

fn cli(srv: &ServerProcess, args: &[&str]) -> String {
    let out = tool("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &srv.addr.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

fn signal(srv: &ServerProcess, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &srv.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

fn wait_exit(srv: &mut ServerProcess) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(status) = srv.child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "server did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn redis_cli_drives_the_server() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut srv = spawn_server(tmp.path(), &[]);
    assert_eq!(cli(&srv, &["PING"]), "PONG");
    assert_eq!(cli(&srv, &["SET", "greeting", "hello world"]), "OK");
    assert_eq!(cli(&srv, &["GET", "greeting"]), "hello world");
    assert_eq!(cli(&srv, &["INCRBY", "n", "5"]), "5");
    assert_eq!(cli(&srv, &["MSET", "a", "1", "b", "2"]), "OK");
    // The nil of "zz" prints as an empty last line (trimmed).
    assert_eq!(cli(&srv, &["MGET", "a", "b", "zz"]), "1\n2");
    assert_eq!(cli(&srv, &["EXPIRE", "a", "100"]), "1");
    assert_eq!(cli(&srv, &["TTL", "a"]), "100");
    assert_eq!(cli(&srv, &["DBSIZE"]), "4");
    let mut keys: Vec<String> = cli(&srv, &["--scan"]).lines().map(String::from).collect();
    keys.sort();
    assert_eq!(keys, ["a", "b", "greeting", "n"]);
    assert_eq!(cli(&srv, &["--scan", "--pattern", "gr*"]), "greeting");
    assert!(cli(&srv, &["INFO", "server"]).contains("redis_version:"));
    assert!(cli(&srv, &["COMMAND", "DOCS", "incr"]).contains("integer value"));
    assert!(cli(&srv, &["NOSUCHCMD"]).contains("unknown command"));
    // Commands piped into an interactive-style session, binary-safe with escapes.
    let mut child = tool("redis-cli")
        .args(["-p", &srv.addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"SET bin \"a\\x00b\"\nSTRLEN bin\nGETDEL bin\nEXISTS bin\n")
            .expect("w");
    }
    let out = child.wait_with_output().expect("wait");
    // Not a terminal: redis-cli prints raw bytes, the NUL included.
    assert_eq!(out.stdout, b"OK\n3\na\0b\n0\n");
    // SHUTDOWN closes the store and ends the process cleanly.
    let _ = tool("redis-cli")
        .args(["-p", &srv.addr.port().to_string(), "SHUTDOWN"])
        .output();
    assert!(wait_exit(&mut srv).success());
}

fn benchmark(srv: &ServerProcess, extra: &[&str]) -> Output {
    let out = tool("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &srv.addr.port().to_string()])
        .args([
            "-t",
            "set,get,incr,mset",
            "-r",
            "1000",
            "-d",
            "100",
            "-c",
            "20",
            "--csv",
        ])
        .args(extra)
        .output()
        .expect("redis-benchmark");
    assert!(out.status.success(), "redis-benchmark: {out:?}");
    out
}

#[test]
fn redis_benchmark_runs_every_test_without_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut srv = spawn_server(tmp.path(), &[]);
    for extra in [&["-n", "3000"][..], &["-n", "20000", "-P", "16"][..]] {
        let out = benchmark(&srv, extra);
        let csv = String::from_utf8_lossy(&out.stdout);
        for test in ["SET", "GET", "INCR", "MSET (10 keys)"] {
            let row = csv
                .lines()
                .find(|l| l.starts_with(&format!("\"{test}\"")))
                .unwrap_or_else(|| panic!("no {test} row in {csv}"));
            let rps: f64 = row
                .split(',')
                .nth(1)
                .expect("rps")
                .trim_matches('"')
                .parse()
                .expect("f64");
            assert!(rps > 0.0, "{row}");
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("ERR"), "{err}");
    }
    let n: u64 = cli(&srv, &["DBSIZE"]).parse().expect("dbsize");
    assert!(n > 100, "{n} keys after the benchmark");
    signal(&srv, "-TERM");
    assert!(wait_exit(&mut srv).success());
}

#[test]
fn sigterm_closes_the_store_cleanly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut srv = spawn_server(tmp.path(), &["--sync", "never"]);
    for i in 0..100 {
        assert_eq!(
            cli(&srv, &["SET", &format!("k{i}"), &format!("v{i}")]),
            "OK"
        );
    }
    signal(&srv, "-TERM");
    assert!(wait_exit(&mut srv).success());
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let db = ringcask::Db::open(tmp.path(), ringcask::Options::default())
            .await
            .expect("open");
        assert_eq!(db.len(), 100);
        assert!(
            db.stats().recovery.from_snapshot,
            "closed cleanly: keydir snapshot written"
        );
        db.close().await.expect("close");
    });
}

/// What the writers know: every SET acknowledged, and each writer's SET in flight (sent, not
/// acknowledged: after a kill it may or may not have landed).
#[derive(Default)]
struct Acks {
    acked: HashMap<String, String>,
    in_flight: HashMap<usize, (String, String)>,
}

/// A writer that records every SET the server acknowledged, until the server dies.
async fn acked_writer(addr: std::net::SocketAddr, w: usize, acks: Arc<Mutex<Acks>>) {
    let Ok(client) = redis::Client::open(format!("redis://{addr}/")) else {
        return;
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return;
    };
    for i in 0.. {
        let (k, v) = (format!("w{w}:{}", i % 500), format!("{w}-{i}"));
        acks.lock()
            .expect("lock")
            .in_flight
            .insert(w, (k.clone(), v.clone()));
        let r: redis::RedisResult<()> = redis::cmd("SET").arg(&k).arg(&v).query_async(&mut c).await;
        if r.is_err() {
            return;
        }
        let mut a = acks.lock().expect("lock");
        a.in_flight.remove(&w);
        a.acked.insert(k, v);
    }
}

/// Checks every key the writers touched against what they know, and returns the values found
/// (the model for the next round).
async fn check_acked(
    c: &mut redis::aio::MultiplexedConnection,
    model: &HashMap<String, String>,
    in_flight: &HashMap<String, String>,
    round: usize,
) -> HashMap<String, String> {
    let mut found = HashMap::new();
    for (k, v) in model {
        let got: Option<String> = redis::cmd("GET").arg(k).query_async(c).await.expect("get");
        let ok = got.as_ref() == Some(v) || got.is_some() && got.as_ref() == in_flight.get(k);
        assert!(ok, "round {round}: {k} is {got:?}, acknowledged {v:?}");
        found.insert(k.clone(), got.unwrap_or_default());
    }
    found
}

#[test]
fn sigkill_under_redis_benchmark_load_loses_no_acknowledged_set() {
    let rounds: usize = std::env::var("RINGCASK_SERVER_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let tmp = tempfile::tempdir().expect("tmp");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    // Each key's newest acknowledged value, and the unacknowledged SETs that may have landed.
    let mut model: HashMap<String, String> = HashMap::new();
    let mut in_flight: HashMap<String, String> = HashMap::new();
    for round in 0..=rounds {
        let mut srv = spawn_server(tmp.path(), &["--sync", "always"]);
        model = rt.block_on(async {
            let client = redis::Client::open(format!("redis://{}/", srv.addr)).expect("client");
            let mut c = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            check_acked(&mut c, &model, &in_flight, round).await
        });
        if round == rounds {
            signal(&srv, "-TERM");
            assert!(wait_exit(&mut srv).success());
            break;
        }
        let mut bench = tool("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &srv.addr.port().to_string()])
            .args([
                "-t", "set", "-n", "10000000", "-r", "100000", "-d", "100", "-c", "16", "-P", "4",
                "-q",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-benchmark");
        let acks = Arc::new(Mutex::new(Acks::default()));
        let writers: Vec<_> = (0..4)
            .map(|w| rt.spawn(acked_writer(srv.addr, w, acks.clone())))
            .collect();
        std::thread::sleep(Duration::from_millis(400 + 200 * round as u64));
        srv.child.kill().expect("SIGKILL");
        let _ = srv.child.wait();
        rt.block_on(async {
            for w in writers {
                let _ = w.await;
            }
        });
        let _ = bench.kill();
        let _ = bench.wait();
        let acks = std::mem::take(&mut *acks.lock().expect("lock"));
        assert!(
            !acks.acked.is_empty(),
            "round {round}: nothing acknowledged before the kill"
        );
        in_flight = acks.in_flight.into_values().collect();
        // A key only in flight has no acknowledged value to keep; it may be absent.
        model.extend(acks.acked);
    }
}

fn ringcask(args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcask"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ringcask");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(data) = stdin {
        input.write_all(data).expect("stdin");
    }
    drop(input);
    child.wait_with_output().expect("wait")
}

#[test]
fn command_line_tools_put_get_dump_load_and_checkpoint() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("db");
    let d = dir.to_str().expect("utf8");
    for (k, v) in [("a", "1"), ("b", "two"), ("pre:x", "3")] {
        assert!(ringcask(&["put", d, k, v], None).status.success());
    }
    assert!(ringcask(&["put", d, "t", "x", "--ttl", "1000"], None)
        .status
        .success());
    assert!(ringcask(&["del", d, "a"], None).status.success());
    let got = ringcask(&["get", d, "b"], None);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "two\n");
    assert_eq!(
        ringcask(&["get", d, "a"], None).status.code(),
        Some(1),
        "absent: exit 1"
    );
    let keys = ringcask(&["keys", d, "pre:"], None);
    assert_eq!(String::from_utf8_lossy(&keys.stdout), "pre:x\n");
    let stats = ringcask(&["stats", d], None);
    assert!(
        String::from_utf8_lossy(&stats.stdout).contains("keys: 3"),
        "{stats:?}"
    );
    assert!(ringcask(&["merge", d], None).status.success());
    let dump = ringcask(&["dump", d], None);
    assert!(dump.status.success(), "{dump:?}");
    assert_eq!(dump.stdout.iter().filter(|&&b| b == b'\n').count(), 3);
    let copy = tmp.path().join("copy");
    let c = copy.to_str().expect("utf8");
    let load = ringcask(&["load", c], Some(&dump.stdout));
    assert!(load.status.success(), "{load:?}");
    assert_eq!(
        String::from_utf8_lossy(&ringcask(&["get", c, "pre:x"], None).stdout),
        "3\n"
    );
    let again = ringcask(&["dump", c], None);
    let mut a: Vec<&[u8]> = dump.stdout.split(|&b| b == b'\n').collect();
    let mut b: Vec<&[u8]> = again.stdout.split(|&b| b == b'\n').collect();
    // The ttl_ms field counts down; compare lines without it.
    let strip = |l: &&[u8]| {
        String::from_utf8_lossy(l)
            .split(",\"ttl_ms\"")
            .next()
            .unwrap_or("")
            .to_string()
    };
    a.sort();
    b.sort();
    assert_eq!(
        a.iter().map(strip).collect::<Vec<_>>(),
        b.iter().map(strip).collect::<Vec<_>>()
    );
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("ttl_ms"),
        "the expiry survives"
    );
    let bad = ringcask(&["load", c], Some(b"{\"key\":\"!!\",\"value\":\"\"}\n"));
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("line 1"),
        "{bad:?}"
    );
    let cp = tmp.path().join("cp");
    let out = ringcask(&["checkpoint", d, cp.to_str().expect("utf8")], None);
    assert!(out.status.success(), "{out:?}");
    let got = ringcask(&["get", cp.to_str().expect("utf8"), "b"], None);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "two\n");
    let exists = ringcask(&["checkpoint", d, cp.to_str().expect("utf8")], None);
    assert_eq!(
        exists.status.code(),
        Some(2),
        "an existing destination is an error"
    );
}

#[test]
fn sigterm_stops_the_server_even_when_its_log_pipe_is_gone() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().expect("tmp");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcask"))
        .arg("serve")
        .arg("--dir")
        .arg(tmp.path())
        .args(["--bind", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = loop {
        let line = lines.next().expect("a log line").expect("utf8");
        if let Some(at) = line.find("ready to accept connections on ") {
            break line[at + 31..].trim().to_string();
        }
    };
    // The reader goes away: every later log line meets a broken pipe.
    drop(lines);
    let port = addr.rsplit(':').next().expect("port").to_string();
    let set = tool("redis-cli")
        .args(["-p", &port, "SET", "k", "v"])
        .output()
        .expect("cli");
    assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), "OK");
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("SIGTERM did not stop a server whose log pipe is gone");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
