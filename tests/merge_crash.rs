//! Crash atomicity of merges.
//!
//! 1. A fault-injecting IO layer "crashes" the process after the N-th IO operation of a merge,
//!    for every N from 0 until the merge completes; each time the store is reopened and must
//!    hold exactly the state from before the merge (no lost key, no resurrected key).
//! 2. A child process runs merges while writing durably; the parent kills it with SIGKILL at
//!    random moments and checks every acknowledged write against a model.
//!
//! Both run in `IoMode::Buffered` and `IoMode::Direct` in turn.
//!
//! `RINGCASK_MERGE_KILLS` sets the number of kills (default 10); `RINGCASK_MERGE_CRASH_OPS` the
//! number of writes that build the store of the crash-at-every-IO campaign (default 1000; larger
//! stores mean more files, more outputs and more IO operations to crash at).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::crash::{self, Reporter};
use common::{contents, contents_under, copy_dir, run, Rng};
use ringcask::testing::FaultInjector;
use ringcask::{Db, IoMode, Options, SyncPolicy, WriteBatch};

fn opts() -> Options {
    Options::default()
        .sync(SyncPolicy::Never)
        .hint_spill_bytes(256)
        .max_file_bytes(8 * 1024)
        .preallocate_bytes(0)
        .auto_merge(false)
        .merge_bytes_per_sec(0)
}

/// Every other pair of crash points, and odd kill rounds, run in `IoMode::Direct`.
fn mode(n: u64) -> IoMode {
    if (n / 2) % 2 == 1 {
        IoMode::Direct
    } else {
        IoMode::Buffered
    }
}

/// A store with live values, overwrites, deletes (tombstones a full merge drops), expired
/// entries and a batch, spread over several sealed files.
fn build_store(dir: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    run(async {
        let db = Db::open(dir, opts()).await.expect("open");
        let mut rng = Rng::new(99);
        let ops: u32 = common::env_or("RINGCASK_MERGE_CRASH_OPS", 1000);
        for i in 0..ops {
            let k = format!("k{}", rng.below(120));
            match rng.below(8) {
                0 => db.delete(k).await.expect("delete"),
                1 => db
                    .put_with_ttl(k, "gone", Duration::ZERO)
                    .await
                    .expect("ttl"),
                2 => db
                    .write(
                        WriteBatch::new()
                            .put(k, format!("b{i}"))
                            .delete(format!("k{}", i % 7)),
                    )
                    .await
                    .expect("batch"),
                _ => db
                    .put(k, vec![i as u8; (i % 150) as usize])
                    .await
                    .expect("put"),
            }
        }
        let want = contents(&db).await;
        db.close().await.expect("close");
        want
    })
}

#[test]
fn a_crash_at_every_io_of_a_merge_opens_to_the_same_state() {
    crash_at_every_io(false);
}

/// The same with a power cut after the crash: what the merge wrote but did not sync, and the
/// directory changes it did not sync, are lost; the last unsynced write is torn.
#[test]
fn a_power_cut_at_every_io_of_a_merge_opens_to_the_same_state() {
    crash_at_every_io(true);
}

// long: one loop over crash points with its checks; the checks are the scenario.
fn crash_at_every_io(power: bool) {
    let pristine = tempfile::tempdir().expect("tmp");
    let want = build_store(pristine.path());
    assert!(want.len() > 50);
    let mut completed_at = None;
    let mut outcomes = (0, 0);
    for n in 0..10_000u64 {
        let tmp = tempfile::tempdir().expect("tmp");
        copy_dir(pristine.path(), tmp.path());
        let fault = if power {
            FaultInjector::power_loss(tmp.path(), n + 1).expect("injector")
        } else {
            FaultInjector::new()
        };
        let crashed = run(async {
            let o = opts().io_mode(mode(n)).fault_injector(fault.clone());
            let db = Db::open(tmp.path(), o).await.expect("open");
            fault.tear_writes(n % 2 == 1);
            fault.crash_after(n);
            let res = db.merge().await;
            let crashed = fault.has_crashed();
            if !crashed {
                let r = res.expect("a merge without a fault succeeds");
                assert!(!r.inputs.is_empty());
            }
            common::shut(db).await;
            crashed
        });
        if power {
            fault.cut_power().expect("cut");
        }
        // Read-only first: the same contents, finished in memory, and no byte changed.
        let on_disk = common::dir_state(tmp.path());
        run(async {
            let db = Db::open_read_only(tmp.path(), opts().io_mode(mode(n)))
                .await
                .expect("read-only open after the crash");
            assert!(
                contents(&db).await == want,
                "read-only: crash after {n} IO operations of a merge"
            );
            db.close().await.expect("close");
        });
        assert!(
            common::dir_state(tmp.path()) == on_disk,
            "a read-only open after crash {n} changed the directory"
        );
        run(async {
            let db = Db::open(tmp.path(), opts().io_mode(mode(n)))
                .await
                .expect("reopen after the crash");
            assert_eq!(
                contents(&db).await,
                want,
                "crash after {n} IO operations of a merge"
            );
            let r = db.stats().recovery;
            if r.merge_finished {
                outcomes.1 += 1;
            } else {
                outcomes.0 += 1;
            }
            // A second merge on the recovered store works and keeps the contents.
            db.merge().await.expect("merge after recovery");
            assert_eq!(contents(&db).await, want);
            db.close().await.expect("close");
        });
        let names: Vec<String> = std::fs::read_dir(tmp.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.ends_with(".tmp") || n == "MERGE"),
            "leftovers after crash {n}: {names:?}"
        );
        if !crashed {
            completed_at = Some(n);
            break;
        }
    }
    let n = completed_at.expect("the merge eventually completes");
    eprintln!(
        "merge completed after {n} IO operations; crashes (power cut: {power}) rolled back {}, \
         finished at open {}",
        outcomes.0, outcomes.1
    );
    assert!(
        n > 10,
        "a merge of several files takes more than {n} IO operations"
    );
    // Both sides of the commit point were hit.
    assert!(
        outcomes.0 > 0 && outcomes.1 > 0,
        "rolled back {}, finished {}",
        outcomes.0,
        outcomes.1
    );
}

// ---- SIGKILL during merges -----------------------------------------------------------------

const TASKS: u64 = 4;
const NAME: &str = "merge";
const TEST: &str = "sigkill_during_merges_loses_nothing_acknowledged";

fn child(dir: &str, round: u64) {
    let rt = common::multi_thread_rt(2);
    rt.block_on(async {
        let o = opts()
            .io_mode(mode(round * 2))
            .sync(SyncPolicy::Always)
            .max_file_bytes(16 * 1024);
        let db = Db::open(dir, o).await.expect("child open");
        let out = Reporter::default();
        out.ready();
        let merger = {
            let (db, out) = (db.clone(), out.clone());
            tokio::spawn(async move {
                loop {
                    out.mark("merge-start");
                    db.merge().await.expect("child merge");
                    out.mark("merge-end");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let db = db.clone();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let (k, v) = step(round, t, i);
                    match v {
                        Some(v) => db.put(k, v).await.expect("put"),
                        None => db.delete(k).await.expect("delete"),
                    }
                    out.ack(t, i);
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        merger.await.expect("merger");
    });
}

/// Op `i` of `task` in `round`: a put (or, one time in four, a delete) of one of 30 keys.
fn step(round: u64, task: u64, i: u64) -> (String, Option<Vec<u8>>) {
    let mut r = Rng::new(round * 7_777 + task * 131 + i);
    let k = format!("r{round}-t{task}-{}", r.below(30));
    if r.below(4) == 0 {
        (k, None)
    } else {
        (
            k,
            Some(
                format!("{round}/{task}/{i}")
                    .repeat(1 + r.below(20) as usize)
                    .into_bytes(),
            ),
        )
    }
}

fn apply(model: &mut BTreeMap<String, Vec<u8>>, (k, v): (String, Option<Vec<u8>>)) {
    match v {
        Some(v) => model.insert(k, v),
        None => model.remove(&k),
    };
}

#[test]
fn sigkill_during_merges_loses_nothing_acknowledged() {
    if let Some((dir, round)) = crash::child_role(NAME) {
        child(&dir, round);
        return;
    }
    let kills: u64 = common::env_or("RINGCASK_MERGE_KILLS", 10);
    let tmp = tempfile::tempdir().expect("tmp");
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut rng = Rng::new(5);
    let (mut merges_finished, mut kills_in_merge) = (0, 0);
    for round in 0..kills {
        let killed = crash::kill_child(
            TEST,
            NAME,
            tmp.path(),
            round,
            TASKS as usize,
            50 + rng.below(400),
        );
        kills_in_merge += u64::from(killed.last_mark.as_deref() == Some("merge-start"));
        run(async {
            let db = Db::open(tmp.path(), opts().io_mode(mode(round * 2)))
                .await
                .expect("reopen after kill");
            merges_finished += u64::from(db.stats().recovery.merge_finished);
            let got = contents_under(&db, "").await;
            for t in 0..TASKS {
                let n = killed.acked[t as usize];
                let (without, with) =
                    crash::acked_states(&BTreeMap::new(), n, |m, i| apply(m, step(round, t, i)));
                let prefix = format!("r{round}-t{t}-");
                let mine: BTreeMap<_, _> = got
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert!(
                    mine == without || mine == with,
                    "round {round} task {t}: {n} acked"
                );
                expected.extend(mine);
            }
            let this_round = format!("r{round}-");
            let old: BTreeMap<_, _> = got
                .into_iter()
                .filter(|(k, _)| !k.starts_with(&this_round))
                .collect();
            let want_old: BTreeMap<_, _> = expected
                .iter()
                .filter(|(k, _)| !k.starts_with(&this_round))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(old, want_old, "earlier rounds changed after kill {round}");
            db.close().await.expect("close");
        });
    }
    eprintln!(
        "{kills} kills, {kills_in_merge} inside a merge, {merges_finished} interrupted merges \
         finished at open"
    );
    // The test is about kills during merges: most of them must land inside one.
    assert!(
        kills_in_merge * 3 >= kills,
        "only {kills_in_merge} of {kills} kills landed inside a merge"
    );
}
