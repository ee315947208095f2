//! Real crashes: a child process writes durably (`SyncPolicy::Always`) from many tasks and
//! reports every acknowledged write; the parent kills it with SIGKILL at a random moment,
//! reopens the store and compares it with a model. Repeated over many kills in one directory,
//! odd rounds in `IoMode::Direct`, even ones buffered.
//!
//! Set `RINGCASK_CRASH_ROUNDS` for a longer campaign (default 12).

mod common;

use std::collections::BTreeMap;

use common::crash::{self, Reporter};
use common::{contents_under, Rng};
use ringcask::{Db, IoMode, Options, SyncPolicy, WriteBatch};

const TASKS: u64 = 8;
const KEYS_PER_TASK: u64 = 24;

#[derive(Debug, Clone)]
enum Step {
    Put(String, Vec<u8>),
    Delete(String),
    /// Put, put, delete — atomically.
    Batch(String, Vec<u8>, String, Vec<u8>, String),
}

fn key(round: u64, task: u64, j: u64) -> String {
    format!("r{round}-t{task}-k{}", j % KEYS_PER_TASK)
}

/// The i-th operation of `task` in `round`: a pure function, so the parent can replay it.
fn step(round: u64, task: u64, i: u64) -> Step {
    let mut r = Rng::new(round * 1_000_003 + task * 7_919 + i);
    let j = r.below(KEYS_PER_TASK);
    let len = r.below(600) as usize;
    let value = format!("{round}/{task}/{i}/").into_bytes();
    let mut v = value.clone();
    v.resize(value.len() + len, b'a' + (i % 26) as u8);
    match r.below(10) {
        0 | 1 => Step::Delete(key(round, task, j)),
        2 => Step::Batch(
            key(round, task, j),
            v.clone(),
            key(round, task, j + 1),
            v,
            key(round, task, j + 2),
        ),
        _ => Step::Put(key(round, task, j), v),
    }
}

fn apply(model: &mut BTreeMap<String, Vec<u8>>, s: &Step) {
    match s {
        Step::Put(k, v) => {
            model.insert(k.clone(), v.clone());
        }
        Step::Delete(k) => {
            model.remove(k);
        }
        Step::Batch(k1, v1, k2, v2, k3) => {
            model.insert(k1.clone(), v1.clone());
            model.insert(k2.clone(), v2.clone());
            model.remove(k3);
        }
    }
}

/// Odd rounds run in `IoMode::Direct`, even ones buffered (the reopen after a round uses the
/// round's mode too).
fn opts(round: u64) -> Options {
    let mode = if round % 2 == 1 {
        IoMode::Direct
    } else {
        IoMode::Buffered
    };
    Options::default()
        .io_mode(mode)
        .sync(SyncPolicy::Always)
        .hint_spill_bytes(256)
        .max_file_bytes(64 * 1024)
        .preallocate_bytes(32 * 1024)
}

const NAME: &str = "crash";
const TEST: &str = "sigkill_during_durable_writes_loses_nothing_acknowledged";

fn child(dir: &str, round: u64) {
    let rt = common::multi_thread_rt(2);
    rt.block_on(async {
        let db = Db::open(dir, opts(round)).await.expect("child open");
        let out = Reporter::default();
        out.ready();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let db = db.clone();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let res = match step(round, t, i) {
                        Step::Put(k, v) => db.put(k, v).await,
                        Step::Delete(k) => db.delete(k).await,
                        Step::Batch(k1, v1, k2, v2, k3) => {
                            db.write(WriteBatch::new().put(k1, v1).put(k2, v2).delete(k3))
                                .await
                        }
                    };
                    res.expect("child write");
                    out.ack(t, i);
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });
}

#[test]
fn sigkill_during_durable_writes_loses_nothing_acknowledged() {
    if let Some((dir, round)) = crash::child_role(NAME) {
        child(&dir, round);
        return;
    }
    let rounds: u64 = common::env_or("RINGCASK_CRASH_ROUNDS", 12);
    let tmp = tempfile::tempdir().expect("tmp");
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut rng = Rng::new(0xC0FFEE);
    let mut total_acks = 0u64;
    for round in 0..rounds {
        let killed = crash::kill_child(
            TEST,
            NAME,
            tmp.path(),
            round,
            TASKS as usize,
            20 + rng.below(300),
        );
        let acked = killed.acked;
        total_acks += acked.iter().sum::<u64>();
        common::run(async {
            let db = Db::open(tmp.path(), opts(round))
                .await
                .expect("reopen after kill");
            // Earlier rounds: exactly as verified before (nothing lost, nothing resurrected).
            for old in 0..round {
                let prefix = format!("r{old}-");
                let want: BTreeMap<_, _> = expected
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(
                    contents_under(&db, &prefix).await,
                    want,
                    "round {old} changed after round {round}"
                );
            }
            // This round: every acknowledged op applied; the one in flight per task may be.
            for t in 0..TASKS {
                let n = acked[t as usize];
                let (without, with) =
                    crash::acked_states(&BTreeMap::new(), n, |m, i| apply(m, &step(round, t, i)));
                let prefix = format!("r{round}-t{t}-");
                let got = contents_under(&db, &prefix).await;
                assert!(
                    got == without || got == with,
                    "round {round} task {t}: {n} acked ops; store does not match the model"
                );
                expected.extend(got);
            }
            assert_eq!(db.len(), expected.len(), "unexpected keys in the store");
            // Closed before the next child opens the store (a dropped handle would close in
            // the background, and another process gets `Locked` until it has).
            db.close().await.expect("close");
        });
    }
    assert!(
        total_acks > 100,
        "the children acknowledged only {total_acks} writes"
    );
}
