//! Merge scenarios through the public API.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{contents_lenient, data_files, hint_files, run, Rng};
use ringcask::{Db, Options, SyncPolicy, WriteBatch};

fn opts() -> Options {
    Options::default()
        .sync(SyncPolicy::Never)
        .max_file_bytes(16 * 1024)
        .preallocate_bytes(0)
        .auto_merge(false)
        .merge_bytes_per_sec(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum()
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") || n == "MERGE")
        .collect()
}

#[test]
fn merging_an_empty_store_does_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = Db::open(tmp.path(), opts()).await.expect("open");
        let r = db.merge().await.expect("merge");
        assert!(r.inputs.is_empty() && r.outputs.is_empty());
        db.put("k", "v").await.expect("put");
        // The only file is the active one: still nothing to merge.
        let r = db.merge().await.expect("merge");
        assert!(r.inputs.is_empty(), "{r:?}");
        assert_eq!(db.get(b"k").await.expect("get").as_deref(), Some(&b"v"[..]));
    });
}

#[test]
fn merging_a_fully_dead_store_reclaims_everything() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = Db::open(tmp.path(), opts()).await.expect("open");
        for i in 0..400u32 {
            db.put(format!("k{i}"), vec![1u8; 100]).await.expect("put");
        }
        for i in 0..400u32 {
            db.delete(format!("k{i}")).await.expect("delete");
        }
        db.close().await.expect("close");
        let db = Db::open(tmp.path(), opts()).await.expect("reopen");
        let before = dir_bytes(tmp.path());
        let r = db.merge().await.expect("merge");
        assert!(r.inputs.len() >= 4, "{r:?}");
        assert!(
            r.outputs.is_empty(),
            "nothing is live and no tombstone is needed: {r:?}"
        );
        assert_eq!(r.records_copied, 0);
        assert_eq!(r.dropped_tombstones, 400);
        assert_eq!(r.dropped_superseded, 400);
        assert!(dir_bytes(tmp.path()) < before / 10);
        assert!(db.is_empty());
        db.close().await.expect("close");
        let db = Db::open(tmp.path(), opts()).await.expect("reopen");
        assert!(db.is_empty(), "no deleted key may come back");
        assert!(leftovers(tmp.path()).is_empty());
    });
}

#[test]
fn merging_a_fully_live_store_keeps_everything_and_reopen_uses_hints() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = Db::open(tmp.path(), opts()).await.expect("open");
        for i in 0..500u32 {
            db.put(format!("k{i}"), format!("value {i}"))
                .await
                .expect("put");
        }
        db.close().await.expect("close");
        let db = Db::open(tmp.path(), opts()).await.expect("reopen");
        let want = contents_lenient(&db).await;
        let r = db.merge().await.expect("merge");
        assert_eq!(r.records_copied, 500);
        assert_eq!(
            r.dropped_superseded + r.dropped_tombstones + r.dropped_expired,
            0
        );
        assert!(!r.outputs.is_empty());
        assert_eq!(contents_lenient(&db).await, want, "reads after the merge");
        db.put("after", "merge").await.expect("writes continue");
        db.close().await.expect("close");
        let files = data_files(tmp.path()).len();
        assert_eq!(hint_files(tmp.path()).len(), files);
        let db = Db::open(tmp.path(), opts().keydir_snapshot(false))
            .await
            .expect("reopen");
        let rep = db.stats().recovery;
        assert_eq!(rep.files_scanned, 0, "outputs have hints: {rep:?}");
        assert_eq!(rep.files_from_hints, files);
        let mut want = want;
        want.insert(b"after".to_vec(), b"merge".to_vec());
        assert_eq!(contents_lenient(&db).await, want);
    });
}

#[test]
fn overwriting_everything_then_merging_reclaims_space() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = Db::open(tmp.path(), opts().max_file_bytes(64 * 1024))
            .await
            .expect("open");
        let keys = 300u32;
        for round in 0..10u32 {
            for i in 0..keys {
                db.put(format!("key{i:04}"), vec![round as u8; 200])
                    .await
                    .expect("put");
            }
        }
        let live = u64::from(keys) * (29 + 7 + 200);
        let before = dir_bytes(tmp.path());
        assert!(before > 8 * live);
        let st = db.stats();
        assert!(st.fragmentation > 0.8, "{}", st.fragmentation);
        // Seal the active file so that the merge takes everything.
        db.close().await.expect("close");
        let db = Db::open(tmp.path(), opts().max_file_bytes(64 * 1024))
            .await
            .expect("open");
        let r = db.merge().await.expect("merge");
        assert_eq!(r.records_copied, u64::from(keys));
        let after = dir_bytes(tmp.path());
        assert!(
            after < 2 * live,
            "{after} bytes on disk for {live} live bytes"
        );
        assert!(r.reclaimed_bytes > 7 * live);
        assert!(db.stats().fragmentation < 0.1);
        for i in (0..keys).step_by(17) {
            let v = db.get(format!("key{i:04}").as_bytes()).await.expect("get");
            assert_eq!(v.as_deref(), Some(&[9u8; 200][..]));
        }
    });
}

#[test]
fn expired_entries_are_dropped_and_never_resurrect() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = Db::open(tmp.path(), opts()).await.expect("open");
        for i in 0..100u32 {
            db.put(format!("t{i}"), "old value").await.expect("put");
        }
        for i in 0..100u32 {
            db.put_with_ttl(format!("t{i}"), "short", Duration::from_millis(100))
                .await
                .expect("put ttl");
        }
        for i in 0..300u32 {
            db.put(format!("filler{i}"), vec![0u8; 100])
                .await
                .expect("put");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let r = db.merge().await.expect("merge");
        assert!(r.dropped_expired >= 1, "{r:?}");
        for i in 0..100u32 {
            assert_eq!(db.get(format!("t{i}").as_bytes()).await.expect("get"), None);
        }
        db.close().await.expect("close");
        let db = Db::open(tmp.path(), opts()).await.expect("reopen");
        for i in 0..100u32 {
            assert_eq!(
                db.get(format!("t{i}").as_bytes()).await.expect("get"),
                None,
                "t{i}: the old value came back"
            );
        }
        assert_eq!(db.len(), 300);
    });
}

#[test]
fn ttl_expiring_during_a_merge_stays_expired() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        // A slow merge (throttled) while TTLs run out.
        let o = opts().merge_bytes_per_sec(256 * 1024);
        let db = Db::open(tmp.path(), o.clone()).await.expect("open");
        for i in 0..200u32 {
            db.put(format!("k{i}"), "first").await.expect("put");
            db.put_with_ttl(format!("k{i}"), vec![1u8; 300], Duration::from_millis(200))
                .await
                .expect("put ttl");
        }
        db.close().await.expect("close");
        let db = Db::open(tmp.path(), o.clone()).await.expect("reopen");
        let r = db.merge().await.expect("merge");
        assert!(r.duration > Duration::from_millis(200), "throttled: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 0..200u32 {
            assert_eq!(db.get(format!("k{i}").as_bytes()).await.expect("get"), None);
        }
        db.close().await.expect("close");
        let db = Db::open(tmp.path(), o).await.expect("reopen");
        assert!(db.is_empty(), "expired or superseded values came back");
    });
}

#[test]
fn concurrent_writes_and_reads_during_merges_match_a_model() {
    let tmp = tempfile::tempdir().expect("tmp");
    let rt = common::multi_thread_rt(2);
    rt.block_on(async {
        // A small value cache, so that stale cached values would show as wrong reads.
        let o = opts()
            .merge_bytes_per_sec(4 << 20)
            .value_cache_bytes(32 * 1024);
        let db = Db::open(tmp.path(), o).await.expect("open");
        let mut tasks = Vec::new();
        for t in 0..4u64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng::new(t + 1);
                let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
                for i in 0..1500u32 {
                    let k = format!("t{t}-{}", rng.below(60));
                    match rng.below(10) {
                        0..=4 => {
                            let v = format!("{t}/{i}").into_bytes();
                            db.put(k.clone(), v.clone()).await.expect("put");
                            model.insert(k, v);
                        }
                        5 => {
                            db.delete(k.clone()).await.expect("delete");
                            model.remove(&k);
                        }
                        6 => {
                            let k2 = format!("t{t}-{}", rng.below(60));
                            let v = format!("b{t}/{i}").into_bytes();
                            db.write(
                                WriteBatch::new()
                                    .put(k.clone(), v.clone())
                                    .delete(k2.clone()),
                            )
                            .await
                            .expect("batch");
                            model.insert(k, v);
                            model.remove(&k2);
                        }
                        _ => {
                            let got = db.get(k.as_bytes()).await.expect("get during merge");
                            assert_eq!(got.as_deref(), model.get(&k).map(|v| &v[..]), "{k}");
                        }
                    }
                }
                model
            }));
        }
        let merger = {
            let db = db.clone();
            tokio::spawn(async move {
                let mut merges = 0;
                for _ in 0..15 {
                    let r = db.merge().await.expect("merge");
                    if !r.inputs.is_empty() {
                        merges += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                merges
            })
        };
        let mut model = BTreeMap::new();
        for t in tasks {
            model.extend(t.await.expect("task"));
        }
        let merges = merger.await.expect("merger");
        assert!(merges >= 3, "only {merges} merges had inputs");
        let check = |db: Db, model: BTreeMap<String, Vec<u8>>| async move {
            assert_eq!(db.len(), model.len());
            for (k, v) in &model {
                assert_eq!(
                    db.get(k.as_bytes()).await.expect("get").as_deref(),
                    Some(&v[..]),
                    "{k}"
                );
            }
        };
        check(db.clone(), model.clone()).await;
        // The space accounting kept through concurrent writes and merges equals what open
        // recomputes from the files (sealed files; the active one is trimmed at close).
        let sealed = |db: &Db, active: u32| -> Vec<(u32, u64, u64)> {
            let mut v: Vec<_> = db
                .stats()
                .files
                .iter()
                .filter(|f| f.file_id < active)
                .map(|f| (f.file_id, f.total_bytes, f.dead_bytes))
                .collect();
            v.sort();
            v
        };
        let active = db.stats().active_file_id;
        let running = sealed(&db, active);
        db.close().await.expect("close");
        let db = Db::open(tmp.path(), opts()).await.expect("reopen");
        assert_eq!(running, sealed(&db, active), "space accounting drifted");
        check(db.clone(), model).await;
        assert!(leftovers(tmp.path()).is_empty());
    });
}

/// The classic trap: the tombstone lives in a file the merge takes, the old value in one it
/// does not. Dropping the tombstone would bring the key back at the next open.
#[test]
fn partial_automatic_merge_keeps_tombstones_that_still_hide_old_values() {
    let tmp = tempfile::tempdir().expect("tmp");
    let o = opts()
        .auto_merge(true)
        .merge_check_interval_ms(20)
        .merge_trigger_ratio(0.3)
        .merge_file_ratio(0.6);
    run(async {
        {
            let db = Db::open(tmp.path(), o.clone().auto_merge(false))
                .await
                .expect("open");
            // File A: the old value of "victim" and much live data (low dead ratio).
            db.put("victim", "old value").await.expect("put");
            for i in 0..120u32 {
                db.put(format!("a{i}"), vec![1u8; 100]).await.expect("put");
            }
            db.close().await.expect("close");
            // File B: the tombstone and lots of overwrites (high dead ratio).
            let db = Db::open(tmp.path(), o.clone().auto_merge(false))
                .await
                .expect("open");
            db.delete("victim").await.expect("delete");
            for round in 0..4u32 {
                for i in 0..25u32 {
                    db.put(format!("b{i}"), vec![round as u8; 100])
                        .await
                        .expect("put");
                }
            }
            db.close().await.expect("close");
        }
        let files_before = data_files(tmp.path());
        assert_eq!(files_before.len(), 2);
        let db = Db::open(tmp.path(), o.clone())
            .await
            .expect("open with auto merge");
        let mut merged = false;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if db.stats().merges > 0 {
                merged = true;
                break;
            }
        }
        assert!(merged, "the automatic merge did not run");
        let remaining = data_files(tmp.path());
        assert!(
            remaining.contains(&files_before[0]),
            "file A was not an input"
        );
        assert!(!remaining.contains(&files_before[1]), "file B was an input");
        assert_eq!(db.get(b"victim").await.expect("get"), None);
        db.close().await.expect("close");
        let db = Db::open(tmp.path(), o.auto_merge(false))
            .await
            .expect("reopen");
        assert_eq!(
            db.get(b"victim").await.expect("get"),
            None,
            "the deleted key came back"
        );
        assert_eq!(db.len(), 120 + 25);
    });
}

#[test]
fn no_descriptor_of_a_deleted_file_stays_open() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = Db::open(tmp.path(), opts().read_threads(2))
            .await
            .expect("open");
        for round in 0..3u32 {
            for i in 0..200u32 {
                db.put(format!("k{i}"), vec![round as u8; 100])
                    .await
                    .expect("put");
            }
        }
        // Read from every file so that the read threads cache handles to them.
        for i in 0..200u32 {
            db.get(format!("k{i}").as_bytes()).await.expect("get");
        }
        let r = db.merge().await.expect("merge");
        assert!(!r.inputs.is_empty());
        let mut deleted = Vec::new();
        for e in std::fs::read_dir("/proc/self/fd")
            .expect("fd dir")
            .flatten()
        {
            if let Ok(target) = std::fs::read_link(e.path()) {
                let t = target.to_string_lossy().into_owned();
                if t.starts_with(&*tmp.path().to_string_lossy()) && t.ends_with("(deleted)") {
                    deleted.push(t);
                }
            }
        }
        assert!(
            deleted.is_empty(),
            "descriptors of deleted files: {deleted:?}"
        );
        for i in 0..200u32 {
            let v = db.get(format!("k{i}").as_bytes()).await.expect("get");
            assert_eq!(v.as_deref(), Some(&[2u8; 100][..]));
        }
    });
}

#[test]
fn expiry_counts_as_dead_space_without_reads_or_merges() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = Db::open(tmp.path(), opts().merge_check_interval_ms(20))
            .await
            .expect("open");
        db.put("keep", vec![0u8; 200]).await.expect("put");
        // Taken before the TTL puts: on a loaded machine the first may expire before the last.
        let before = db.stats().dead_bytes;
        for i in 0..100u32 {
            db.put_with_ttl(
                format!("t{i:03}"),
                vec![1u8; 200],
                Duration::from_millis(100),
            )
            .await
            .expect("put ttl");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let st = db.stats();
        let record = 29 + 4 + 200;
        assert!(
            st.dead_bytes >= before + 100 * record,
            "dead bytes {} -> {}",
            before,
            st.dead_bytes
        );
        assert_eq!(st.keys, 1, "expired keys left the keydir");
        assert_eq!(db.len(), 1);
        assert_eq!(st.merges, 0);
    });
}

/// Found by the `model` fuzz target: a merge drops a record because a newer one exists, but
/// under `SyncPolicy::Never` that newer one may not be on stable storage yet. If the inputs are
/// deleted first, a power loss loses both values of the key. The merge must sync the writer.
#[test]
fn a_merge_makes_the_records_it_relies_on_durable_first() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = Db::open(tmp.path(), opts()).await.expect("open");
        db.put("k", "old").await.expect("put");
        db.close().await.expect("close");
        let db = Db::open(tmp.path(), opts()).await.expect("reopen");
        db.put("k", "new").await.expect("put"); // unsynced: SyncPolicy::Never
        let syncs = db.stats().syncs;
        let r = db.merge().await.expect("merge");
        assert_eq!(r.dropped_superseded, 1, "{r:?}");
        assert!(
            db.stats().syncs > syncs,
            "the merge deleted the old value without syncing the new one"
        );
    });
}
