//! Format v2, values kept apart (`Options::values_apart`, on by default under the direct-IO
//! writer): values of 3641..=4096 bytes (and other near-whole numbers of blocks) go to the
//! datafile's value file, each from a block boundary, and are read back with one aligned read
//! of their own blocks, checked against the CRC the keydir holds. Every value comes back
//! exact through every way a store opens (keydir snapshot, hint files, datafile scans), through
//! merge, iteration, checkpoints and a buffered reopen; a value missing from the value file
//! (a group write torn between the two files) cuts the last file's tail there, and a damaged
//! one is reported, not returned.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{needs_direct, run};
use futures::StreamExt;
use ringcask::testing::FaultInjector;
use ringcask::{Db, Error, GroupFlush, IoMode, Options, SyncPolicy};

/// A value for key `i`, version `v`: sizes that go apart (3641, 4096, 8192) and sizes that do
/// not (0, 100, 3000, 5000).
fn value(i: u32, v: u32) -> Vec<u8> {
    let len = [4096usize, 100, 3641, 4096, 3000, 8192, 5000, 0, 4096][(i + v) as usize % 9];
    (0..len)
        .map(|j| (i as usize * 31 + v as usize * 13 + j * 7) as u8)
        .collect()
}

fn opts() -> Options {
    Options::default()
        .io_mode(IoMode::Direct)
        .sync(SyncPolicy::Always)
        .max_file_bytes(256 * 1024)
        .preallocate_bytes(64 * 1024)
        // The reads must reach the files.
        .value_cache_bytes(0)
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    common::files_with_ext(dir, ext)
}

type Model = BTreeMap<String, Vec<u8>>;

/// A put of a key, or its delete (`None`).
type WriteOp = (String, Option<Vec<u8>>);

/// Applies `ops` (a put, or a delete for `None`) as two durable writers at once, even and odd
/// ops apart: a lone writer keeps its values in their records after a while (see the last
/// test), and these tests want them apart. Each key's ops stay in one writer, in order.
async fn two_writers(db: &Db, ops: Vec<WriteOp>) {
    let (even, odd): (Vec<_>, Vec<_>) = ops.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let writer = |part: Vec<(usize, WriteOp)>| async move {
        for (_, (k, v)) in part {
            match v {
                Some(v) => db.put(&k, v).await.expect("put"),
                None => db.delete(&k).await.expect("delete"),
            }
        }
    };
    futures::future::join(writer(even), writer(odd)).await;
}

/// Writes `n` keys, overwrites every third, deletes every seventh, and an atomic batch.
async fn fill(db: &Db, n: u32) -> Model {
    let mut model = Model::new();
    let puts = |v: u32, step: usize| {
        (0..n)
            .step_by(step)
            .map(|i| (format!("key{i:04}"), Some(value(i, v))))
            .collect::<Vec<_>>()
    };
    for (k, v) in puts(0, 1).into_iter().chain(puts(1, 3)) {
        model.insert(k, v.expect("a put"));
    }
    two_writers(db, puts(0, 1)).await;
    two_writers(db, puts(1, 3)).await;
    let deletes: Vec<_> = (0..n)
        .step_by(7)
        .map(|i| (format!("key{i:04}"), None))
        .collect();
    for (k, _) in &deletes {
        model.remove(k);
    }
    two_writers(db, deletes).await;
    let mut batch = ringcask::WriteBatch::new();
    for i in 0..5 {
        let (k, v) = (format!("batch{i}"), value(i, 2));
        batch = batch.put(k.clone(), v.clone());
        model.insert(k, v);
    }
    db.write(batch).await.expect("batch");
    model
}

async fn check(db: &Db, model: &Model, n: u32, what: &str) {
    for i in 0..n {
        let k = format!("key{i:04}");
        let got = db
            .get(&k)
            .await
            .unwrap_or_else(|e| panic!("{what}: get {k}: {e}"));
        assert_eq!(got.as_deref(), model.get(&k).map(|v| &v[..]), "{what}: {k}");
    }
    for (k, v) in model.iter().filter(|(k, _)| k.starts_with("batch")) {
        let got = db.get(k).await.expect("get");
        assert_eq!(got.as_deref(), Some(&v[..]), "{what}: {k}");
    }
}

async fn check_iter(db: &Db, model: &Model, what: &str) {
    let mut seen = Model::new();
    let mut it = db.snapshot().iter();
    while let Some(item) = it.next().await {
        let (k, v) = item.expect("iter item");
        let k = String::from_utf8(k.to_vec()).expect("utf8");
        assert!(
            seen.insert(k.clone(), v.to_vec()).is_none(),
            "{what}: {k} twice"
        );
    }
    assert_eq!(&seen, model, "{what}: iteration");
}

#[test]
fn values_apart_come_back_through_every_open_path_merge_iteration_and_checkpoint() {
    let tmp = tempfile::tempdir().expect("tmp");
    needs_direct(tmp.path());
    let n = 300;
    run(async {
        let db = Db::open(tmp.path(), opts()).await.expect("open");
        let model = fill(&db, n).await;
        let vals = files(tmp.path(), "vals");
        assert!(
            vals.len() > 1,
            "the store rotated, each datafile with a value file"
        );
        // The value files hold the values apart: whole blocks after a header block.
        for p in &vals {
            let len = std::fs::metadata(p).expect("meta").len();
            assert_eq!(len % 4096, 0, "{}", p.display());
        }
        // Sealed values apart are read with one aligned read of their blocks: the datafiles
        // hold no value bytes for them.
        let data: u64 = files(tmp.path(), "data")
            .iter()
            .map(|p| std::fs::metadata(p).expect("meta").len())
            .sum();
        let vals_bytes: u64 = vals
            .iter()
            .map(|p| std::fs::metadata(p).expect("meta").len())
            .sum();
        assert!(
            vals_bytes > data,
            "{vals_bytes} bytes apart, {data} in datafiles"
        );
        check(&db, &model, n, "live").await;
        check_iter(&db, &model, "live").await;
        let s = db.stats();
        assert!(s.reads_direct > 0, "direct reads: {s:?}");
        db.checkpoint(tmp.path().join("cp"))
            .await
            .expect("checkpoint");
        db.close().await.expect("close");

        // Keydir snapshot.
        let db = Db::open(tmp.path(), opts()).await.expect("reopen");
        assert!(db.stats().recovery.from_snapshot, "from the snapshot");
        check(&db, &model, n, "snapshot").await;
        db.close().await.expect("close");

        // Hint files.
        let db = Db::open(tmp.path(), opts().keydir_snapshot(false))
            .await
            .expect("reopen");
        assert!(db.stats().recovery.files_from_hints > 0);
        check(&db, &model, n, "hints").await;
        db.close().await.expect("close");

        // Datafile scans (each value checked in its value file).
        for h in files(tmp.path(), "hint") {
            std::fs::remove_file(h).expect("remove hint");
        }
        let db = Db::open(tmp.path(), opts().keydir_snapshot(false))
            .await
            .expect("reopen");
        let r = db.stats().recovery;
        assert_eq!((r.files_from_hints, r.truncated_bytes), (0, 0), "{r:?}");
        check(&db, &model, n, "scans").await;
        check_iter(&db, &model, "scans").await;

        // Merge keeps the values apart in its outputs' value files; the inputs' value files go
        // with them.
        let report = db.merge().await.expect("merge");
        assert!(!report.outputs.is_empty(), "{report:?}");
        for id in &report.outputs {
            let v = tmp.path().join(format!("{id:010}.vals"));
            assert!(v.exists(), "merge output {id} has a value file");
        }
        for id in &report.inputs {
            let v = tmp.path().join(format!("{id:010}.vals"));
            assert!(!v.exists(), "merge input {id}'s value file is gone");
        }
        check(&db, &model, n, "merged").await;
        check_iter(&db, &model, "merged").await;
        db.close().await.expect("close");
        let db = Db::open(tmp.path(), opts()).await.expect("reopen");
        check(&db, &model, n, "merged, reopened").await;
        db.close().await.expect("close");
        for v in files(tmp.path(), "vals") {
            let stem = v.file_stem().expect("stem").to_owned();
            let data = tmp.path().join(stem).with_extension("data");
            assert!(data.exists(), "{} outlived its datafile", v.display());
        }

        // Buffered mode reads a store written with values apart.
        let db = Db::open(tmp.path(), opts().io_mode(IoMode::Buffered))
            .await
            .expect("buffered reopen");
        check(&db, &model, n, "buffered").await;
        db.close().await.expect("close");

        // The checkpoint opens as a store of its own.
        let cp = Db::open(tmp.path().join("cp"), opts()).await.expect("cp");
        check(&cp, &model, n, "checkpoint").await;
        cp.close().await.expect("close");
    });
}

#[test]
fn without_values_apart_no_value_file_is_written() {
    let tmp = tempfile::tempdir().expect("tmp");
    needs_direct(tmp.path());
    run(async {
        let db = Db::open(tmp.path(), opts().values_apart(false))
            .await
            .expect("open");
        let model = fill(&db, 60).await;
        check(&db, &model, 60, "inline").await;
        db.close().await.expect("close");
        assert!(files(tmp.path(), "vals").is_empty());
        // And a store written that way opens with values apart on, and takes them.
        let db = Db::open(tmp.path(), opts()).await.expect("reopen");
        check(&db, &model, 60, "reopened").await;
        db.put("new", vec![9u8; 4096]).await.expect("put");
        assert_eq!(
            db.get("new").await.expect("get"),
            Some(vec![9u8; 4096].into())
        );
        db.close().await.expect("close");
        assert!(!files(tmp.path(), "vals").is_empty());
    });
}

/// Overwrites `len` bytes at `offset` of `path` with `byte`.
fn smash(path: &Path, offset: u64, len: usize, byte: u8) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    f.write_all_at(&vec![byte; len], offset).expect("write");
}

#[test]
fn a_value_missing_from_the_last_value_file_cuts_the_tail_there() {
    let tmp = tempfile::tempdir().expect("tmp");
    needs_direct(tmp.path());
    run(async {
        let o = || opts().max_file_bytes(64 << 20).keydir_snapshot(false);
        let db = Db::open(tmp.path(), o()).await.expect("open");
        for i in 0..20u32 {
            db.put(format!("k{i:02}"), vec![i as u8; 4096])
                .await
                .expect("put");
        }
        db.close().await.expect("close");
        let vals = files(tmp.path(), "vals");
        assert_eq!(vals.len(), 1);
        for h in files(tmp.path(), "hint") {
            std::fs::remove_file(h).expect("remove hint");
        }
        // The value of k15 (the 16th value: block 16) never reached the disk: zeroes. (The
        // first 16 puts of a lone writer keep their values apart; later ones may not.)
        let mut block = vec![0u8; 4096];
        std::fs::File::open(&vals[0])
            .expect("open")
            .read_exact_at(&mut block, 16 * 4096)
            .expect("read k15's value");
        assert_eq!(block, vec![15u8; 4096], "k15's value is apart, in block 16");
        smash(&vals[0], 16 * 4096, 4096, 0);
        let db = Db::open(tmp.path(), o()).await.expect("reopen");
        let r = db.stats().recovery;
        assert!(r.truncated_bytes > 0, "the tail was cut: {r:?}");
        for i in 0..20u32 {
            let got = db.get(format!("k{i:02}")).await.expect("get");
            let want = (i < 15).then(|| vec![i as u8; 4096]);
            assert_eq!(got.as_deref(), want.as_deref(), "k{i:02}");
        }
        // The values of the records cut went with them: the header block and 15 values.
        let len = std::fs::metadata(&vals[0]).expect("stat").len();
        assert_eq!(len, 16 * 4096, "the value file was cut after k14's value");
        db.close().await.expect("close");
    });
}

/// A crash leaves the active file's value file with the zeroes written ahead of its last
/// value (1 MiB at a time); the reopen cuts them, so they neither take space nor count as
/// dead bytes until a merge, and every value stays readable.
#[test]
fn a_crash_leaves_zeroes_ahead_in_the_value_file_and_recovery_cuts_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    needs_direct(tmp.path());
    let fault = ringcask::testing::FaultInjector::new();
    let o = || {
        opts()
            .max_file_bytes(64 << 20)
            .keydir_snapshot(false)
            .fault_injector(fault.clone())
    };
    run(async {
        let db = Db::open(tmp.path(), o()).await.expect("open");
        // One batch, one group write: a lone writer's single puts would keep their values in
        // their records after a while (see the test below).
        let mut batch = ringcask::WriteBatch::new();
        for i in 0..20u32 {
            batch = batch.put(format!("k{i:02}"), vec![i as u8; 4096]);
        }
        db.write(batch).await.expect("batch");
        // Crash: nothing more reaches the disk, the close cannot seal (or cut) anything.
        fault.crash_after(0);
        assert!(db.close().await.is_err(), "the close fails after the crash");
    });
    fault.restart();
    let vals = files(tmp.path(), "vals");
    assert_eq!(vals.len(), 1, "the active file's value file");
    let before = std::fs::metadata(&vals[0]).expect("stat").len();
    assert!(
        before > 21 * 4096,
        "zeroes were written ahead of the 20 values: {before} bytes"
    );
    run(async {
        let db = Db::open(tmp.path(), o()).await.expect("reopen");
        let after = std::fs::metadata(&vals[0]).expect("stat").len();
        assert_eq!(after, 21 * 4096, "the header block and 20 values");
        for i in 0..20u32 {
            let got = db.get(format!("k{i:02}")).await.expect("get");
            assert_eq!(got.as_deref(), Some(&vec![i as u8; 4096][..]), "k{i:02}");
        }
        let dead: u64 = db.stats().files.iter().map(|f| f.dead_bytes).sum();
        assert!(dead < 4 * 4096, "no zeroes counted as dead: {dead}");
        db.close().await.expect("close");
    });
}

#[test]
fn a_damaged_value_apart_is_an_error_not_a_wrong_value() {
    let tmp = tempfile::tempdir().expect("tmp");
    needs_direct(tmp.path());
    run(async {
        let db = Db::open(tmp.path(), opts().max_file_bytes(64 << 20))
            .await
            .expect("open");
        for i in 0..4u32 {
            db.put(format!("k{i}"), vec![i as u8 + 1; 4096])
                .await
                .expect("put");
        }
        db.close().await.expect("close");
        // The change to the value file makes the keydir snapshot stale (its ctime moved): the
        // open loads the hint files, which do not read values. The damage is found at the read.
        let vals = files(tmp.path(), "vals");
        smash(&vals[0], 4096 + 2 * 4096 + 100, 1, 0xEE);
        let db = Db::open(tmp.path(), opts()).await.expect("reopen");
        let r = db.stats().recovery;
        assert!(!r.from_snapshot && r.files_from_hints == 1, "{r:?}");
        match db.get("k2").await {
            Err(Error::Corrupt { file, reason, .. }) => {
                assert!(
                    file.ends_with(vals[0].file_name().expect("name")),
                    "{file:?}"
                );
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        for i in [0u32, 1, 3] {
            let got = db.get(format!("k{i}")).await.expect("get");
            assert_eq!(got.as_deref(), Some(&vec![i as u8 + 1; 4096][..]));
        }
        db.close().await.expect("close");
    });
}

/// A lone durable writer (its last 16 syncs each found nobody else waiting) leads its own
/// group writes and keeps its values in their records, so that each group is one write, not
/// one per file; durable writers at once keep them apart again. Every value comes back,
/// before and after a reopen and a merge, which moves the values apart.
#[test]
fn a_lone_durable_writer_keeps_its_values_in_their_records() {
    let tmp = tempfile::tempdir().expect("tmp");
    needs_direct(tmp.path());
    let o = || opts().max_file_bytes(64 << 20);
    let rt = common::multi_thread_rt(2);
    let vals_blocks = |dir: &Path| -> u64 {
        files(dir, "vals")
            .iter()
            .map(|p| std::fs::metadata(p).expect("meta").len() / 4096)
            .sum()
    };
    let v = |i: u32| vec![(i % 251) as u8; 4096];
    let db = rt.block_on(Db::open(tmp.path(), o())).expect("open");
    for i in 0..40u32 {
        rt.block_on(db.put(format!("lone{i:02}"), v(i)))
            .expect("put");
    }
    let s = db.stats();
    assert!(s.syncs_led >= 20, "a lone writer leads: {s:?}");
    // The value file holds the first puts' values only (and zeroes written ahead, which the
    // close cuts).
    rt.block_on(async {
        let tasks: Vec<_> = (0..8u32)
            .map(|t| {
                let db = db.clone();
                tokio::spawn(async move {
                    for i in 0..10u32 {
                        let k = 100 + t * 10 + i;
                        db.put(format!("many{k}"), v(k)).await.expect("put");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        db.close().await.expect("close");
    });
    drop(db);
    let blocks = vals_blocks(tmp.path());
    // A header block, at most 17 of the 40 lone values (the first 16, and one whose sync met
    // the first concurrent writer), and most of the 80 concurrent ones.
    assert!(
        blocks <= 1 + 17 + 80,
        "{blocks} blocks: lone values went apart"
    );
    assert!(
        blocks >= 1 + 16 + 70,
        "{blocks} blocks: concurrent values stayed inline"
    );
    let check = |db: &Db| {
        rt.block_on(async {
            for i in 0..40u32 {
                let got = db.get(format!("lone{i:02}")).await.expect("get");
                assert_eq!(got.as_deref(), Some(&v(i)[..]), "lone{i:02}");
            }
            for k in 100..180u32 {
                let got = db.get(format!("many{k}")).await.expect("get");
                assert_eq!(got.as_deref(), Some(&v(k)[..]), "many{k}");
            }
        })
    };
    let db = rt.block_on(Db::open(tmp.path(), o())).expect("reopen");
    check(&db);
    // Overwrite half, so that the merge has garbage to reclaim, then merge.
    rt.block_on(async {
        for i in (0..40u32).step_by(2) {
            db.put(format!("lone{i:02}"), v(i))
                .await
                .expect("overwrite");
        }
        db.merge().await.expect("merge");
    });
    check(&db);
    rt.block_on(db.close()).expect("close");
}

/// A group that writes both files makes them durable with one `fdatasync` under
/// `GroupFlush::Once` (two `O_DSYNC` writes under `EachWrite`). Either way, a power cut right
/// after the puts were acknowledged loses none of them: the power-loss model keeps a file's
/// writes only up to its last sync, so a value-file write the flush did not cover would be
/// gone, and its record cut with the torn tail.
#[test]
fn acknowledged_values_apart_survive_a_power_cut_under_either_group_flush() {
    for flush in [GroupFlush::Once, GroupFlush::EachWrite] {
        let tmp = tempfile::tempdir().expect("tmp");
        needs_direct(tmp.path());
        let fault = FaultInjector::power_loss(tmp.path(), 11).expect("injector");
        // Files of 256 KiB: the zeroes written ahead reach the end of the file at once, so no
        // later zero write (each `O_DSYNC`) syncs the value file behind the groups' backs.
        let o = opts().group_flush(flush).fault_injector(fault.clone());
        let n = 60u32;
        run(async {
            let db = Db::open(tmp.path(), o.clone()).await.expect("open");
            let ops = (0..n)
                .map(|i| (format!("key{i:04}"), Some(value(i, 0))))
                .collect();
            two_writers(&db, ops).await;
            let once = db.stats().syncs_one_flush;
            match flush {
                GroupFlush::Once => assert!(once > 0, "no group took one flush"),
                _ => assert_eq!(once, 0, "{flush:?}"),
            }
            // The machine dies now: nothing more reaches the disk.
            fault.crash_after(0);
            common::shut(db).await;
        });
        fault.cut_power().expect("cut");
        fault.restart();
        run(async {
            let db = Db::open(tmp.path(), o).await.expect("reopen");
            for i in 0..n {
                let k = format!("key{i:04}");
                let got = db.get(&k).await.expect("get");
                assert_eq!(got.as_deref(), Some(&value(i, 0)[..]), "{flush:?}: {k}");
            }
            db.close().await.expect("close");
        });
    }
}
