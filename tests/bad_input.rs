//! Damaged, truncated, foreign and hostile store contents: a clear error or a documented
//! repair, never a panic or a silent loss.
//!
//! Byte positions used here come from the v1 format (DESIGN.md): a 20-byte file header, then
//! records whose header is crc(4) seq(8) expiry(8) key_len(4) value_len(4) flags(1).

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{data_files, hint_files, open, run, small_opts};
use ringcask::{Db, Error};

const FILE_HEADER: u64 = 20;
const VALUE_LEN_AT: u64 = FILE_HEADER + 4 + 8 + 8 + 4;

/// Writes 600 keys (k0..k599, value "value-i" padded) across several files and closes.
fn make_store(dir: &Path) -> usize {
    run(async {
        let db = open(dir, small_opts()).await;
        for i in 0..600u32 {
            db.put(format!("k{i}"), format!("value-{i:0>40}"))
                .await
                .expect("put");
        }
        db.close().await.expect("close");
    });
    let n = data_files(dir).len();
    assert!(n >= 3, "want several datafiles, got {n}");
    n
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for patch");
    f.write_all_at(bytes, at).expect("patch");
}

fn hint_of(data: &Path) -> PathBuf {
    data.with_extension("hint")
}

fn open_err(dir: &Path) -> Error {
    run(async {
        Db::open(dir, small_opts())
            .await
            .expect_err("open must fail")
    })
}

#[test]
fn wrong_magic_in_a_sealed_file_is_corrupt() {
    let tmp = tempfile::tempdir().expect("tmp");
    make_store(tmp.path());
    let first = &data_files(tmp.path())[0];
    patch(first, 0, b"NOTMAGIC");
    match open_err(tmp.path()) {
        Error::Corrupt { file, offset, .. } => {
            assert_eq!(&file, first);
            assert_eq!(offset, 0);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn unknown_version_is_reported_as_such() {
    let tmp = tempfile::tempdir().expect("tmp");
    make_store(tmp.path());
    let first = &data_files(tmp.path())[0];
    patch(first, 8, &99u32.to_le_bytes());
    match open_err(tmp.path()) {
        Error::UnsupportedVersion {
            file,
            found,
            supported,
        } => {
            assert_eq!(&file, first);
            assert_eq!(found, 99);
            assert_eq!(supported, 2);
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

#[test]
fn truncated_sealed_file_without_hint_is_corrupt_with_offset() {
    let tmp = tempfile::tempdir().expect("tmp");
    make_store(tmp.path());
    let first = data_files(tmp.path())[0].clone();
    std::fs::remove_file(hint_of(&first)).expect("rm hint");
    let len = std::fs::metadata(&first).expect("meta").len();
    let f = OpenOptions::new().write(true).open(&first).expect("open");
    f.set_len(len - 10).expect("truncate");
    match open_err(tmp.path()) {
        Error::Corrupt { file, offset, .. } => {
            assert_eq!(file, first);
            assert!(offset > FILE_HEADER && offset < len - 10, "offset {offset}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn truncated_sealed_file_with_hint_uses_scan_and_reports() {
    // The hint no longer matches the datafile's length, so it is not trusted.
    let tmp = tempfile::tempdir().expect("tmp");
    make_store(tmp.path());
    let first = data_files(tmp.path())[0].clone();
    let len = std::fs::metadata(&first).expect("meta").len();
    let f = OpenOptions::new().write(true).open(&first).expect("open");
    f.set_len(len - 10).expect("truncate");
    assert!(matches!(open_err(tmp.path()), Error::Corrupt { .. }));
}

#[test]
fn flipped_byte_in_a_sealed_file_is_corrupt_unless_skipping() {
    let tmp = tempfile::tempdir().expect("tmp");
    make_store(tmp.path());
    let first = data_files(tmp.path())[0].clone();
    std::fs::remove_file(hint_of(&first)).expect("rm hint");
    let len = std::fs::metadata(&first).expect("meta").len();
    let mid = len / 2;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&first)
        .expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, mid).expect("read");
    f.write_all_at(&[b[0] ^ 0x40], mid).expect("flip");
    match open_err(tmp.path()) {
        Error::Corrupt {
            file,
            offset,
            reason,
        } => {
            assert_eq!(file, first);
            assert!(
                offset <= mid && offset > FILE_HEADER,
                "offset {offset} for a flip at {mid}"
            );
            assert!(!reason.is_empty());
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    run(async {
        let db = Db::open(tmp.path(), small_opts().skip_damaged_records(true))
            .await
            .expect("open skipping damage");
        let r = db.stats().recovery;
        assert!(r.skipped_damaged_bytes > 0, "{r:?}");
        // Exactly one record is damaged; every other key is intact.
        let mut missing = 0;
        for i in 0..600u32 {
            match db.get(format!("k{i}").as_bytes()).await.expect("get") {
                Some(v) => assert_eq!(v, format!("value-{i:0>40}").as_bytes()),
                None => missing += 1,
            }
        }
        assert_eq!(missing, 1);
    });
}

#[test]
fn huge_length_is_corruption_not_an_allocation() {
    let tmp = tempfile::tempdir().expect("tmp");
    make_store(tmp.path());
    let first = data_files(tmp.path())[0].clone();
    std::fs::remove_file(hint_of(&first)).expect("rm hint");
    patch(&first, VALUE_LEN_AT, &0xFFFF_FFF0u32.to_le_bytes());
    match open_err(tmp.path()) {
        Error::Corrupt { file, offset, .. } => {
            assert_eq!(file, first);
            assert_eq!(offset, FILE_HEADER);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn huge_length_in_the_last_file_is_a_torn_tail() {
    let tmp = tempfile::tempdir().expect("tmp");
    make_store(tmp.path());
    let files = data_files(tmp.path());
    let last = files.last().expect("last").clone();
    std::fs::remove_file(hint_of(&last)).expect("rm hint");
    let len = std::fs::metadata(&last).expect("meta").len();
    patch(&last, VALUE_LEN_AT, &0x7FFF_FFF0u32.to_le_bytes());
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        let r = db.stats().recovery;
        assert_eq!(r.truncated_bytes, len - FILE_HEADER, "{r:?}");
        // The last file lost everything; the earlier files are intact.
        assert!(db.get(b"k0").await.expect("get").is_some());
        assert!(db.get(b"k599").await.expect("get").is_none());
    });
}

#[test]
fn damaged_or_stale_hint_falls_back_to_scanning() {
    let tmp = tempfile::tempdir().expect("tmp");
    let n = make_store(tmp.path());
    let hints = hint_files(tmp.path());
    assert_eq!(hints.len(), n);
    // One hint with a flipped byte, one truncated, one with a footer for another length.
    patch(&hints[0], 30, &[0xAB]);
    let l = std::fs::metadata(&hints[1]).expect("meta").len();
    OpenOptions::new()
        .write(true)
        .open(&hints[1])
        .expect("open")
        .set_len(l - 3)
        .expect("truncate");
    std::fs::write(&hints[2], b"not a hint at all").expect("write");
    run(async {
        // Without the keydir snapshot the last close saved, so that the hints are read.
        let db = open(tmp.path(), small_opts().keydir_snapshot(false)).await;
        let r = db.stats().recovery;
        assert_eq!(r.files_scanned, 3, "{r:?}");
        assert_eq!(r.files_from_hints, n - 3);
        assert_eq!(db.len(), 600);
        for i in (0..600u32).step_by(7) {
            let v = db.get(format!("k{i}").as_bytes()).await.expect("get");
            assert_eq!(v.as_deref(), Some(format!("value-{i:0>40}").as_bytes()));
        }
        db.close().await.expect("close");
    });
    // The scans rewrote the hints: the next open needs no scan.
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        assert_eq!(db.stats().recovery.files_scanned, 0);
    });
}

#[test]
fn torn_creation_of_the_last_file_is_removed() {
    for contents in [&b"RCASK"[..], &[0u8; 20][..], &[][..]] {
        let tmp = tempfile::tempdir().expect("tmp");
        let n = make_store(tmp.path());
        let next = tmp.path().join(format!("{:010}.data", n + 1));
        std::fs::write(&next, contents).expect("write");
        run(async {
            let db = open(tmp.path(), small_opts()).await;
            assert_eq!(db.stats().recovery.empty_files_removed, 1);
            assert_eq!(db.len(), 600);
        });
        assert!(!next.exists());
    }
}

/// A power cut while a new datafile's header is being written can leave any mix of its bytes
/// (some sectors written, others not) followed by preallocated zeros. Nothing in that file was
/// ever synced, so it holds no acknowledged write: open drops it and reports it.
#[test]
fn torn_header_of_a_new_datafile_is_dropped() {
    // A valid header for the next id, taken from the first datafile's with its id patched.
    let valid = |dir: &Path, id: u32| -> Vec<u8> {
        let mut h = std::fs::read(&data_files(dir)[0]).expect("read")[..20].to_vec();
        h[12..16].copy_from_slice(&id.to_le_bytes());
        let crc = crc32fast::hash(&h[..16]) ^ 0xA282_EAD8;
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    type Tear = fn(&mut Vec<u8>);
    let tears: [(&str, Tear, usize); 6] = [
        ("first 10 bytes zero", |h| h[..10].fill(0), 0),
        ("last 10 bytes zero", |h| h[10..].fill(0), 0),
        ("version zeroed", |h| h[8..12].fill(0), 0),
        (
            "magic half zero, preallocated tail",
            |h| h[4..8].fill(0),
            8192,
        ),
        ("crc zeroed, preallocated tail", |h| h[16..].fill(0), 4096),
        (
            "odd bytes zero",
            |h| h.iter_mut().step_by(2).for_each(|b| *b = 0),
            100,
        ),
    ];
    for (what, tear, zeros) in tears {
        let tmp = tempfile::tempdir().expect("tmp");
        let n = make_store(tmp.path());
        let id = n as u32 + 1;
        let mut h = valid(tmp.path(), id);
        tear(&mut h);
        h.resize(20 + zeros, 0);
        let next = tmp.path().join(format!("{id:010}.data"));
        std::fs::write(&next, &h).expect("write");
        run(async {
            let db = Db::open(tmp.path(), small_opts())
                .await
                .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
            assert_eq!(db.stats().recovery.empty_files_removed, 1, "{what}");
            assert_eq!(db.len(), 600, "{what}");
            db.close().await.expect("close");
        });
        assert!(!next.exists(), "{what}: the torn file is still there");
    }
    // The same torn header followed by anything but zeros may be data: refused and kept.
    let tmp = tempfile::tempdir().expect("tmp");
    let n = make_store(tmp.path());
    let id = n as u32 + 1;
    let mut h = valid(tmp.path(), id);
    h[..10].fill(0);
    h.extend_from_slice(&[7u8; 64]);
    let next = tmp.path().join(format!("{id:010}.data"));
    std::fs::write(&next, &h).expect("write");
    assert!(matches!(
        open_err(tmp.path()),
        Error::Corrupt { offset: 0, .. }
    ));
    assert!(next.exists(), "possible data must not be deleted");
}

#[test]
fn foreign_bytes_in_the_last_file_are_an_error_not_deleted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let n = make_store(tmp.path());
    let next = tmp.path().join(format!("{:010}.data", n + 1));
    std::fs::write(&next, vec![0x5Au8; 100]).expect("write");
    assert!(matches!(
        open_err(tmp.path()),
        Error::Corrupt { offset: 0, .. }
    ));
    assert!(next.exists(), "user data must not be deleted");
}

#[test]
fn value_damaged_on_disk_is_detected_on_read() {
    let tmp = tempfile::tempdir().expect("tmp");
    make_store(tmp.path());
    let first = data_files(tmp.path())[0].clone();
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        // k0 is the first record of the first file; damage its value's first byte.
        let value_at = FILE_HEADER + 29 + 2;
        patch(&first, value_at, b"X");
        match db.get(b"k0").await {
            Err(Error::Corrupt { file, offset, .. }) => {
                assert_eq!(file, first);
                assert_eq!(offset, FILE_HEADER);
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(db
            .get(b"k1")
            .await
            .expect("other keys still read")
            .is_some());
    });
}

#[test]
fn second_process_gets_locked() {
    if let Ok(dir) = std::env::var("RINGCASK_LOCK_CHILD_DIR") {
        // Child side: the parent holds the lock.
        let res = run(async { Db::open(&dir, small_opts()).await.map(|_| ()) });
        match res {
            Err(Error::Locked { .. }) => println!("CHILD-SAW-LOCKED"),
            other => println!("CHILD-SAW-{other:?}"),
        }
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = open(tmp.path(), small_opts()).await;
        let out = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "second_process_gets_locked",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RINGCASK_LOCK_CHILD_DIR", tmp.path())
            .output()
            .expect("spawn child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed: {stdout}");
        assert!(
            stdout.contains("CHILD-SAW-LOCKED"),
            "child output: {stdout}"
        );
        drop(db);
    });
}

/// An IO error says what was being done and to which file, not just "File exists".
#[test]
fn a_store_path_that_is_a_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("not-a-dir");
    std::fs::write(&path, b"x").expect("write");
    let e = run(async {
        Db::open(&path, small_opts())
            .await
            .expect_err("open must fail")
    });
    let text = e.to_string();
    assert!(
        matches!(e, Error::Io(_))
            && text.contains("creating the store directory")
            && text.contains("not-a-dir"),
        "{text}"
    );
}
