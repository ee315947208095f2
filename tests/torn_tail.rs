//! A torn last record: cut the last datafile at many byte offsets and check that recovery keeps
//! exactly the records before the cut (batches all or nothing), reports the cut, and never
//! loses anything from earlier files.

mod common;

use common::{copy_dir, data_files, run, Rng};
use ringcask::{Db, Options, SyncPolicy, WriteBatch};

fn opts() -> Options {
    Options::default()
        .sync(SyncPolicy::Never)
        .max_file_bytes(32 * 1024)
        .preallocate_bytes(0)
}

/// Op `i` writes either key `p{i}` or the batch `b{i}-0..2`.
fn is_batch(i: u32) -> bool {
    i % 4 == 3
}

/// How many leading ops are fully present; panics if the present ops are not a prefix or a
/// batch is partial.
async fn present_prefix(db: &Db, ops: u32) -> u32 {
    let mut prefix_done = false;
    let mut n = 0;
    for i in 0..ops {
        let present = if is_batch(i) {
            let mut c = 0;
            for j in 0..3 {
                let v = db.get(format!("b{i}-{j}").as_bytes()).await.expect("get");
                if let Some(v) = v {
                    assert_eq!(v, format!("batch {i} {j}").as_bytes());
                    c += 1;
                }
            }
            assert!(c == 0 || c == 3, "batch {i} is partial: {c} of 3");
            c == 3
        } else {
            match db.get(format!("p{i}").as_bytes()).await.expect("get") {
                Some(v) => {
                    assert_eq!(v.len(), 10 + (i as usize % 90));
                    true
                }
                None => false,
            }
        };
        if present {
            assert!(!prefix_done, "op {i} present after a missing op");
            n += 1;
        } else {
            prefix_done = true;
        }
    }
    n
}

#[test]
fn cutting_the_last_file_anywhere_keeps_exactly_a_prefix() {
    let pristine = tempfile::tempdir().expect("tmp");
    let ops = 700u32;
    run(async {
        let db = Db::open(pristine.path(), opts()).await.expect("open");
        for i in 0..ops {
            if is_batch(i) {
                let mut b = WriteBatch::new();
                for j in 0..3 {
                    b = b.put(format!("b{i}-{j}"), format!("batch {i} {j}"));
                }
                db.write(b).await.expect("batch");
            } else {
                db.put(format!("p{i}"), vec![b'v'; 10 + (i as usize % 90)])
                    .await
                    .expect("put");
            }
        }
        // Each copy below removes the last file's hint, as after a crash.
        common::shut(db).await;
    });
    let last = data_files(pristine.path()).pop().expect("a datafile");
    let last_name = last.file_name().expect("name").to_owned();
    let full = std::fs::metadata(&last).expect("meta").len();
    let mut rng = Rng::new(42);
    let mut cuts: Vec<u64> = (0..40).map(|_| 20 + rng.below(full - 20)).collect();
    cuts.extend([20, 21, full - 1, full]);
    cuts.sort();
    let mut prev = 0;
    for cut in cuts {
        let tmp = tempfile::tempdir().expect("tmp");
        copy_dir(pristine.path(), tmp.path());
        let _ = std::fs::remove_file(tmp.path().join(&last_name).with_extension("hint"));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(tmp.path().join(&last_name))
            .expect("open");
        f.set_len(cut).expect("cut");
        drop(f);
        let n = run(async {
            let db = Db::open(tmp.path(), opts()).await.expect("open after cut");
            let r = db.stats().recovery;
            let n = present_prefix(&db, ops).await;
            let kept = std::fs::metadata(tmp.path().join(&last_name))
                .map(|m| m.len())
                .unwrap_or(0);
            if kept > 0 {
                assert_eq!(kept + r.truncated_bytes, cut, "the cut is reported: {r:?}");
            }
            n
        });
        assert!(
            n >= prev,
            "a longer file recovered fewer ops ({n} < {prev}) at cut {cut}"
        );
        if cut == full {
            assert_eq!(n, ops, "the uncut store must be complete");
        }
        prev = n;
    }
    assert!(prev == ops);
}
