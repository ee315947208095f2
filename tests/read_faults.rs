//! Read faults: an injected `EIO` on a value read fails that `get` with `Error::Io` naming the
//! file and offset, does not poison the store, and later reads and writes work; during
//! recovery it fails the open with an error naming the datafile (or, on a hint or the keydir
//! snapshot, falls back to the datafiles), never a panic or a silent loss.

mod common;

use common::{backends, contents, run, small_opts};
use ringcask::testing::FaultInjector;
use ringcask::{Db, Error};

fn is_eio(e: &Error) -> bool {
    matches!(e, Error::Io(io) if io.raw_os_error() == Some(5) || io.to_string().contains("os error 5"))
}

#[test]
fn a_failed_value_read_fails_that_get_only() {
    for backend in backends() {
        for inline_reads in [true, false] {
            let tmp = tempfile::tempdir().expect("tmp");
            let fault = FaultInjector::new();
            let opts = small_opts()
                .io_backend(backend)
                .inline_reads(inline_reads)
                .fault_injector(fault.clone());
            run(async {
                let db = Db::open(tmp.path(), opts).await.expect("open");
                for i in 0..50u32 {
                    db.put(format!("k{i}"), format!("v{i}")).await.expect("put");
                }
                fault.fail_reads(0, 1);
                let err = db.get("k7").await.expect_err("the read fails");
                let text = err.to_string();
                assert!(
                    matches!(err, Error::Io(_))
                        && text.contains(".data")
                        && text.contains("offset"),
                    "{backend:?} inline {inline_reads}: {text}"
                );
                // Not poisoned: reads and writes go on.
                assert_eq!(
                    db.get("k7").await.expect("get").as_deref(),
                    Some(&b"v7"[..])
                );
                db.put("after", "the fault")
                    .await
                    .expect("put after a read fault");
                assert_eq!(db.len(), 51);
                db.close().await.expect("close");
            });
        }
    }
}

/// Writes a store of several sealed files (with hints) and closes it (so it has a snapshot).
fn make_store(dir: &std::path::Path) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    run(async {
        let db = Db::open(dir, small_opts()).await.expect("open");
        for i in 0..400u32 {
            db.put(format!("k{}", i % 150), vec![i as u8; 60])
                .await
                .expect("put");
        }
        let want = contents(&db).await;
        db.close().await.expect("close");
        want
    })
}

/// The files of `dir` and their lengths, the keydir snapshot left out (every open takes it).
fn listing(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name() != "KEYDIR")
        .map(|e| {
            let len = e.metadata().expect("meta").len();
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .collect();
    v.sort();
    v
}

/// A failed read while recovering: from the keydir snapshot (or a hint's first pass) it is a
/// fallback to the hints (or a scan of the datafile); otherwise it fails the open with an error
/// naming the file and changes nothing. Either way the store then opens whole.
#[test]
fn a_failed_read_during_recovery_fails_the_open_or_falls_back() {
    let (mut failed, mut fell_back) = (0, 0);
    for (what, opts) in [
        ("with a snapshot", small_opts()),
        ("from hints", small_opts().keydir_snapshot(false)),
    ] {
        for nth in 0..40u64 {
            let tmp = tempfile::tempdir().expect("tmp");
            let want = make_store(tmp.path());
            let before = listing(tmp.path());
            let fault = FaultInjector::new();
            fault.fail_reads(nth, 1);
            let opened = run(Db::open(
                tmp.path(),
                opts.clone().fault_injector(fault.clone()),
            ));
            // Recovery may read less than `nth` times: the reads checked below must not fail.
            fault.fail_reads(0, 0);
            match opened {
                Ok(db) => {
                    run(async {
                        assert_eq!(contents(&db).await, want, "{what}, read {nth}");
                        db.close().await.expect("close");
                    });
                    fell_back += 1;
                }
                Err(e) => {
                    let text = e.to_string();
                    assert!(
                        is_eio(&e) && (text.contains(".data") || text.contains(".hint")),
                        "{what}, read {nth}: {text}"
                    );
                    assert_eq!(
                        listing(tmp.path()),
                        before,
                        "{what}: a failed open changed files"
                    );
                    failed += 1;
                }
            }
            run(async {
                let db = Db::open(tmp.path(), small_opts())
                    .await
                    .expect("open after the fault");
                assert_eq!(contents(&db).await, want, "{what}, read {nth}");
            });
        }
    }
    assert!(
        failed > 0 && fell_back > 0,
        "{failed} failed opens, {fell_back} fallbacks"
    );
}
