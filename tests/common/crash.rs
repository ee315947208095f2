//! The SIGKILL protocol shared by the crash tests: the test binary re-runs itself as a child
//! that works on a store and reports on stdout (`READY` once, `ACK <task> <op>` after each
//! acknowledged operation, `MARK <what>` at moments the parent wants to know about); the parent
//! kills it with SIGKILL at a random moment, then checks the reopened store against a model.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The child's side: lines on stdout, each flushed at once so that a kill loses none of them.
#[derive(Clone)]
pub struct Reporter(Arc<Mutex<std::io::Stdout>>);

impl Default for Reporter {
    fn default() -> Self {
        Reporter(Arc::new(Mutex::new(std::io::stdout())))
    }
}

impl Reporter {
    fn line(&self, line: std::fmt::Arguments<'_>) {
        let mut o = self.0.lock().expect("stdout");
        writeln!(o, "{line}").expect("write");
        o.flush().expect("flush");
    }

    /// The child is ready to be killed.
    pub fn ready(&self) {
        self.line(format_args!("READY"));
    }

    /// Operation `op` of `task` was acknowledged.
    pub fn ack(&self, task: u64, op: u64) {
        self.line(format_args!("ACK {task} {op}"));
    }

    /// A moment the parent wants to know about (the last mark before the kill is reported).
    pub fn mark(&self, what: &str) {
        self.line(format_args!("MARK {what}"));
    }
}

/// The environment variables that make a child of test `name`.
fn vars(name: &str) -> (String, String) {
    let n = name.to_uppercase();
    (
        format!("RINGCASK_{n}_CHILD_DIR"),
        format!("RINGCASK_{n}_ROUND"),
    )
}

/// If this process is a child of the crash test `name`: its store directory and round.
pub fn child_role(name: &str) -> Option<(String, u64)> {
    let (dir, round) = vars(name);
    let dir = std::env::var(dir).ok()?;
    let round = std::env::var(round).ok()?.parse().expect("round");
    Some((dir, round))
}

/// What the parent learnt from a killed child.
#[derive(Debug)]
pub struct Killed {
    /// Operations acknowledged per task.
    pub acked: Vec<u64>,
    /// The last `MARK` line before the kill.
    pub last_mark: Option<String>,
}

/// Re-runs this test binary as a child running only `test` (crash test `name`, on `dir`, in
/// `round`), waits until it is ready, lets it run `delay_ms`, kills it with SIGKILL and returns
/// what it reported for its `tasks` tasks.
pub fn kill_child(
    test: &str,
    name: &str,
    dir: &std::path::Path,
    round: u64,
    tasks: usize,
    delay_ms: u64,
) -> Killed {
    let (dir_var, round_var) = vars(name);
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(dir_var, dir)
        .env(round_var, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || read_reports(stdout, tasks, ready_tx));
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("child never became ready");
    std::thread::sleep(Duration::from_millis(delay_ms));
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    reader.join().expect("reader thread")
}

fn read_reports(
    stdout: std::process::ChildStdout,
    tasks: usize,
    ready: std::sync::mpsc::Sender<()>,
) -> Killed {
    let mut killed = Killed {
        acked: vec![0u64; tasks],
        last_mark: None,
    };
    let mut ready = Some(ready);
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        // The test harness prints "test <name> ... " without a newline before the first line.
        if line.ends_with("READY") {
            if let Some(tx) = ready.take() {
                let _ = tx.send(());
            }
        } else if let Some(what) = line.strip_prefix("MARK ") {
            killed.last_mark = Some(what.to_string());
        } else if let Some(rest) = line.strip_prefix("ACK ") {
            let mut it = rest.split(' ');
            let (Some(Ok(t)), Some(Ok(i))) = (
                it.next().map(str::parse::<usize>),
                it.next().map(str::parse::<u64>),
            ) else {
                continue; // a line cut by the kill
            };
            assert_eq!(killed.acked[t], i, "acks of one task arrive in order");
            killed.acked[t] = i + 1;
        }
    }
    killed
}

/// The states a task may have left after `n` acknowledged operations: `base` with operations
/// `0..n` applied, or with the one in flight (`n`) applied too.
pub fn acked_states<M: Clone>(base: &M, n: u64, apply: impl Fn(&mut M, u64)) -> (M, M) {
    let mut without = base.clone();
    for i in 0..n {
        apply(&mut without, i);
    }
    let mut with = without.clone();
    apply(&mut with, n);
    (without, with)
}
