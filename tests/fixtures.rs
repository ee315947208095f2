//! Golden fixture: a store written by format v1 lives in `tests/fixtures/v1_store`; every later
//! build must open it and read exactly what was written.
//!
//! Regenerate only when creating the fixture of a new format version:
//! `RINGCASK_WRITE_FIXTURE=1 cargo test --test fixtures` (then move it to a new directory name).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::run;
use ringcask::{Db, Options, SyncPolicy, WriteBatch};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1_store")
}

fn opts() -> Options {
    Options::default()
        .sync(SyncPolicy::Never)
        .max_file_bytes(4096)
        .preallocate_bytes(0)
}

fn expected() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for i in 0..60 {
        m.insert(format!("fx{i}"), format!("fixture value {i:>140}"));
    }
    m.remove("fx3");
    m.insert("fx5".into(), "new".into());
    m.insert("fxb1".into(), "1".into());
    m.insert("fxb2".into(), "2".into());
    m.remove("fx7");
    m.insert("fxl".into(), "lives for a century".into());
    m
}

fn write_fixture(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    run(async {
        let db = Db::open(dir, opts()).await.expect("open");
        for i in 0..60 {
            db.put(format!("fx{i}"), format!("fixture value {i:>140}"))
                .await
                .expect("put");
        }
        db.delete("fx3").await.expect("delete");
        db.put("fx5", "new").await.expect("put");
        db.write(
            WriteBatch::new()
                .put("fxb1", "1")
                .put("fxb2", "2")
                .delete("fx7"),
        )
        .await
        .expect("batch");
        db.put_with_ttl("fxe", "expired", Duration::ZERO)
            .await
            .expect("ttl");
        db.put_with_ttl(
            "fxl",
            "lives for a century",
            Duration::from_secs(100 * 365 * 86400),
        )
        .await
        .expect("ttl");
        db.close().await.expect("close");
    });
    // One sealed file without its hint, so that both load paths are covered.
    std::fs::remove_file(dir.join("0000000001.hint")).expect("rm hint");
    let _ = std::fs::remove_file(dir.join("LOCK"));
}

#[test]
fn v1_fixture_still_opens_with_the_same_contents() {
    if std::env::var("RINGCASK_WRITE_FIXTURE").is_ok() {
        write_fixture(&fixture_dir());
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let mut files = 0;
    for e in std::fs::read_dir(fixture_dir()).expect("the fixture directory exists") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).expect("copy");
        files += 1;
    }
    assert!(files >= 4, "fixture has {files} files");
    run(async {
        let db = Db::open(tmp.path(), opts())
            .await
            .expect("open the v1 fixture");
        let r = db.stats().recovery;
        assert!(r.files_scanned >= 1 && r.files_from_hints >= 1, "{r:?}");
        let want = expected();
        assert_eq!(db.len(), want.len());
        for (k, v) in &want {
            let got = db.get(k.as_bytes()).await.expect("get");
            assert_eq!(got.as_deref(), Some(v.as_bytes()), "key {k}");
        }
        assert_eq!(db.get(b"fx3").await.expect("get"), None);
        assert_eq!(db.get(b"fxe").await.expect("get"), None);
    });
}
