//! Read-only open: a shared lock (readers together, never with a writer), no file modified or
//! created, crashed stores (torn tail, leftovers) read as a read-write open would recover them,
//! and every change refused with `Error::ReadOnly`.

mod common;

use std::time::Duration;

use common::{contents, dir_state, open, run, small_opts, Rng};
use futures::StreamExt;
use ringcask::{Db, Error, Options, WriteBatch};

/// A closed store with sealed files, deletes and a TTL key; returns its contents.
fn build(dir: &std::path::Path) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    run(async {
        let db = open(dir, small_opts()).await;
        common::churn(&db, 4, 2000, 300, 200, 7).await;
        db.put_with_ttl("ttl", "v", Duration::from_secs(3600))
            .await
            .expect("ttl");
        let want = contents(&db).await;
        db.close().await.expect("close");
        want
    })
}

#[test]
fn a_read_only_handle_reads_everything_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let want = build(tmp.path());
    let before = dir_state(tmp.path());
    run(async {
        let db = Db::open_read_only(tmp.path(), small_opts())
            .await
            .expect("open read-only");
        assert!(db.is_read_only());
        assert_eq!(contents(&db).await, want);
        assert_eq!(db.len(), want.len());
        assert!(db.ttl("ttl").is_some_and(|t| t.is_some()));
        // Iterators, snapshots and scans.
        let mut n = 0;
        let mut it = db.iter();
        while let Some(item) = it.next().await {
            let (k, v) = item.expect("item");
            assert_eq!(want.get(&k[..]).map(Vec::as_slice), Some(&v[..]));
            n += 1;
        }
        assert_eq!(n, want.len());
        let (mut cursor, mut scanned) = (0, 0);
        loop {
            let (next, keys) = db.scan(cursor, 50);
            scanned += keys.len();
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert_eq!(scanned, want.len());
        // Every change is refused, and nothing is applied.
        let k = want.keys().next().expect("a key").clone();
        assert!(matches!(db.put("new", "v").await, Err(Error::ReadOnly)));
        assert!(matches!(db.delete(&k).await, Err(Error::ReadOnly)));
        assert!(matches!(
            db.put_with_ttl("new", "v", Duration::from_secs(1)).await,
            Err(Error::ReadOnly)
        ));
        assert!(matches!(
            db.write(WriteBatch::new().put("a", "b")).await,
            Err(Error::ReadOnly)
        ));
        assert!(matches!(
            db.put_if_absent("new", "v").await,
            Err(Error::ReadOnly)
        ));
        assert!(matches!(
            db.compare_and_swap(&k, None::<&[u8]>, Some("x")).await,
            Err(Error::ReadOnly)
        ));
        assert!(matches!(db.expire(&k, None).await, Err(Error::ReadOnly)));
        assert!(matches!(
            db.expire("absent", None).await,
            Err(Error::ReadOnly)
        ));
        assert!(matches!(db.merge().await, Err(Error::ReadOnly)));
        db.sync().await.expect("sync is a no-op");
        assert_eq!(contents(&db).await, want);
        // A checkpoint of a read-only store opens as an ordinary store.
        let cp = tmp.path().with_extension("cp");
        db.checkpoint(&cp).await.expect("checkpoint");
        let copy = open(&cp, Options::default()).await;
        assert_eq!(contents(&copy).await, want);
        copy.close().await.expect("close copy");
        std::fs::remove_dir_all(&cp).expect("rm");
        db.close().await.expect("close");
    });
    assert_eq!(
        dir_state(tmp.path()),
        before,
        "a read-only open changed the directory"
    );
}

#[test]
fn readers_share_the_lock_and_exclude_a_writer() {
    let tmp = tempfile::tempdir().expect("tmp");
    let want = build(tmp.path());
    run(async {
        let a = Db::open_read_only(tmp.path(), small_opts())
            .await
            .expect("a");
        let b = Db::open_read_only(tmp.path(), small_opts())
            .await
            .expect("b");
        assert_eq!(contents(&b).await, want);
        assert!(matches!(
            Db::open(tmp.path(), small_opts()).await,
            Err(Error::Locked { .. })
        ));
        a.close().await.expect("close a");
        assert!(matches!(
            Db::open(tmp.path(), small_opts()).await,
            Err(Error::Locked { .. })
        ));
        drop(b); // dropping releases the lock as close does
        let w = open(tmp.path(), small_opts()).await;
        assert!(matches!(
            Db::open_read_only(tmp.path(), small_opts()).await,
            Err(Error::Locked { .. })
        ));
        w.put("after", "w").await.expect("put");
        w.close().await.expect("close");
        let r = Db::open_read_only(tmp.path(), small_opts())
            .await
            .expect("r");
        assert_eq!(
            r.get("after").await.expect("get").as_deref(),
            Some(&b"w"[..])
        );
        r.close().await.expect("close");
    });
}

/// A store left by a crash: a torn tail on the last datafile, a leftover temporary file and a
/// hint without its datafile. Read-only sees what a read-write open recovers, and leaves every
/// byte as it was; the read-write open then repairs it.
#[test]
fn a_crashed_store_opens_read_only_without_repairs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let want = run(async {
        let db = open(tmp.path(), small_opts().keydir_snapshot(false)).await;
        let mut rng = Rng::new(9);
        for i in 0..500 {
            let len = rng.below(100) as usize;
            db.put(format!("k{i}"), rng.bytes(len)).await.expect("put");
        }
        let want = contents(&db).await;
        db.close().await.expect("close");
        want
    });
    let last = common::data_files(tmp.path()).pop().expect("a datafile");
    let mut bytes = std::fs::read(&last).expect("read");
    bytes.extend_from_slice(&[0xAB; 37]); // a torn record
    std::fs::write(&last, bytes).expect("write");
    std::fs::write(tmp.path().join("0000000999.data.tmp"), b"half a merge").expect("tmp");
    std::fs::write(tmp.path().join("0000000998.hint"), b"orphan").expect("hint");
    let before = dir_state(tmp.path());
    run(async {
        let db = Db::open_read_only(tmp.path(), small_opts())
            .await
            .expect("read-only open of a crashed store");
        assert_eq!(contents(&db).await, want);
        assert!(db.stats().recovery.truncated_bytes > 0, "the tear was seen");
        db.close().await.expect("close");
    });
    assert_eq!(
        dir_state(tmp.path()),
        before,
        "a read-only open repaired the store"
    );
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        assert_eq!(contents(&db).await, want);
        assert_eq!(db.stats().recovery.truncated_bytes, 37);
        db.close().await.expect("close");
    });
    let after = dir_state(tmp.path());
    assert!(!after.contains_key("0000000999.data.tmp") && !after.contains_key("0000000998.hint"));
}

#[test]
fn read_only_open_of_a_missing_directory_is_an_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let missing = tmp.path().join("nope");
    run(async {
        let err = Db::open_read_only(&missing, Options::default())
            .await
            .expect_err("missing directory");
        assert!(
            matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound),
            "{err}"
        );
    });
    assert!(!missing.exists(), "a read-only open created the directory");
}
