//! A full disk, for real: the store lives on a small tmpfs the test mounts (as root). Writes
//! past the limit get an error, nothing acknowledged is lost, reads continue, and once space is
//! freed (the tmpfs remounted larger) a reopen serves every acknowledged write. A merge that
//! runs out of space keeps its inputs; the store still opens whole, and the merge works once
//! there is room.
//!
//! Where mounting is refused (not root, no privileges), the tests print why and return, unless
//! `RINGCASK_REQUIRE_MOUNT=1` (set by `.ci/run` when it can mount) makes that a failure.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{contents, run};
use ringcask::{Db, Error, Options, SyncPolicy};

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().expect("tmp");
        let dir = parent.path().join("mnt");
        std::fs::create_dir(&dir).expect("mkdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output();
        let refused = match out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(String::from_utf8_lossy(&o.stderr).into_owned()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = refused {
            assert!(
                std::env::var("RINGCASK_REQUIRE_MOUNT").is_err(),
                "mounting a tmpfs was refused: {why}"
            );
            eprintln!("skipped: mounting a tmpfs was refused ({})", why.trim());
            return None;
        }
        Some(Tmpfs {
            dir,
            _parent: parent,
        })
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "remount to {size}");
    }

    fn store(&self) -> PathBuf {
        self.dir.join("store")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

fn opts() -> Options {
    Options::default()
        .sync(SyncPolicy::Always)
        .max_file_bytes(1 << 20)
        .preallocate_bytes(64 << 10)
        .auto_merge(false)
        .merge_bytes_per_sec(0)
}

fn is_full(e: &Error) -> bool {
    matches!(e, Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull)
}

/// Puts 4 KiB values under keys `prefix0..` until a put fails; returns what was acknowledged
/// and the error.
async fn fill(db: &Db, prefix: &str, keys: u32) -> (BTreeMap<Vec<u8>, Vec<u8>>, Error) {
    let mut acked = BTreeMap::new();
    for i in 0u32.. {
        let k = format!("{prefix}{}", i % keys).into_bytes();
        let v = vec![(i % 251) as u8; 4096];
        match db.put(&k, &v).await {
            Ok(()) => {
                acked.insert(k, v);
            }
            Err(e) => return (acked, e),
        }
    }
    unreachable!("an 8 MiB disk fills up")
}

fn reopen_whole(dir: &Path, want: &BTreeMap<Vec<u8>, Vec<u8>>) {
    run(async {
        let db = Db::open(dir, opts()).await.expect("reopen");
        assert_eq!(&contents(&db).await, want, "contents after the reopen");
        db.close().await.expect("close");
    });
}

#[test]
fn writes_past_a_full_disk_fail_and_lose_nothing_acknowledged() {
    let Some(fs) = Tmpfs::mount("8m") else { return };
    let dir = fs.store();
    let acked = run(async {
        let db = Db::open(&dir, opts()).await.expect("open");
        let (acked, err) = fill(&db, "k", u32::MAX).await;
        assert!(is_full(&err), "the first failed put: {err:?}");
        let text = err.to_string();
        assert!(
            text.contains("appending") && text.contains(".data") || text.contains("creating"),
            "the error names the operation and the file: {text}"
        );
        assert!(
            acked.len() > 1000,
            "{} puts before the disk was full",
            acked.len()
        );
        // The store refuses further writes, and says why.
        let later = db
            .put("more", "x")
            .await
            .expect_err("a write after a full disk");
        assert!(
            matches!(later, Error::Poisoned(_)) || is_full(&later),
            "{later:?}"
        );
        // Every acknowledged value still reads.
        assert_eq!(contents(&db).await, acked);
        common::shut(db).await;
        acked
    });
    // Space freed: a reopen serves every acknowledged write, and writes work again.
    fs.resize("64m");
    reopen_whole(&dir, &acked);
    run(async {
        let db = Db::open(&dir, opts()).await.expect("open");
        db.put("after", "space was freed").await.expect("put");
        db.close().await.expect("close");
    });
}

#[test]
fn a_merge_without_room_keeps_its_inputs_and_works_once_there_is_room() {
    let Some(fs) = Tmpfs::mount("8m") else { return };
    let dir = fs.store();
    // 300 keys overwritten until the disk is full: mostly dead bytes, ~1.2 MB live.
    let acked = run(async {
        let db = Db::open(&dir, opts()).await.expect("open");
        let (acked, err) = fill(&db, "k", 300).await;
        assert!(is_full(&err), "{err:?}");
        common::shut(db).await;
        acked
    });
    // Reopen with a little room (the recovery and the new active file need some); a merge of
    // every sealed file needs ~1.2 MB for its outputs and fails.
    fs.resize("8800k");
    run(async {
        let db = Db::open(&dir, opts()).await.expect("reopen");
        let err = db.merge().await.expect_err("a merge without room");
        assert!(is_full(&err), "{err:?}");
        assert_eq!(contents(&db).await, acked, "reads after the failed merge");
        common::shut(db).await;
    });
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") || n == "MERGE")
        .collect();
    reopen_whole(&dir, &acked);
    assert!(
        std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".tmp")),
        "temporary outputs left after a reopen (before it: {leftovers:?})"
    );
    fs.resize("64m");
    run(async {
        let db = Db::open(&dir, opts()).await.expect("reopen");
        let r = db.merge().await.expect("the merge, with room");
        assert!(r.reclaimed_bytes > 1 << 20, "{r:?}");
        assert_eq!(contents(&db).await, acked);
        db.close().await.expect("close");
    });
    reopen_whole(&dir, &acked);
}
