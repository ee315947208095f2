//! Snapshots, their iterators and the scan cursor, through the public API: a snapshot sees
//! exactly what was acknowledged before it was taken, while writers, batches and merges run;
//! merged-away files stay while a snapshot reads them and go when it drops (or at the next
//! open, after a close or a crash); a scan returns every stable key once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{multi_thread_rt, open, poll_until, run, small_opts, Rng};
use futures::StreamExt;
use ringcask::{Db, Snapshot, WriteBatch};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Everything `snap.iter_prefix(prefix)` yields, checking that no key comes twice.
async fn drain(snap: &Snapshot, prefix: &str) -> Model {
    let mut out = Model::new();
    let mut it = snap.iter_prefix(prefix);
    while let Some(item) = it.next().await {
        let (k, v) = item.expect("iter item");
        assert!(
            out.insert(k.to_vec(), v.to_vec()).is_none(),
            "key yielded twice"
        );
    }
    out
}

/// Random puts and deletes over `keys` keys; returns the model.
async fn fill(db: &Db, rng: &mut Rng, ops: u32, keys: u64, model: &mut Model) {
    for _ in 0..ops {
        let k = format!("k{:04}", rng.below(keys)).into_bytes();
        if rng.below(5) == 0 {
            db.delete(&k).await.expect("delete");
            model.remove(&k);
        } else {
            let len = rng.below(300) as usize;
            let v = rng.bytes(len);
            db.put(&k, &v).await.expect("put");
            model.insert(k, v);
        }
    }
}

#[test]
fn a_snapshot_sees_exactly_the_writes_before_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        let mut rng = Rng::new(1);
        let mut model = Model::new();
        fill(&db, &mut rng, 3000, 800, &mut model).await;
        let snap = db.snapshot();
        assert_eq!(snap.len(), model.len());
        let before = model.clone();
        // Overwrite, delete and add after the snapshot; merge too.
        fill(&db, &mut rng, 3000, 1200, &mut model).await;
        db.write(WriteBatch::new().put("k0001", "batch").delete("k0002"))
            .await
            .expect("batch");
        model.insert(b"k0001".to_vec(), b"batch".to_vec());
        model.remove(&b"k0002"[..]);
        db.merge().await.expect("merge");
        assert!(drain(&snap, "").await == before, "the snapshot changed");
        for (k, v) in before.iter().take(200) {
            assert_eq!(snap.get(k).await.expect("get").as_deref(), Some(&v[..]));
        }
        for k in 800..900 {
            let k = format!("k{k:04}");
            assert_eq!(snap.get(&k).await.expect("get"), None, "{k} came later");
            assert!(!snap.contains_key(&k));
        }
        let under: Model = before
            .iter()
            .filter(|(k, _)| k.starts_with(b"k01"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert!(!under.is_empty());
        assert_eq!(drain(&snap, "k01").await, under);
        // A fresh iterator sees the present.
        let mut now = Model::new();
        let mut it = db.iter();
        while let Some(item) = it.next().await {
            let (k, v) = item.expect("item");
            now.insert(k.to_vec(), v.to_vec());
        }
        assert!(now == model, "a fresh iterator does not see the present");
        drop((snap, it));
        db.close().await.expect("close");
    });
}

/// Merge inputs stay on disk while a snapshot may read them; they go when it drops.
#[test]
fn merged_away_files_wait_for_the_last_snapshot() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = open(tmp.path(), small_opts().auto_merge(false)).await;
        let mut rng = Rng::new(2);
        let mut model = Model::new();
        fill(&db, &mut rng, 2000, 300, &mut model).await;
        let snap = db.snapshot();
        let clone = snap.clone();
        let before = model.clone();
        fill(&db, &mut rng, 2000, 300, &mut model).await;
        let report = db.merge().await.expect("merge");
        assert!(!report.inputs.is_empty());
        let input = tmp.path().join(format!("{:010}.data", report.inputs[0]));
        assert!(input.exists(), "an input a snapshot reads was deleted");
        assert_eq!(db.stats().retired_files, report.inputs.len());
        assert_eq!(db.stats().snapshots, 1, "a clone shares its snapshot's pin");
        drop(snap);
        assert!(input.exists(), "the clone still reads it");
        assert!(drain(&clone, "").await == before, "the snapshot changed");
        drop(clone);
        let markers = || {
            std::fs::read_dir(tmp.path())
                .expect("ls")
                .filter(|e| {
                    let name = e.as_ref().expect("entry").file_name();
                    name.to_string_lossy().ends_with(".retired")
                })
                .count()
        };
        assert_eq!(markers(), report.inputs.len());
        poll_until("retired files deleted", Duration::from_secs(10), || {
            db.stats().retired_files == 0 && !input.exists() && markers() == 0
        });
        assert_eq!(common::contents(&db).await, model);
        db.close().await.expect("close");
    });
}

/// A store closed (or killed) while a snapshot held merged-away files deletes them at the
/// next open, and never reads them as live data.
#[test]
fn retired_files_left_by_a_close_are_deleted_at_open() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = run(async {
        let db = open(tmp.path(), small_opts().auto_merge(false)).await;
        let mut rng = Rng::new(3);
        let mut model = Model::new();
        fill(&db, &mut rng, 2000, 300, &mut model).await;
        // Delete keys whose values sit in the files the merge will retire: were those files
        // loaded again, the values would come back.
        for i in 0..300 {
            let k = format!("k{i:04}").into_bytes();
            if i % 3 == 0 {
                db.delete(&k).await.expect("delete");
                model.remove(&k);
            }
        }
        let snap = db.snapshot();
        db.merge().await.expect("merge");
        let report2 = {
            fill(&db, &mut rng, 500, 300, &mut model).await;
            db.merge().await.expect("second merge")
        };
        assert!(!report2.inputs.is_empty());
        assert!(db.stats().retired_files > 0);
        db.close().await.expect("close");
        assert!(matches!(
            snap.get("k0001").await,
            Err(ringcask::Error::Closed)
        ));
        drop(snap);
        model
    });
    let markers = std::fs::read_dir(tmp.path())
        .expect("ls")
        .filter(|e| {
            e.as_ref()
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .ends_with(".retired")
        })
        .count();
    assert!(markers > 0, "the close left retired files behind");
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        assert_eq!(common::contents(&db).await, model);
        assert_eq!(db.stats().retired_files, 0);
        db.close().await.expect("close");
    });
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".retired")), "{names:?}");
}

/// Batches are atomic in every snapshot, and each snapshot is one instant, while writer tasks
/// and merges run on a multi-thread runtime.
#[test]
fn snapshots_taken_under_load_hold_whole_batches() {
    let tmp = tempfile::tempdir().expect("tmp");
    let rt = multi_thread_rt(2);
    rt.block_on(async {
        let db = open(tmp.path(), small_opts().max_file_bytes(64 * 1024)).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..3u64 {
            let (db, stop) = (db.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut round = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    round += 1;
                    // Writer w keeps its 10 keys equal: one batch rewrites them all.
                    let mut b = WriteBatch::new();
                    for i in 0..10 {
                        b = b.put(format!("w{w}/{i}"), round.to_string());
                    }
                    db.write(b).await.expect("batch");
                }
                round
            }));
        }
        let merger = {
            let (db, stop) = (db.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    db.merge().await.expect("merge");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        for _ in 0..40 {
            let snap = db.snapshot();
            for w in 0..3 {
                let got = drain(&snap, &format!("w{w}/")).await;
                let rounds: BTreeSet<&Vec<u8>> = got.values().collect();
                assert!(
                    got.is_empty() || (got.len() == 10 && rounds.len() == 1),
                    "writer {w}: a batch seen in part: {got:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            assert!(w.await.expect("writer") > 0);
        }
        merger.await.expect("merger");
        db.close().await.expect("close");
    });
}

/// Every key present for a whole scan is returned once while other keys are written and
/// deleted and merges run between pages; the snapshot's scan returns exactly its keys.
#[test]
fn a_scan_returns_every_stable_key_while_the_store_changes() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        for i in 0..3000 {
            db.put(format!("stable/{i}"), "v").await.expect("put");
        }
        let snap = db.snapshot();
        let mut rng = Rng::new(5);
        let mut seen: Vec<Bytes> = Vec::new();
        let mut cursor = 0;
        let mut pages = 0;
        loop {
            let (next, keys) = db.scan(cursor, 25);
            seen.extend(keys);
            pages += 1;
            for _ in 0..40 {
                let k = format!("churn/{}", rng.below(5000));
                if rng.below(2) == 0 {
                    db.put(&k, "x").await.expect("put");
                } else {
                    db.delete(&k).await.expect("delete");
                }
            }
            if pages % 20 == 0 {
                db.merge().await.expect("merge");
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert!(
            pages > 50,
            "count is a hint, but 25 per page over 3000 keys took {pages}"
        );
        let mut stable = BTreeSet::new();
        for k in &seen {
            if k.starts_with(b"stable/") {
                assert!(stable.insert(k.clone()), "{k:?} returned twice");
            }
        }
        assert_eq!(stable.len(), 3000, "a stable key was missed");
        // The snapshot's scan: exactly the keys it holds.
        let mut all = BTreeSet::new();
        let mut cursor = 0;
        loop {
            let (next, keys) = snap.scan(cursor, 100);
            for k in keys {
                assert!(all.insert(k), "returned twice");
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert_eq!(all.len(), 3000);
        db.close().await.expect("close");
        assert_eq!(db.scan(0, 10), (0, Vec::new()));
    });
}

/// A snapshot freezes time too: a key that expires after it was taken stays in it.
#[test]
fn a_snapshot_keeps_keys_that_expire_later() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        db.put_with_ttl("short", "v", Duration::from_millis(150))
            .await
            .expect("put");
        db.put("long", "w").await.expect("put");
        let snap = db.snapshot();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(db.get("short").await.expect("get"), None);
        assert_eq!(
            snap.get("short").await.expect("get").as_deref(),
            Some(&b"v"[..])
        );
        assert_eq!(drain(&snap, "").await.len(), 2);
        let (_, keys) = db.scan(0, 100);
        assert_eq!(keys, vec![Bytes::from_static(b"long")]);
        db.close().await.expect("close");
    });
}

/// A sealed datafile damaged in the middle (the store opened with `skip_damaged_records`):
/// the sequential read of that file stops at the damage and the rest of its live records are
/// found through the keydir; the stream yields exactly what `get` serves.
#[test]
fn iteration_reads_past_a_damaged_region() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        for i in 0..2000 {
            db.put(format!("k{i:05}"), vec![(i % 251) as u8; 40 + i % 60])
                .await
                .expect("put");
        }
        db.close().await.expect("close");
    });
    for e in std::fs::read_dir(tmp.path()).expect("ls") {
        let p = e.expect("entry").path();
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        if name.ends_with(".hint") || name == "KEYDIR" {
            std::fs::remove_file(&p).expect("rm");
        }
    }
    let files = common::data_files(tmp.path());
    assert!(files.len() > 4);
    let victim = &files[2];
    let mut bytes = std::fs::read(victim).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(victim, bytes).expect("write");
    run(async {
        let db = open(tmp.path(), small_opts().skip_damaged_records(true)).await;
        assert!(db.stats().recovery.skipped_damaged_bytes > 0);
        let want = common::contents(&db).await;
        assert!((1900..2000).contains(&want.len()), "{} keys", want.len());
        let snap = db.snapshot();
        assert!(
            drain(&snap, "").await == want,
            "the stream differs from the gets"
        );
        drop(snap);
        db.close().await.expect("close");
    });
}
