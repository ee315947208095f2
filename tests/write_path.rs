//! The append path: inline appends on callers' threads, the writer thread's queue, rotation
//! under concurrent writers, and when a write counts as acknowledged.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{contents, data_files, env_or, run, small_opts, wait_for_syncs, Rng};
use ringcask::testing::FaultInjector;
use ringcask::{Db, Error, SyncPolicy, WriteBatch};

/// Under `SyncPolicy::Always` a put is acknowledged only after an `fdatasync` covering it: if
/// that sync fails, the put fails (and the store refuses later writes).
#[test]
fn durable_put_is_not_acknowledged_when_its_sync_fails() {
    for inline in [true, false] {
        for policy in [SyncPolicy::Always, SyncPolicy::Never] {
            let tmp = tempfile::tempdir().expect("tmp");
            let fault = FaultInjector::new();
            run(async {
                let opts = small_opts()
                    .sync(policy)
                    .preallocate_bytes(0)
                    .inline_writes(inline)
                    .fault_injector(fault.clone());
                let db = Db::open(tmp.path(), opts).await.expect("open");
                db.put("a", "1").await.expect("put");
                db.sync().await.expect("sync");
                // The next operation (the append) succeeds, everything after it fails.
                fault.crash_after(1);
                let res = db.put("b", "2").await;
                if policy == SyncPolicy::Always {
                    assert!(
                        res.is_err(),
                        "inline={inline}: a durable put was acknowledged without its sync"
                    );
                    let again = db.put("c", "3").await;
                    assert!(
                        matches!(again, Err(Error::Poisoned(_))),
                        "inline={inline}: writes after a failed sync must be refused, got {again:?}"
                    );
                } else {
                    // Control: without a sync to wait for, the same append is acknowledged.
                    res.expect("a put under Never needs only its append");
                }
                drop(db);
            });
        }
    }
}

/// The interval sync runs by itself: appends made on callers' threads send the writer thread
/// nothing, yet the data is synced within the interval.
#[test]
fn interval_sync_runs_without_further_calls() {
    for inline in [true, false] {
        let tmp = tempfile::tempdir().expect("tmp");
        run(async {
            let opts = small_opts()
                .sync(SyncPolicy::IntervalMs(10))
                .inline_writes(inline);
            let db = Db::open(tmp.path(), opts).await.expect("open");
            db.put("a", "1").await.expect("put");
            wait_for_syncs(&db, 1).await;
            let before = db.stats().syncs;
            assert!(before >= 1, "inline={inline}: no interval sync ran");
            db.put("b", "2").await.expect("put");
            wait_for_syncs(&db, before + 1).await;
            let after = db.stats().syncs;
            assert!(
                after > before,
                "inline={inline}: the second write was not synced ({before} -> {after})"
            );
            // Idle: nothing written, so no more syncs.
            tokio::time::sleep(Duration::from_millis(60)).await;
            assert_eq!(db.stats().syncs, after, "inline={inline}: idle syncs");
            db.close().await.expect("close");
        });
    }
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// One task's random writes to its own keys, mirrored in a model.
async fn writer_task(db: Db, task: u64, seed: u64, ops: usize) -> Model {
    let mut rng = Rng::new(seed ^ (task << 32));
    let mut model = Model::new();
    for i in 0..ops {
        let key = format!("t{task}-{}", rng.below(40)).into_bytes();
        match rng.below(20) {
            0..=11 => {
                // Mostly small values; now and then one over the 1 MiB inline limit.
                let len = if rng.below(150) == 0 {
                    (1 << 20) + 100
                } else {
                    rng.below(300) as usize
                };
                let value = rng.bytes(len);
                db.put(key.clone(), value.clone()).await.expect("put");
                model.insert(key, value);
            }
            12..=14 => {
                db.delete(key.clone()).await.expect("delete");
                model.remove(&key);
            }
            15..=16 => {
                let mut b = WriteBatch::new();
                for j in 0..rng.below(6) + 1 {
                    let k = format!("t{task}-{}", rng.below(40)).into_bytes();
                    if j % 3 == 2 {
                        b = b.delete(k.clone());
                        model.remove(&k);
                    } else {
                        let v = format!("batch {i} {j}").into_bytes();
                        b = b.put(k.clone(), v.clone());
                        model.insert(k, v);
                    }
                }
                db.write(b).await.expect("batch");
            }
            _ => {
                let got = db.get(&key).await.expect("get");
                assert_eq!(
                    got.as_deref(),
                    model.get(&key).map(Vec::as_slice),
                    "task {task} op {i}: read-your-writes"
                );
            }
        }
        if i % 16 == 0 {
            tokio::task::yield_now().await;
        }
    }
    model
}

async fn check(db: &Db, model: &Model, what: &str) {
    assert_eq!(db.len(), model.len(), "{what}: key count");
    for (k, v) in model {
        let got = db.get(k).await.expect("get");
        assert_eq!(got.as_deref(), Some(v.as_slice()), "{what}: key {k:?}");
    }
}

/// Many tasks on a multi-threaded runtime append inline while files rotate every few KiB (and a
/// few big values take the writer thread's queue); the store matches a model before and after
/// reopen, for every sync policy and with inline writes on and off.
#[test]
fn concurrent_appends_across_rotations_match_a_model() {
    let seeds: u64 = env_or("RINGCASK_WRITE_SEEDS", 2);
    for seed in 0..seeds {
        for (inline, policy) in [
            (true, SyncPolicy::Never),
            (true, SyncPolicy::Always),
            (false, SyncPolicy::Never),
            (true, SyncPolicy::IntervalMs(2)),
        ] {
            let tmp = tempfile::tempdir().expect("tmp");
            let rt = common::multi_thread_rt(4);
            let opts = small_opts()
                .max_file_bytes(8 * 1024)
                .sync(policy)
                .inline_writes(inline)
                .auto_merge(false);
            let what = format!("seed {seed}, inline {inline}, {policy:?}");
            rt.block_on(async {
                let db = Db::open(tmp.path(), opts.clone()).await.expect("open");
                let mut tasks = Vec::new();
                for t in 0..12u64 {
                    tasks.push(tokio::spawn(writer_task(db.clone(), t, seed, 300)));
                }
                let mut model = Model::new();
                for t in tasks {
                    model.extend(t.await.expect("task"));
                }
                check(&db, &model, &what).await;
                db.close().await.expect("close");
                let files = data_files(tmp.path()).len();
                assert!(
                    files > 20,
                    "{what}: expected many rotations, got {files} files"
                );
                let db = Db::open(tmp.path(), opts).await.expect("reopen");
                check(&db, &model, &format!("{what}, reopened")).await;
                let rec = db.stats().recovery;
                assert_eq!(
                    rec.truncated_bytes, 0,
                    "{what}: a clean close left a torn tail"
                );
                db.close().await.expect("close");
            });
        }
    }
}

/// (file id, total bytes, dead bytes) of every datafile, by id.
fn file_accounting(db: &Db) -> Vec<(u32, u64, u64)> {
    let mut v: Vec<_> = db
        .stats()
        .files
        .iter()
        .map(|f| (f.file_id, f.total_bytes, f.dead_bytes))
        .collect();
    v.sort();
    v
}

/// The per-file space accounting rebuilt at open (from what recovery installed and replaced)
/// equals the one kept while writing, for hint-loaded and scanned files alike.
#[test]
fn space_accounting_is_the_same_after_reopen() {
    for drop_hints in [false, true] {
        let tmp = tempfile::tempdir().expect("tmp");
        let opts = small_opts().max_file_bytes(4096).auto_merge(false);
        run(async {
            let db = Db::open(tmp.path(), opts.clone()).await.expect("open");
            common::churn(&db, 7, 1500, 120, 90, 7).await;
            db.close().await.expect("close");
            // The accounting of sealed files as the writer kept it: reopen once (no writes)
            // and compare with a second reopen whose files may have to be scanned.
            let db = Db::open(tmp.path(), opts.clone()).await.expect("reopen");
            let mut before = file_accounting(&db);
            let keys = db.len();
            db.close().await.expect("close");
            if drop_hints {
                for h in common::hint_files(tmp.path()) {
                    std::fs::remove_file(h).expect("rm hint");
                }
            }
            let db = Db::open(tmp.path(), opts.clone()).await.expect("reopen");
            let mut after = file_accounting(&db);
            // The first reopen's active file stayed empty and was removed at close.
            before.retain(|f| f.1 > 20);
            after.retain(|f| f.1 > 20);
            assert!(before.len() > 10, "expected many files");
            assert_eq!(before, after, "drop_hints={drop_hints}");
            assert!(after.iter().any(|f| f.2 > 0), "some space must be dead");
            assert_eq!(db.len(), keys);
            db.close().await.expect("close");
        });
    }
}

/// What a reopen saw: contents, per-file accounting, key count.
type Seen = (BTreeMap<Vec<u8>, Vec<u8>>, Vec<(u32, u64, u64)>, usize);

/// A hint file large enough to be split between recovery threads loads the same keys, values
/// and space accounting as one thread reading it whole, and as a scan of its datafile.
#[test]
fn split_hint_load_matches_whole_load_and_scan() {
    let tmp = tempfile::tempdir().expect("tmp");
    // One big datafile: ~90k records over 20k keys (overwrites, deletes, some TTLs), so its
    // hint body is ~4 MB: three ranges of over 1 MiB.
    let opts = small_opts()
        .max_file_bytes(64 << 20)
        .preallocate_bytes(1 << 20)
        .auto_merge(false);
    run(async {
        let db = Db::open(tmp.path(), opts.clone()).await.expect("open");
        common::churn(&db, 21, 90_000, 20_000, 40, 9).await;
        for i in 0..500u32 {
            let ttl = std::time::Duration::from_secs(if i % 2 == 0 { 3600 } else { 0 });
            db.put_with_ttl(format!("t{i}"), b"x", ttl)
                .await
                .expect("ttl put");
        }
        db.close().await.expect("close");
        assert_eq!(common::hint_files(tmp.path()).len(), 1, "one sealed file");
        let load = |threads: usize| {
            let opts = opts
                .clone()
                .recovery_threads(threads)
                .keydir_snapshot(false);
            let dir = tmp.path().to_path_buf();
            async move {
                let db = Db::open(&dir, opts).await.expect("reopen");
                let st = db.stats().recovery;
                let seen = (contents(&db).await, file_accounting(&db), db.len());
                db.close().await.expect("close");
                (seen, st.files_from_hints, st.records_loaded)
            }
        };
        let (whole, from_hints, records) = load(1).await;
        assert_eq!(from_hints, 1);
        assert!(records > 90_000, "{records} records");
        assert!(whole.2 > 10_000, "{} keys", whole.2);
        // (Contents compared without printing thousands of keys on failure.)
        let same = |a: &Seen, b: &Seen, what: &str| {
            assert_eq!((&a.1, a.2), (&b.1, b.2), "{what}: accounting or key count");
            let differ = a.0.iter().zip(&b.0).filter(|(x, y)| x != y).count();
            assert!(a.0 == b.0, "{what}: {differ} keys or values differ");
        };
        let (split, from_hints, _) = load(3).await;
        assert_eq!(from_hints, 1);
        same(&split, &whole, "split hint load vs whole");
        for h in common::hint_files(tmp.path()) {
            std::fs::remove_file(h).expect("rm hint");
        }
        let (scanned, from_hints, _) = load(3).await;
        assert_eq!(from_hints, 0);
        same(&scanned, &whole, "scan vs hint load");
        // The scan spilled the file's hint as it went (small_opts: 256-byte spills); the
        // writer completed it after open, and the next open loads it.
        let (rehinted, from_hints, _) = load(3).await;
        assert_eq!(from_hints, 1, "the hint written after the scan is used");
        same(
            &rehinted,
            &whole,
            "hint written after a scan vs first hint load",
        );
        // The keydir snapshot a close saves loads the same keys, values and accounting.
        let db = Db::open(tmp.path(), opts.clone()).await.expect("reopen");
        assert!(!db.stats().recovery.from_snapshot);
        db.close().await.expect("close saves a snapshot");
        assert!(tmp.path().join("KEYDIR").exists());
        let db = Db::open(tmp.path(), opts.clone()).await.expect("reopen");
        let st = db.stats().recovery;
        assert!(st.from_snapshot, "{st:?}");
        assert_eq!((st.files_from_hints, st.files_scanned), (0, 0));
        assert!(
            !tmp.path().join("KEYDIR").exists(),
            "a snapshot serves one open only"
        );
        let snap = (contents(&db).await, file_accounting(&db), db.len());
        same(&snap, &whole, "snapshot load vs hint load");
        db.close().await.expect("close");
    });
}

/// Live accounting while writing matches what open computes from the files.
#[test]
fn space_accounting_while_writing_matches_open() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = small_opts().max_file_bytes(4096).auto_merge(false);
    run(async {
        let db = Db::open(tmp.path(), opts.clone()).await.expect("open");
        common::churn(&db, 11, 1200, 100, 70, 5).await;
        let live_dead = |db: &Db| -> u64 {
            let st = db.stats();
            // Dead bytes of sealed files only: the active file is trimmed at close.
            st.files
                .iter()
                .filter(|f| f.file_id != st.active_file_id)
                .map(|f| f.dead_bytes)
                .sum()
        };
        let active = db.stats().active_file_id;
        let dead_writing = live_dead(&db);
        db.close().await.expect("close");
        let db = Db::open(tmp.path(), opts).await.expect("reopen");
        let dead_open: u64 = db
            .stats()
            .files
            .iter()
            .filter(|f| f.file_id != active && f.file_id < active)
            .map(|f| f.dead_bytes)
            .sum();
        assert_eq!(dead_writing, dead_open);
        db.close().await.expect("close");
    });
}

/// With a value cache, repeated gets are served from memory, and overwrites, deletes, expiry
/// and merges never return a stale cached value.
#[test]
fn value_cache_serves_repeats_and_never_stale_values() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let opts = small_opts()
            .max_file_bytes(4096)
            .value_cache_bytes(1 << 20)
            .auto_merge(false);
        let db = Db::open(tmp.path(), opts).await.expect("open");
        for i in 0..200u32 {
            db.put(format!("k{i}"), format!("v{i}")).await.expect("put");
        }
        for _ in 0..3 {
            for i in 0..200u32 {
                let v = db.get(format!("k{i}").as_bytes()).await.expect("get");
                assert_eq!(v.as_deref(), Some(format!("v{i}").as_bytes()));
            }
        }
        let st = db.stats();
        assert!(st.reads_cached >= 400, "repeats not cached: {st:?}");
        assert!(st.value_cache_bytes > 0);
        // Overwrite half, delete a quarter, expire some, merge, and read everything again.
        for i in (0..200u32).step_by(2) {
            db.put(format!("k{i}"), format!("w{i}")).await.expect("put");
        }
        for i in (1..200u32).step_by(4) {
            db.delete(format!("k{i}")).await.expect("delete");
        }
        db.put_with_ttl("k3", "short", Duration::from_millis(1))
            .await
            .expect("ttl put");
        tokio::time::sleep(Duration::from_millis(5)).await;
        db.merge().await.expect("merge");
        for i in 0..200u32 {
            let want = if i % 2 == 0 {
                Some(format!("w{i}"))
            } else if i % 4 == 1 || i == 3 {
                None
            } else {
                Some(format!("v{i}"))
            };
            for _ in 0..2 {
                let got = db.get(format!("k{i}").as_bytes()).await.expect("get");
                assert_eq!(got.as_deref(), want.as_deref().map(str::as_bytes), "k{i}");
            }
        }
        db.close().await.expect("close");
    });
}

/// `Never`, one large file (no rotation), no merge: only writebacks sync.
fn writeback_opts() -> ringcask::Options {
    ringcask::Options::default()
        .sync(SyncPolicy::Never)
        .max_file_bytes(1 << 30)
        .auto_merge(false)
}

/// Under `SyncPolicy::Never`, every 16 MiB appended asks the writer for a background
/// `fdatasync`, so that sealing a full file does not have to flush it all while appends wait.
/// Less than that asks for nothing.
#[test]
fn never_policy_writes_back_in_the_background() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = Db::open(tmp.path(), writeback_opts()).await.expect("open");
        let value = vec![5u8; 64 << 10];
        // 8 MiB: below the writeback step.
        for i in 0..128u32 {
            db.put(format!("a{i}"), &value).await.expect("put");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(db.stats().syncs, 0, "no sync below 16 MiB");
        // 40 MiB more: at least two writebacks.
        for i in 0..640u32 {
            db.put(format!("b{i}"), &value).await.expect("put");
        }
        wait_for_syncs(&db, 2).await;
        assert!(
            db.stats().syncs >= 2,
            "{} syncs after 48 MiB",
            db.stats().syncs
        );
        db.close().await.expect("close");
    });
}

/// Requests of over 1 MiB are appended by the writer thread, not inline; under `Never` they
/// also get a background writeback every 16 MiB (without one, sealing a full file would sync
/// it all while appends wait).
#[test]
fn never_policy_writes_back_large_batches_too() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = Db::open(tmp.path(), writeback_opts()).await.expect("open");
        let value = vec![6u8; 64 << 10];
        // 24 batches of 2 MiB: 48 MiB, three writeback steps.
        for b in 0..24u32 {
            let mut batch = WriteBatch::new();
            for i in 0..32u32 {
                batch = batch.put(format!("b{b}-{i}"), value.clone());
            }
            db.write(batch).await.expect("batch");
        }
        wait_for_syncs(&db, 2).await;
        assert!(
            db.stats().syncs >= 2,
            "{} syncs after 48 MiB of large batches",
            db.stats().syncs
        );
        assert_eq!(db.len(), 24 * 32);
        let got = db.get("b23-31").await.expect("get").expect("present");
        assert_eq!(&got[..], &value[..]);
        db.close().await.expect("close");
    });
}

/// Batches are applied to the keydir a shard at a time: the result and the space accounting
/// equal those of the same writes one by one, including keys written twice in one batch and
/// deletes of keys put earlier in the same batch.
#[test]
fn batches_apply_like_single_writes() {
    let opts = small_opts().max_file_bytes(1 << 20).auto_merge(false);
    let mut seen = Vec::new();
    for batched in [false, true] {
        let tmp = tempfile::tempdir().expect("tmp");
        let opts = opts.clone();
        seen.push(run(async move {
            let db = Db::open(tmp.path(), opts.clone()).await.expect("open");
            let mut rng = Rng::new(77);
            for _ in 0..60 {
                let ops: Vec<(String, Option<Vec<u8>>)> = (0..50)
                    .map(|i| {
                        let k = format!("k{}", rng.below(300));
                        let len = rng.below(40) as usize + 1;
                        let v = (i % 7 != 3).then(|| rng.bytes(len));
                        (k, v)
                    })
                    .collect();
                if batched {
                    let mut b = WriteBatch::new();
                    for (k, v) in &ops {
                        b = match v {
                            Some(v) => b.put(k.clone(), v.clone()),
                            None => b.delete(k.clone()),
                        };
                    }
                    db.write(b).await.expect("batch");
                } else {
                    for (k, v) in &ops {
                        match v {
                            Some(v) => db.put(k, v).await.expect("put"),
                            None => db.delete(k).await.expect("delete"),
                        }
                    }
                }
            }
            let dead: u64 = db.stats().files.iter().map(|f| f.dead_bytes).sum();
            let mut keys = db.keys();
            keys.sort();
            let mut content = Vec::new();
            for k in keys {
                content.push((
                    k.to_vec(),
                    db.get(&k).await.expect("get").map(|v| v.to_vec()),
                ));
            }
            db.close().await.expect("close");
            // Reopen recomputes the accounting from the files.
            let db = Db::open(tmp.path(), opts).await.expect("reopen");
            let dead_open: u64 = db.stats().files.iter().map(|f| f.dead_bytes).sum();
            db.close().await.expect("close");
            (content, dead, dead_open)
        }));
    }
    let (single, batch) = (&seen[0], &seen[1]);
    assert!(single.0.len() > 100, "{} keys", single.0.len());
    assert_eq!(
        single.0, batch.0,
        "batched writes left other keys or values"
    );
    // Batch records carry batch framing flags but have the same length: dead bytes match.
    assert_eq!(single.1, batch.1, "dead bytes while writing");
    assert_eq!(
        batch.1, batch.2,
        "batched: dead bytes while writing vs after reopen"
    );
}

/// Values of 64 KiB and more are written from the caller's (or the queue's) buffer after their
/// header: they read back whole, across reopens, on the inline path (< 1 MiB) and the writer
/// thread's; a crash between the header and the value leaves the previous value.
#[test]
fn large_values_are_written_whole_or_not_at_all() {
    let sizes = [64 << 10, (64 << 10) + 1, 700 << 10, (1 << 20) + 3, 3 << 20];
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = || {
        small_opts()
            .max_file_bytes(16 << 20)
            .max_value_bytes(8 << 20)
            .preallocate_bytes(0)
    };
    let want = run(async {
        let db = Db::open(tmp.path(), opts()).await.expect("open");
        let mut want = BTreeMap::new();
        let mut rng = Rng::new(3);
        for (i, &n) in sizes.iter().enumerate() {
            let v = rng.bytes(n);
            db.put(format!("big{i}"), &v).await.expect("put");
            db.put(format!("small{i}"), "s").await.expect("put");
            assert_eq!(
                db.get(format!("big{i}")).await.expect("get").as_deref(),
                Some(&v[..])
            );
            want.insert(format!("big{i}").into_bytes(), v);
            want.insert(format!("small{i}").into_bytes(), b"s".to_vec());
        }
        db.close().await.expect("close");
        want
    });
    let fault = FaultInjector::new();
    run(async {
        let db = Db::open(tmp.path(), opts().fault_injector(fault.clone()))
            .await
            .expect("reopen");
        assert_eq!(contents(&db).await, want);
        // The header write succeeds, the value's fails: as if the process died between them.
        fault.crash_after(1);
        assert!(db.put("big0", vec![9u8; 100 << 10]).await.is_err());
        common::shut(db).await;
    });
    fault.restart();
    run(async {
        let db = Db::open(tmp.path(), opts())
            .await
            .expect("reopen after the crash");
        assert_eq!(
            contents(&db).await,
            want,
            "a half-written large value is visible"
        );
        assert!(
            db.stats().recovery.truncated_bytes > 0,
            "the header was cut"
        );
        db.close().await.expect("close");
    });
}
