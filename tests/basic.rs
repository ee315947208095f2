//! Scenario tests of the public API.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::{backends, data_files, hint_files, open, run, small_opts, Rng};
use ringcask::{Db, Error, IoBackendKind, Options, SyncPolicy, WriteBatch};

#[test]
fn round_trip_overwrite_delete_on_both_backends() {
    for backend in backends() {
        let tmp = tempfile::tempdir().expect("tmp");
        run(async {
            let db = open(tmp.path(), small_opts().io_backend(backend)).await;
            assert_eq!(db.get(b"a").await.expect("get"), None);
            db.put("a", "1").await.expect("put");
            db.put("b", "2").await.expect("put");
            assert_eq!(db.get(b"a").await.expect("get").as_deref(), Some(&b"1"[..]));
            db.put("a", "one").await.expect("put");
            assert_eq!(
                db.get(b"a").await.expect("get").as_deref(),
                Some(&b"one"[..])
            );
            db.delete("a").await.expect("delete");
            assert_eq!(db.get(b"a").await.expect("get"), None);
            db.delete("never-existed")
                .await
                .expect("delete of a missing key");
            db.put("empty", "").await.expect("empty values are allowed");
            assert_eq!(
                db.get(b"empty").await.expect("get").as_deref(),
                Some(&b""[..])
            );
            assert!(db.contains_key(b"b"));
            assert!(!db.contains_key(b"a"));
            assert_eq!(db.len(), 2);
            assert!(!db.is_empty());
            let st = db.stats();
            assert_eq!(st.puts, 4);
            assert_eq!(st.deletes, 2);
            if backend == ringcask::IoBackend::Pread {
                assert_eq!(st.io_backend, IoBackendKind::Pread);
            }
            db.close().await.expect("close");
        });
    }
}

#[test]
fn both_read_paths_return_the_same_values() {
    // Inline (page-cache reads on the caller's thread) and io-thread reads, on both backends.
    for backend in backends() {
        for inline in [true, false] {
            let tmp = tempfile::tempdir().expect("tmp");
            run(async {
                let opts = small_opts().io_backend(backend).inline_reads(inline);
                let db = open(tmp.path(), opts).await;
                for i in 0..200u32 {
                    db.put(format!("k{i}"), vec![i as u8; (i % 300) as usize])
                        .await
                        .expect("put");
                }
                for i in 0..200u32 {
                    let v = db.get(format!("k{i}").as_bytes()).await.expect("get");
                    assert_eq!(v.as_deref(), Some(&vec![i as u8; (i % 300) as usize][..]));
                }
                let st = db.stats();
                if inline {
                    assert!(st.reads_inline > 0, "{st:?}");
                } else {
                    assert_eq!(st.reads_inline, 0);
                    // Submitted by the caller to the shared ring on io_uring, through a read
                    // thread on the `pread` backend.
                    assert_eq!(st.reads_io_thread + st.reads_ring, 200, "{st:?}");
                    let ring = st.io_backend == ringcask::IoBackendKind::IoUring;
                    assert_eq!(st.reads_ring, if ring { 200 } else { 0 }, "{st:?}");
                }
            });
        }
    }
}

#[test]
fn io_uring_is_used_when_available() {
    // This machine and CI allow io_uring; the fallback is only for sandboxes that forbid it.
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        let st = db.stats();
        match st.io_fallback_reason {
            None => assert_eq!(st.io_backend, IoBackendKind::IoUring),
            Some(reason) => {
                assert_eq!(st.io_backend, IoBackendKind::Pread);
                eprintln!("io_uring unavailable here: {reason}");
            }
        }
    });
}

#[test]
fn keys_and_prefixes() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        for k in ["user/1", "user/2", "order/1", "user/3"] {
            db.put(k, "x").await.expect("put");
        }
        db.delete("user/2").await.expect("delete");
        let mut all = db.keys();
        all.sort();
        assert_eq!(all, vec!["order/1", "user/1", "user/3"]);
        let mut users = db.keys_with_prefix(b"user/");
        users.sort();
        assert_eq!(users, vec!["user/1", "user/3"]);
        assert!(db.keys_with_prefix(b"nope").is_empty());
    });
}

#[test]
fn ttl_expiry_reads_absent_and_stays_gone_after_reopen() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        db.put("stay", "v").await.expect("put");
        db.put("old", "v0").await.expect("put");
        db.put_with_ttl("old", "v1", Duration::from_millis(150))
            .await
            .expect("put ttl");
        db.put_with_ttl("long", "v", Duration::from_secs(3600))
            .await
            .expect("put ttl");
        assert_eq!(
            db.get(b"old").await.expect("get").as_deref(),
            Some(&b"v1"[..])
        );
        assert_eq!(db.len(), 3);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            db.get(b"old").await.expect("get"),
            None,
            "expired key must read absent"
        );
        assert!(!db.contains_key(b"old"));
        assert_eq!(db.len(), 2);
        let mut keys = db.keys();
        keys.sort();
        assert_eq!(keys, vec!["long", "stay"]);
        db.close().await.expect("close");
        // The expired put superseded "v0": recovery must not bring v0 back.
        let db = open(tmp.path(), small_opts()).await;
        assert_eq!(db.get(b"old").await.expect("get"), None);
        assert_eq!(
            db.get(b"long").await.expect("get").as_deref(),
            Some(&b"v"[..])
        );
        assert_eq!(db.len(), 2);
    });
}

#[test]
fn rotation_across_many_files_and_reopen_uses_hints() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut model = BTreeMap::new();
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        let mut rng = Rng::new(1);
        for i in 0..2000u32 {
            let k = format!("key-{}", rng.below(500));
            let n = rng.below(200) as usize;
            let v = rng.bytes(n);
            if i % 10 == 9 {
                db.delete(k.clone()).await.expect("delete");
                model.remove(&k);
            } else {
                db.put(k.clone(), v.clone()).await.expect("put");
                model.insert(k, v);
            }
        }
        let files = data_files(tmp.path()).len();
        assert!(files > 10, "expected many datafiles, got {files}");
        for (k, v) in &model {
            assert_eq!(
                db.get(k.as_bytes()).await.expect("get").as_deref(),
                Some(&v[..])
            );
        }
        let st = db.stats();
        assert!(st.dead_bytes > 0 && st.fragmentation > 0.0);
        db.close().await.expect("close");
        assert_eq!(hint_files(tmp.path()).len(), data_files(tmp.path()).len());

        let db = open(tmp.path(), small_opts().keydir_snapshot(false)).await;
        let r = db.stats().recovery;
        assert_eq!(r.files_scanned, 0, "every sealed file has a hint: {r:?}");
        assert_eq!(r.files_from_hints, files);
        assert_eq!(db.len(), model.len());
        for (k, v) in &model {
            assert_eq!(
                db.get(k.as_bytes()).await.expect("get").as_deref(),
                Some(&v[..])
            );
        }
        db.close().await.expect("close");

        // Without hint files, the scan must produce the same contents.
        for h in hint_files(tmp.path()) {
            std::fs::remove_file(h).expect("rm hint");
        }
        let db = open(tmp.path(), small_opts()).await;
        let r = db.stats().recovery;
        assert_eq!(r.files_from_hints, 0);
        assert!(r.files_scanned >= files);
        assert_eq!(db.len(), model.len());
        for (k, v) in &model {
            assert_eq!(
                db.get(k.as_bytes()).await.expect("get").as_deref(),
                Some(&v[..])
            );
        }
    });
}

#[test]
fn reopen_after_drop_without_close() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        for i in 0..300u32 {
            db.put(format!("k{i}"), format!("v{i}")).await.expect("put");
        }
        let clone = db.clone();
        drop(db);
        clone
            .put("last", "x")
            .await
            .expect("a clone keeps the store open");
        drop(clone);
        // Drop released the lock before returning.
        let db = open(tmp.path(), small_opts()).await;
        assert_eq!(db.len(), 301);
        assert_eq!(
            db.get(b"k7").await.expect("get").as_deref(),
            Some(&b"v7"[..])
        );
        assert_eq!(
            db.get(b"last").await.expect("get").as_deref(),
            Some(&b"x"[..])
        );
    });
}

#[test]
fn batches_apply_all_or_nothing_and_survive_reopen() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        db.put("x", "old").await.expect("put");
        db.write(
            WriteBatch::new()
                .put("a", "1")
                .put("b", "2")
                .delete("x")
                .put_with_ttl("t", "3", Duration::from_secs(60)),
        )
        .await
        .expect("batch");
        db.write(WriteBatch::new())
            .await
            .expect("empty batch is a no-op");
        // An invalid op anywhere rejects the whole batch before anything is written.
        let bad = WriteBatch::new().put("c", "3").put("", "empty key");
        assert!(matches!(db.write(bad).await, Err(Error::EmptyKey)));
        assert_eq!(db.get(b"c").await.expect("get"), None);
        // A batch larger than a datafile cannot be atomic in one file.
        let mut big = WriteBatch::new();
        for i in 0..100 {
            big = big.put(format!("big{i}"), vec![0u8; 1000]);
        }
        assert!(matches!(
            db.write(big).await,
            Err(Error::BatchTooLarge { .. })
        ));
        assert_eq!(db.get(b"big0").await.expect("get"), None);
        assert_eq!(db.stats().batches, 1);
        db.close().await.expect("close");

        let db = open(tmp.path(), small_opts()).await;
        assert_eq!(db.get(b"a").await.expect("get").as_deref(), Some(&b"1"[..]));
        assert_eq!(db.get(b"b").await.expect("get").as_deref(), Some(&b"2"[..]));
        assert_eq!(db.get(b"t").await.expect("get").as_deref(), Some(&b"3"[..]));
        assert_eq!(db.get(b"x").await.expect("get"), None);
    });
}

#[test]
fn second_open_is_locked_and_close_releases() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        let second = Db::open(tmp.path(), small_opts()).await;
        assert!(matches!(second, Err(Error::Locked { .. })), "{second:?}");
        db.close().await.expect("close");
        assert!(matches!(db.put("k", "v").await, Err(Error::Closed)));
        assert!(matches!(db.get(b"k").await, Err(Error::Closed)));
        assert!(matches!(db.sync().await, Err(Error::Closed)));
        db.close().await.expect("second close is a no-op");
        let again = Db::open(tmp.path(), small_opts())
            .await
            .expect("reopen after close");
        drop(again);
    });
}

#[test]
fn oversized_and_empty_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let opts = small_opts().max_key_bytes(8).max_value_bytes(100);
        let db = open(tmp.path(), opts).await;
        assert!(matches!(db.put("", "v").await, Err(Error::EmptyKey)));
        assert!(matches!(db.delete("").await, Err(Error::EmptyKey)));
        assert!(matches!(
            db.put("123456789", "v").await,
            Err(Error::KeyTooLarge { len: 9, max: 8 })
        ));
        assert!(matches!(
            db.put("k", vec![0u8; 101]).await,
            Err(Error::ValueTooLarge { len: 101, max: 100 })
        ));
        // The limit errors name the option that raises them.
        let e = db.put("123456789", "v").await.expect_err("too long");
        assert!(e.to_string().contains("Options::max_key_bytes"), "{e}");
        let e = db.put("k", vec![0u8; 101]).await.expect_err("too large");
        assert!(e.to_string().contains("Options::max_value_bytes"), "{e}");
        db.put("k", vec![7u8; 100])
            .await
            .expect("at the limit is fine");
        assert_eq!(db.len(), 1);
        // A batch takes borrowed keys and values, like `put`.
        let (key, value) = (String::from("borrowed"), vec![1u8, 2, 3]);
        db.write(
            WriteBatch::new()
                .put(&key, &value)
                .delete(key.as_bytes())
                .put(&key[..3], "v"),
        )
        .await
        .expect("batch of borrowed bytes");
        assert_eq!(
            db.get("bor").await.expect("get").as_deref(),
            Some(&b"v"[..])
        );
        assert!(db.get(&key).await.expect("get").is_none());
        let bad = Db::open(
            tmp.path().join("other"),
            Options::default().max_file_bytes(1),
        )
        .await;
        assert!(matches!(bad, Err(Error::InvalidOptions(_))));
    });
}

#[test]
fn a_value_larger_than_a_file_gets_a_file_of_its_own() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        db.put("small", "s").await.expect("put");
        let big = vec![42u8; 100_000];
        db.put("big", big.clone()).await.expect("put big");
        db.put("after", "a").await.expect("put");
        assert_eq!(
            db.get(b"big").await.expect("get").as_deref(),
            Some(&big[..])
        );
        db.close().await.expect("close");
        let db = open(tmp.path(), small_opts()).await;
        assert_eq!(
            db.get(b"big").await.expect("get").as_deref(),
            Some(&big[..])
        );
        assert_eq!(
            db.get(b"after").await.expect("get").as_deref(),
            Some(&b"a"[..])
        );
    });
}

#[test]
fn many_tasks_on_a_multi_threaded_runtime() {
    let tmp = tempfile::tempdir().expect("tmp");
    let rt = common::multi_thread_rt(4);
    rt.block_on(async {
        let db = Db::open(
            tmp.path(),
            small_opts()
                .max_file_bytes(256 * 1024)
                .sync(SyncPolicy::Always)
                .read_threads(2),
        )
        .await
        .expect("open");
        let mut tasks = Vec::new();
        for t in 0..64u32 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50u32 {
                    let k = format!("t{t}-k{i}");
                    db.put(k.clone(), format!("{t}:{i}")).await.expect("put");
                    let v = db.get(k.as_bytes()).await.expect("get");
                    assert_eq!(v, Some(Bytes::from(format!("{t}:{i}"))), "read-your-write");
                    if i % 5 == 0 {
                        db.delete(k.clone()).await.expect("delete");
                        assert_eq!(db.get(k.as_bytes()).await.expect("get"), None);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(db.len(), 64 * 40);
        let st = db.stats();
        assert_eq!(st.puts, 64 * 50);
        // Group commit: concurrent durable writers share syncs.
        assert!(
            st.syncs < st.puts + st.deletes,
            "expected shared fsyncs, got {} syncs for {} writes",
            st.syncs,
            st.puts + st.deletes
        );
        db.close().await.expect("close");
    });
}

#[test]
fn usable_from_a_plain_executor_and_sync_policies() {
    for policy in [
        SyncPolicy::Always,
        SyncPolicy::IntervalMs(5),
        SyncPolicy::Never,
    ] {
        let tmp = tempfile::tempdir().expect("tmp");
        futures::executor::block_on(async {
            let db = Db::open(tmp.path(), Options::default().sync(policy))
                .await
                .expect("open");
            for i in 0..20u32 {
                db.put(format!("k{i}"), "v").await.expect("put");
            }
            db.sync().await.expect("sync");
            if policy == SyncPolicy::Always {
                assert!(db.stats().syncs >= 20);
            }
            if let SyncPolicy::IntervalMs(_) = policy {
                let before = db.stats().syncs;
                db.put("one-more", "v").await.expect("put");
                common::poll_until("the interval sync", Duration::from_secs(5), || {
                    db.stats().syncs > before
                });
                assert!(db.stats().syncs >= 2, "the interval sync should have run");
            }
            assert_eq!(
                db.get(b"k3").await.expect("get").as_deref(),
                Some(&b"v"[..])
            );
            db.close().await.expect("close");
        });
    }
}

#[test]
fn a_large_active_file_spills_its_hint_and_reopens_from_it() {
    // 40,000 records of 16-byte keys make ~2 MB of hint records: the writer spills them to the
    // hint's temporary file as it goes instead of holding them until the file is sealed.
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let opts = Options::default().sync(SyncPolicy::Never).auto_merge(false);
        let db = open(tmp.path(), opts.clone()).await;
        for i in 0..40_000u32 {
            db.put(format!("key-{i:012}"), format!("v{i}"))
                .await
                .expect("put");
        }
        let spilled = std::fs::read_dir(tmp.path())
            .expect("dir")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".hint.tmp"));
        assert!(
            spilled,
            "the hint of the active file should have spilled to disk"
        );
        db.delete("key-000000000007").await.expect("delete");
        db.close().await.expect("close");
        assert_eq!(hint_files(tmp.path()).len(), 1);
        let db = open(tmp.path(), opts.keydir_snapshot(false)).await;
        let r = db.stats().recovery;
        assert_eq!((r.files_from_hints, r.files_scanned), (1, 0), "{r:?}");
        assert_eq!(db.len(), 39_999);
        for i in (0..40_000u32).step_by(997) {
            let want = (i != 7).then(|| format!("v{i}"));
            let got = db
                .get(format!("key-{i:012}").as_bytes())
                .await
                .expect("get");
            assert_eq!(got.as_deref(), want.as_deref().map(str::as_bytes));
        }
    });
}

/// Reads and lookups take any byte-like key, as writes do.
#[test]
fn reads_take_any_byte_like_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    common::run(async {
        let db = Db::open(tmp.path(), common::small_opts())
            .await
            .expect("open");
        db.put("name", "ringcask").await.expect("put");
        let want = Some(bytes::Bytes::from_static(b"ringcask"));
        assert_eq!(db.get("name").await.expect("get &str"), want);
        assert_eq!(
            db.get(String::from("name")).await.expect("get String"),
            want
        );
        assert_eq!(db.get(b"name").await.expect("get &[u8; N]"), want);
        assert_eq!(db.get(b"name".to_vec()).await.expect("get Vec"), want);
        let key = bytes::Bytes::from_static(b"name");
        assert_eq!(db.get(&key).await.expect("get &Bytes"), want);
        assert!(db.contains_key("name"));
        assert!(!db.contains_key(String::from("other")));
        assert_eq!(db.keys_with_prefix("na"), vec![key]);
        assert!(db.keys_with_prefix("x").is_empty());
        db.close().await.expect("close");
    });
}

/// `len` is constant time and counts what its docs say; a closed handle holds nothing.
#[test]
fn len_counts_what_its_docs_say_and_a_closed_handle_holds_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        db.put("a", "1").await.expect("put");
        db.put_with_ttl("b", "2", Duration::ZERO)
            .await
            .expect("put expired");
        assert_eq!(db.len(), 1, "a put whose TTL already passed is not counted");
        db.put("b", "old").await.expect("put");
        db.put_with_ttl("b", "3", Duration::ZERO)
            .await
            .expect("put expired over a value");
        assert_eq!(
            db.get("b").await.expect("get"),
            None,
            "it hides the older value"
        );
        assert_eq!(db.len(), 1);
        db.put_with_ttl("c", "4", Duration::from_millis(100))
            .await
            .expect("put ttl");
        assert_eq!(db.len(), 2);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(db.len(), 2, "an expired key counts until it is reclaimed");
        assert!(!db.contains_key("c"));
        assert_eq!(db.get("c").await.expect("get"), None);
        assert_eq!(db.len(), 1, "the read reclaimed it");
        db.close().await.expect("close");
        assert_eq!(db.len(), 0);
        assert!(db.is_empty() && db.keys().is_empty() && !db.contains_key("a"));
        assert!(matches!(db.get("a").await, Err(Error::Closed)));
        assert!(matches!(db.put("a", "x").await, Err(Error::Closed)));
    });
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        assert_eq!(db.len(), 1, "after a reopen too");
        assert_eq!(db.get("b").await.expect("get"), None);
    });
}
