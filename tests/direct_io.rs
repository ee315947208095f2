//! `IoMode::Direct`: values of sealed datafiles are read with `O_DIRECT` (aligned blocks through
//! the read threads), the active file stays buffered; every value comes back exact, on both
//! backends, after rotation, reopen and merge, and a damaged record is still caught.
//!
//! Direct mode has a value cache by default, filled by writes as well as reads.
//!
//! Where the file system under the test's temporary directory refuses `O_DIRECT`, the reads
//! must fall back to buffered ones (and say so in `Stats::reads_direct`); the test checks
//! whichever of the two this machine gives.

mod common;

use std::os::unix::fs::FileExt;

use common::{backends, data_files, needs_direct, run, small_opts, supports_direct};
use ringcask::testing::FaultInjector;
use ringcask::{Db, Error, IoBackend, IoMode, SyncPolicy};

/// Values of many sizes, so that records start and end anywhere within a 4 KiB block, span two
/// or more blocks, and (at 70 KiB) take the large-value write path.
fn value(i: u32) -> Vec<u8> {
    let len = [0usize, 1, 100, 3000, 4096, 4097, 5000, 9000, 70_000][i as usize % 9];
    (0..len).map(|j| (i as usize * 31 + j * 7) as u8).collect()
}

async fn check_all(db: &Db, n: u32) {
    for i in 0..n {
        let got = db.get(format!("key{i}")).await.expect("get");
        assert_eq!(got.as_deref(), Some(&value(i)[..]), "key{i}");
    }
}

#[test]
fn direct_reads_return_every_value_across_rotation_reopen_and_merge() {
    for (backend, ring) in backends().into_iter().flat_map(|b| [(b, true), (b, false)]) {
        let tmp = tempfile::tempdir().expect("tmp");
        let direct_ok = supports_direct(tmp.path());
        let opts = || {
            small_opts()
                .max_file_bytes(64 * 1024)
                .io_backend(backend)
                .io_mode(IoMode::Direct)
                .caller_submits_reads(ring)
                // Without the default value cache: these reads must reach the files.
                .value_cache_bytes(0)
        };
        // The caller submits its reads to the shared ring where it can (io_uring); a read
        // thread reads them otherwise, and reads the files the file system refuses to open
        // `O_DIRECT` either way.
        let via_ring = ring && backend != IoBackend::Pread;
        let n = 120u32;
        run(async {
            let db = Db::open(tmp.path(), opts()).await.expect("open");
            for i in 0..n {
                db.put(format!("key{i}"), value(i)).await.expect("put");
            }
            assert!(data_files(tmp.path()).len() > 3, "the store rotated");
            check_all(&db, n).await;
            let s = db.stats();
            if via_ring {
                assert!(s.reads_ring > 0, "{backend:?}: {s:?}");
                if direct_ok {
                    assert_eq!(s.reads_io_thread, 0, "{backend:?}: {s:?}");
                } else {
                    assert!(s.reads_io_thread > 0, "{backend:?}: {s:?}");
                }
            } else {
                assert_eq!(s.reads_ring, 0, "{backend:?} ring {ring}: {s:?}");
                assert!(
                    s.reads_io_thread > 0,
                    "{backend:?}: sealed reads went to the read thread"
                );
            }
            if direct_ok {
                assert!(s.reads_direct > 0, "{backend:?}: {s:?}");
            } else {
                assert_eq!(s.reads_direct, 0, "{backend:?}: O_DIRECT is refused here");
            }
            // Overwrite a third (dead bytes), merge everything sealed, and read again.
            for i in (0..n).step_by(3) {
                db.put(format!("key{i}"), value(i))
                    .await
                    .expect("overwrite");
            }
            db.merge().await.expect("merge");
            check_all(&db, n).await;
            db.close().await.expect("close");

            let db = Db::open(tmp.path(), opts()).await.expect("reopen");
            check_all(&db, n).await;
            if direct_ok {
                assert!(db.stats().reads_direct > 0, "{backend:?} after reopen");
            }
            assert_eq!(
                db.stats().reads_ring > 0,
                via_ring,
                "{backend:?} after reopen"
            );
            db.close().await.expect("close");
        });
    }
}

#[test]
fn a_damaged_record_read_directly_is_corrupt_not_a_wrong_value() {
    for backend in backends() {
        let tmp = tempfile::tempdir().expect("tmp");
        let opts = small_opts()
            .max_file_bytes(16 * 1024)
            .io_backend(backend)
            .io_mode(IoMode::Direct)
            .value_cache_bytes(0);
        run(async {
            let db = Db::open(tmp.path(), opts.clone()).await.expect("open");
            for i in 0..40u32 {
                db.put(format!("k{i:02}"), vec![i as u8; 1000])
                    .await
                    .expect("put");
            }
            db.close().await.expect("close");
            // Flip a byte inside the first sealed file's records.
            let first = &data_files(tmp.path())[0];
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(first)
                .expect("open datafile");
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, 2000).expect("read");
            f.write_all_at(&[b[0] ^ 0xFF], 2000).expect("write");
            f.sync_all().expect("sync");
            drop(f);

            let db = Db::open(tmp.path(), opts).await.expect("reopen");
            let mut corrupt = 0;
            for i in 0..40u32 {
                match db.get(format!("k{i:02}")).await {
                    Ok(v) => assert_eq!(v.as_deref(), Some(&vec![i as u8; 1000][..])),
                    Err(Error::Corrupt { .. }) => corrupt += 1,
                    Err(e) => panic!("{backend:?}: k{i:02}: {e}"),
                }
            }
            assert_eq!(corrupt, 1, "{backend:?}: exactly the damaged record");
            db.close().await.expect("close");
        });
    }
}

#[test]
fn direct_mode_caches_values_by_default_and_writes_fill_the_cache() {
    let tmp = tempfile::tempdir().expect("tmp");
    let n = 90u32;
    let reads = |db: &Db| {
        let s = db.stats();
        (
            s.reads_inline + s.reads_io_thread + s.reads_ring,
            s.reads_cached,
        )
    };
    run(async {
        // Direct, defaults: every value just written is served from the cache, no read at all
        // (one datafile: a write that finds the active file full goes through the writer
        // thread, and is cached on its first read instead).
        let opts = || small_opts().max_file_bytes(8 << 20).io_mode(IoMode::Direct);
        let db = Db::open(tmp.path(), opts()).await.expect("open");
        for i in 0..n {
            db.put(format!("key{i}"), value(i)).await.expect("put");
        }
        assert!(db.stats().value_cache_bytes > 0, "writes filled the cache");
        check_all(&db, n).await;
        assert_eq!(reads(&db), (0, u64::from(n)));
        // An overwritten value is never served: the cache is keyed by record.
        db.put("key1", "new").await.expect("overwrite");
        assert_eq!(
            db.get("key1").await.expect("get").as_deref(),
            Some(&b"new"[..])
        );
        db.put("key1", value(1)).await.expect("restore");
        db.close().await.expect("close");

        // Reopened without the warm-up (`tests/warm_cache.rs`): the first pass reads the files
        // (a read also caches the live values stored after its record in its block: the store
        // fits the cache), the second is served from the cache.
        let db = Db::open(tmp.path(), opts().warm_value_cache(false))
            .await
            .expect("reopen");
        check_all(&db, n).await;
        let (files, cached) = reads(&db);
        assert_eq!(files + cached, u64::from(n));
        if supports_direct(tmp.path()) {
            let ahead = db.stats().values_read_ahead;
            assert!(cached > 0 && cached <= ahead, "{:?}", db.stats());
        }
        check_all(&db, n).await;
        assert_eq!(reads(&db), (files, u64::from(n) + cached));
        db.close().await.expect("close");

        // Direct with the cache set to 0, and buffered by default: no cache.
        for opts in [
            small_opts().io_mode(IoMode::Direct).value_cache_bytes(0),
            small_opts(),
        ] {
            let db = Db::open(tmp.path(), opts).await.expect("open");
            db.put("fresh", "value").await.expect("put");
            check_all(&db, n).await;
            check_all(&db, n).await;
            let s = db.stats();
            assert_eq!((s.value_cache_bytes, s.reads_cached), (0, 0), "{s:?}");
            db.close().await.expect("close");
        }
    });
}

/// A direct read (whole blocks) of a record that holds its value also caches the live values
/// stored after it in its block, while the whole store fits the cache: a pass over the keys in
/// the order they were written reads about one block per block, not one per key. Records
/// overwritten or deleted since are not served; with a cache too small for the store nothing
/// is read ahead.
#[test]
fn a_direct_read_caches_the_live_values_stored_after_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    needs_direct(tmp.path());
    let n = 400u32;
    let val = |i: u32, gen: u32| format!("value {i}/{gen} {}", "x".repeat(60 + i as usize % 40));
    let mut model: Vec<Option<String>> = (0..n).map(|i| Some(val(i, 0))).collect();
    let opts = |cache: u64| {
        // Without the warm-up after open (`tests/warm_cache.rs`), which would cache every
        // value before the reads.
        small_opts()
            .io_mode(IoMode::Direct)
            .value_cache_bytes(cache)
            .warm_value_cache(false)
    };
    run(async {
        let db = Db::open(tmp.path(), opts(64 << 20)).await.expect("open");
        for i in 0..n {
            db.put(format!("key{i}"), val(i, 0)).await.expect("put");
        }
        for i in (0..n).step_by(7) {
            db.put(format!("key{i}"), val(i, 1))
                .await
                .expect("overwrite");
            model[i as usize] = Some(val(i, 1));
        }
        for i in (3..n).step_by(11) {
            db.delete(format!("key{i}")).await.expect("delete");
            model[i as usize] = None;
        }
        db.close().await.expect("close");
        let live = model.iter().flatten().count() as u64;

        for (cache, reads_ahead) in [(64 << 20, true), (16 << 10, false)] {
            let db = Db::open(tmp.path(), opts(cache)).await.expect("reopen");
            for (i, want) in model.iter().enumerate() {
                let got = db.get(format!("key{i}")).await.expect("get");
                assert_eq!(got.as_deref(), want.as_deref().map(str::as_bytes), "key{i}");
            }
            let s = db.stats();
            let reads = s.reads_ring + s.reads_io_thread + s.reads_inline;
            assert_eq!(reads + s.reads_cached, live, "{s:?}");
            if reads_ahead {
                assert!(s.reads_cached <= s.values_read_ahead, "{s:?}");
                assert!(reads * 8 < live, "{reads} reads for {live} values: {s:?}");
            } else {
                assert_eq!((s.values_read_ahead, reads), (0, live), "{s:?}");
            }
            db.close().await.expect("close");
        }
    });
}

/// The direct-IO writer (`IoMode::Direct` with `SyncPolicy::Always`): appends wait in memory
/// for the group's `O_DIRECT | O_DSYNC` write, reads of records not yet written come from
/// there, the rest of the active file is read with `O_DIRECT`; every value is exact across
/// rotation, merge and reopen, and each sealed file is trimmed to its records.
#[test]
fn the_direct_writer_writes_groups_and_serves_its_unwritten_tail() {
    for backend in backends() {
        let tmp = tempfile::tempdir().expect("tmp");
        let direct_ok = supports_direct(tmp.path());
        let opts = || {
            small_opts()
                .max_file_bytes(64 * 1024)
                .sync(SyncPolicy::Always)
                .io_backend(backend)
                .io_mode(IoMode::Direct)
                .value_cache_bytes(0)
        };
        let n = 120u32;
        run(async {
            let db = Db::open(tmp.path(), opts()).await.expect("open");
            for i in 0..n {
                db.put(format!("key{i}"), value(i)).await.expect("put");
                // The record just written is read back at once: from the partly filled last
                // block the writer keeps, or from the file for a record that filled its block.
                let got = db.get(format!("key{i}")).await.expect("get");
                assert_eq!(got.as_deref(), Some(&value(i)[..]), "key{i} after its put");
            }
            let s = db.stats();
            if direct_ok {
                assert!(s.reads_tail > 0, "{backend:?}: {s:?}");
                // Every put is its own group here (one writer): one write each.
                assert!(s.syncs >= u64::from(n), "{backend:?}: {s:?}");
            } else {
                assert_eq!(s.reads_tail, 0, "{backend:?}: written buffered here");
            }
            check_all(&db, n).await;
            for i in (0..n).step_by(3) {
                db.put(format!("key{i}"), value(i))
                    .await
                    .expect("overwrite");
            }
            db.merge().await.expect("merge");
            check_all(&db, n).await;
            db.close().await.expect("close");
            // Sealed files hold their records and no padding past them.
            for f in data_files(tmp.path()) {
                let len = std::fs::metadata(&f).expect("meta").len();
                assert_ne!(len % 4096, 0, "{}: {len} bytes", f.display());
            }
            let db = Db::open(tmp.path(), opts()).await.expect("reopen");
            check_all(&db, n).await;
            db.close().await.expect("close");
        });
    }
}

/// A checkpoint taken while the direct-IO writer still holds acknowledged-to-readers records in
/// memory (its group write is stalled: the disk is held) must contain them: it has the writer
/// write its tail out before the active file is copied.
#[test]
fn a_checkpoint_writes_the_direct_writers_tail_out_first() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fault = FaultInjector::new();
    let opts = small_opts()
        .max_file_bytes(1 << 20)
        // No preallocation: a direct-mode append then makes no IO of its own.
        .preallocate_bytes(0)
        .sync(SyncPolicy::Always)
        .io_mode(IoMode::Direct)
        .value_cache_bytes(0)
        .fault_injector(fault.clone());
    let live = tmp.path().join("live");
    let dest = tmp.path().join("backup");
    let db = run(Db::open(&live, opts.clone())).expect("open");
    run(db.put("first", "durable")).expect("put");
    fault.hold();
    // Polled once: appended to the tail and its sync requested, which the held disk stalls.
    let mut put = Box::pin(db.put("second", "visible, not yet written"));
    assert!(futures::FutureExt::now_or_never(&mut put).is_none());
    drop(put);
    let got = run(db.get("second")).expect("get");
    assert_eq!(got.as_deref(), Some(&b"visible, not yet written"[..]));
    assert!(db.stats().reads_tail > 0, "served from the tail");
    let checkpoint = {
        let (db, dest) = (db.clone(), dest.clone());
        std::thread::spawn(move || run(db.checkpoint(dest)))
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    fault.release();
    checkpoint.join().expect("thread").expect("checkpoint");
    let backup_opts = small_opts().io_mode(IoMode::Direct);
    let backup = run(Db::open(&dest, backup_opts)).expect("open backup");
    for (k, v) in [("first", "durable"), ("second", "visible, not yet written")] {
        let got = run(backup.get(k)).expect("get");
        assert_eq!(got.as_deref(), Some(v.as_bytes()), "{k} in the checkpoint");
    }
    run(backup.close()).expect("close");
    run(db.close()).expect("close");
}

/// Direct reads through the read threads and group writes through io_uring go from buffers
/// registered with the io thread's ring (fixed buffers) when they fit — records up to 16 KiB of blocks, groups up to
/// 1 MiB — and from plain allocations when they do not; both give back every value exactly.
/// Registering pins memory: this needs `CAP_IPC_LOCK` (root) or an `RLIMIT_MEMLOCK` of a few
/// MiB per store.
#[test]
fn registered_buffers_carry_small_direct_io_and_large_io_falls_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    needs_direct(tmp.path());
    let opts = || {
        small_opts()
            .max_file_bytes(8 << 20)
            .sync(SyncPolicy::Always)
            .io_mode(IoMode::Direct)
            // Reads through the read threads, whose rings have the registered buffers.
            .caller_submits_reads(false)
            .value_cache_bytes(0)
            // The 1.5 MiB values in their records: the datafile's group writes are large.
            .values_apart(false)
    };
    let small = |i: u32| vec![i as u8; 3000 + i as usize];
    let large = |i: u32| vec![0x80 | i as u8; (3 << 19) + i as usize];
    run(async {
        let db = Db::open(tmp.path(), opts()).await.expect("open");
        assert_eq!(db.stats().io_fallback_reason, None, "io_uring is up");
        for i in 0..20u32 {
            db.put(format!("s{i}"), small(i)).await.expect("put");
        }
        for i in 0..2u32 {
            db.put(format!("l{i}"), large(i)).await.expect("put");
        }
        let s = db.stats();
        assert!(s.writes_registered >= 20, "{s:?}");
        assert!(
            s.writes_registered < s.syncs,
            "1.5 MiB groups go plain: {s:?}"
        );
        db.close().await.expect("close");

        // Reopened: every record is in a sealed file, read with O_DIRECT.
        let db = Db::open(tmp.path(), opts()).await.expect("reopen");
        for i in 0..20u32 {
            let got = db.get(format!("s{i}")).await.expect("get");
            assert_eq!(got.as_deref(), Some(&small(i)[..]), "s{i}");
        }
        for i in 0..2u32 {
            let got = db.get(format!("l{i}")).await.expect("get");
            assert_eq!(got.as_deref(), Some(&large(i)[..]), "l{i}");
        }
        let s = db.stats();
        assert_eq!(s.reads_direct, 22, "{s:?}");
        assert_eq!(s.reads_registered, 20, "the large ones go plain: {s:?}");
        db.close().await.expect("close");
    });
}

/// A lone durable writer under the direct-IO writer makes its group writes itself, through the
/// shared ring (`Stats::syncs_led`), once it has been alone for a while; concurrent durable
/// writers leave their groups to the writer thread. A leader whose future is dropped while
/// its write is stalled leaves the records for the next writer: nothing is lost, nothing
/// hangs. Every value is back after a reopen.
#[test]
fn a_lone_durable_writer_leads_its_own_group_writes() {
    let tmp = tempfile::tempdir().expect("tmp");
    needs_direct(tmp.path());
    let fault = FaultInjector::new();
    let opts = || {
        small_opts()
            .max_file_bytes(1 << 20)
            // An append then makes no IO of its own (no preallocation, no hint spill): the
            // held disk below stalls only the group write, not the thread that releases it.
            .preallocate_bytes(0)
            .hint_spill_bytes(1 << 20)
            .sync(SyncPolicy::Always)
            .io_mode(IoMode::Direct)
            .value_cache_bytes(0)
            .fault_injector(fault.clone())
    };
    let rt = common::multi_thread_rt(2);
    let db = rt.block_on(Db::open(tmp.path(), opts())).expect("open");
    // One writer: after a run of lone syncs, every sync is led by the caller.
    for i in 0..100u32 {
        rt.block_on(db.put(format!("lone{i}"), value(i)))
            .expect("put");
    }
    let s = db.stats();
    assert!(s.syncs_led >= 60, "a lone writer leads: {s:?}");
    assert!(s.syncs_led <= s.syncs, "{s:?}");
    // Eight writers at once: the writer thread forms their groups.
    let led_before = s.syncs_led;
    rt.block_on(async {
        let tasks: Vec<_> = (0..8u32)
            .map(|t| {
                let db = db.clone();
                tokio::spawn(async move {
                    for i in 0..50u32 {
                        let k = t * 1000 + i;
                        db.put(format!("many{k}"), value(k)).await.expect("put");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
    });
    let s = db.stats();
    let led = s.syncs_led - led_before;
    assert!(led < 40, "8 writers lead {led} of 400 syncs: {s:?}");
    // Alone again, then a leader's write stalled and its future dropped.
    for i in 100..140u32 {
        rt.block_on(db.put(format!("lone{i}"), value(i)))
            .expect("put");
    }
    let led_before = db.stats().syncs_led;
    fault.hold();
    let mut put = Box::pin(db.put("dropped", "appended, its group write stalled"));
    assert!(futures::FutureExt::now_or_never(&mut put).is_none());
    drop(put);
    assert!(db.stats().syncs_led > led_before, "the dropped put led");
    let next = {
        let db = db.clone();
        std::thread::spawn(move || run(db.put("next", "after the dropped leader")))
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    fault.release();
    next.join()
        .expect("thread")
        .expect("put after a dropped leader");
    rt.block_on(db.close()).expect("close");
    drop(db);
    let db = rt.block_on(Db::open(tmp.path(), opts())).expect("reopen");
    rt.block_on(async {
        for i in 0..140u32 {
            let got = db.get(format!("lone{i}")).await.expect("get");
            assert_eq!(got.as_deref(), Some(&value(i)[..]), "lone{i}");
        }
        for t in 0..8u32 {
            for i in 0..50u32 {
                let k = t * 1000 + i;
                let got = db.get(format!("many{k}")).await.expect("get");
                assert_eq!(got.as_deref(), Some(&value(k)[..]), "many{k}");
            }
        }
        for (k, v) in [
            ("dropped", "appended, its group write stalled"),
            ("next", "after the dropped leader"),
        ] {
            let got = db.get(k).await.expect("get");
            assert_eq!(got.as_deref(), Some(v.as_bytes()), "{k}");
        }
        db.close().await.expect("close");
    });
}
