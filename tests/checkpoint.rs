//! Checkpoints: a consistent copy of a live store, taken while writers and merges run, that
//! opens as an ordinary store; a SIGKILL mid-checkpoint never leaves a checkpoint that looks
//! complete but is not.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::crash;
use common::{contents, multi_thread_rt, open, run, small_opts, Rng};
use ringcask::{Db, Options};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn number(v: &[u8]) -> u64 {
    std::str::from_utf8(v)
        .expect("utf8")
        .parse()
        .expect("number")
}

/// Writers count up their own key, merges run; each checkpoint holds, for every writer, a
/// value between what was acknowledged before the call and what was after it, and exactly
/// the fixed keys (deleted ones stay deleted).
#[test]
fn a_checkpoint_holds_everything_acknowledged_before_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let live = tmp.path().join("live");
    let rt = multi_thread_rt(2);
    rt.block_on(async {
        let db = open(&live, small_opts().max_file_bytes(32 * 1024)).await;
        let mut fixed = Model::new();
        let mut rng = Rng::new(11);
        for i in 0..400u32 {
            let k = format!("fixed/{i}").into_bytes();
            let len = rng.below(200) as usize;
            let v = rng.bytes(len);
            db.put(&k, &v).await.expect("put");
            fixed.insert(k, v);
        }
        for i in (0..400u32).step_by(3) {
            let k = format!("fixed/{i}").into_bytes();
            db.delete(&k).await.expect("delete");
            fixed.remove(&k);
        }
        let acked: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..3usize {
            let (db, acked, stop) = (db.clone(), acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // Padding makes files rotate, so there are sealed files to link.
                    let v = format!("{n:0>300}");
                    db.put(format!("counter/{w}"), v).await.expect("put");
                    acked[w].store(n, Ordering::SeqCst);
                }
            }));
        }
        {
            let (db, stop) = (db.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    db.merge().await.expect("merge");
                    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
                }
            }));
        }
        let mut checkpoints = Vec::new();
        for c in 0..6 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let before: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
            let dest = tmp.path().join(format!("cp{c}"));
            let report = db.checkpoint(&dest).await.expect("checkpoint");
            let after: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
            assert_eq!(report.path, dest);
            // The active file is copied (unless the checkpoint fell inside a rotation, when
            // every write is in sealed files).
            assert!(report.files_copied + report.files_linked >= 1);
            assert!(report.bytes_copied + report.bytes_linked > 0);
            checkpoints.push((dest, before, after, report));
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("task");
        }
        assert!(
            checkpoints.iter().any(|c| c.3.files_linked > 0),
            "no sealed file was ever linked"
        );
        for (dest, before, after, _) in &checkpoints {
            let cp = open(dest, small_opts()).await;
            let got = contents(&cp).await;
            let fixed_got: Model = got
                .iter()
                .filter(|(k, _)| k.starts_with(b"fixed/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert!(fixed_got == fixed, "{}: fixed keys differ", dest.display());
            for w in 0..3 {
                let v = got
                    .get(format!("counter/{w}").as_bytes())
                    .map_or(0, |v| number(v));
                assert!(
                    (before[w]..=after[w] + 1).contains(&v),
                    "{}: writer {w} at {v}, acked {} before the call and {} after",
                    dest.display(),
                    before[w],
                    after[w]
                );
            }
            cp.close().await.expect("close checkpoint");
        }
        // The live store is untouched by the checkpoints being opened.
        assert!(contents(&db).await.len() >= fixed.len());
        db.close().await.expect("close");
    });
}

#[test]
fn a_checkpoint_refuses_an_existing_destination_and_replaces_a_stale_temporary() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = open(&tmp.path().join("live"), small_opts()).await;
        db.put("k", "v").await.expect("put");
        let taken = tmp.path().join("taken");
        std::fs::create_dir(&taken).expect("mkdir");
        let err = db
            .checkpoint(&taken)
            .await
            .expect_err("existing destination");
        assert!(
            matches!(&err, ringcask::Error::Io(e) if e.kind() == std::io::ErrorKind::AlreadyExists),
            "{err}"
        );
        // What a crash mid-checkpoint leaves: a temporary directory with a partial file.
        let dest = tmp.path().join("cp");
        let stale = tmp.path().join("cp.checkpoint.tmp");
        std::fs::create_dir(&stale).expect("mkdir");
        std::fs::write(stale.join("0000000001.data"), b"partial").expect("write");
        db.checkpoint(&dest).await.expect("checkpoint");
        assert!(!stale.exists());
        let cp = open(&dest, Options::default()).await;
        assert_eq!(cp.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
        cp.close().await.expect("close");
        db.close().await.expect("close");
        assert!(matches!(
            db.checkpoint(tmp.path().join("late")).await,
            Err(ringcask::Error::Closed)
        ));
    });
}

const NAME: &str = "checkpoint_kill";
const TEST: &str = "sigkill_during_checkpoints_leaves_only_complete_ones";
const KEYS: u32 = 3000;

fn value(i: u32) -> Vec<u8> {
    format!("{i}-{}", "v".repeat((i % 97) as usize)).into_bytes()
}

/// The child: checkpoints the store (filled by the parent) again and again, to `cp0`, `cp1`,
/// ... and reports each one finished.
fn child(dir: &str) {
    let dir = std::path::PathBuf::from(dir);
    run(async {
        let db = Db::open(dir.join("live"), small_opts())
            .await
            .expect("open");
        let out = crash::Reporter::default();
        out.ready();
        for i in 0.. {
            db.checkpoint(dir.join(format!("cp{i}")))
                .await
                .expect("checkpoint");
            out.ack(0, i);
        }
    });
}

#[test]
fn sigkill_during_checkpoints_leaves_only_complete_ones() {
    if let Some((dir, _)) = crash::child_role(NAME) {
        child(&dir);
        return;
    }
    let rounds: u64 = common::env_or("RINGCASK_CHECKPOINT_KILLS", 6);
    let mut rng = Rng::new(7);
    let mut finished_total = 0;
    let mut unfinished_total = 0;
    for round in 0..rounds {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut model = Model::new();
        run(async {
            let db = open(&tmp.path().join("live"), small_opts()).await;
            for i in 0..KEYS {
                db.put(format!("k{i}"), value(i)).await.expect("put");
                model.insert(format!("k{i}").into_bytes(), value(i));
            }
            db.close().await.expect("close");
        });
        let killed = crash::kill_child(TEST, NAME, tmp.path(), round, 1, 5 + rng.below(60));
        let mut complete = 0;
        for e in std::fs::read_dir(tmp.path()).expect("ls") {
            let path = e.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            if !name.starts_with("cp") {
                continue;
            }
            if name.ends_with(".checkpoint.tmp") {
                unfinished_total += 1;
                continue;
            }
            complete += 1;
            run(async {
                let cp = open(&path, small_opts()).await;
                assert!(
                    contents(&cp).await == model,
                    "{name} is not the whole store"
                );
                cp.close().await.expect("close");
            });
        }
        assert!(
            complete as u64 >= killed.acked[0],
            "a finished checkpoint is missing"
        );
        finished_total += complete;
    }
    assert!(finished_total > 0, "no checkpoint finished before a kill");
    eprintln!("{finished_total} complete checkpoints, {unfinished_total} cut by a kill");
}
