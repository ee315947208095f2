//! `ringcask::check` verifies a store without changing it: clean stores pass; a flipped byte in
//! a sealed datafile, a hint file or the keydir snapshot is reported by file (and offset); a
//! torn tail of the last file is a note, not damage; a writer's lock keeps it out.

mod common;

use std::path::Path;

use common::{data_files, dir_state, flip, hint_files, run, small_opts};
use ringcask::{check, Db, Error};

/// A store with several sealed files (with hints), overwrites and deletes, closed cleanly
/// (keydir snapshot written). Returns the number of records written.
fn build(dir: &Path) -> u64 {
    run(async {
        let db = Db::open(dir, small_opts()).await.expect("open");
        let mut n = 0;
        for i in 0..600u32 {
            db.put(format!("k{}", i % 200), vec![i as u8; 200])
                .await
                .expect("put");
            n += 1;
            if i % 7 == 0 {
                db.delete(format!("k{}", (i + 3) % 200))
                    .await
                    .expect("delete");
                n += 1;
            }
        }
        db.close().await.expect("close");
        n
    })
}

#[test]
fn a_clean_store_checks_clean_and_is_left_unchanged() {
    let tmp = tempfile::tempdir().expect("tmp");
    let written = build(tmp.path());
    let before = dir_state(tmp.path());
    let mut calls = 0;
    let r = check(tmp.path(), |done, total| {
        calls += 1;
        assert!(done <= total);
    })
    .expect("check");
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.records, written);
    assert_eq!(r.datafiles, data_files(tmp.path()).len());
    assert!(r.datafiles > 2 && r.hints > 0, "{r:?}");
    assert_eq!(calls, r.datafiles);
    assert!(r.snapshot_found && r.snapshot_stale.is_none(), "{r:?}");
    assert!(r.torn_tail.is_none());
    assert_eq!(dir_state(tmp.path()), before, "check changed the directory");
}

#[test]
fn a_flipped_byte_in_a_sealed_datafile_is_reported_with_its_file_and_offset() {
    let tmp = tempfile::tempdir().expect("tmp");
    build(tmp.path());
    let files = data_files(tmp.path());
    let victim = &files[1];
    let at = 700;
    flip(victim, at);
    let r = check(tmp.path(), |_, _| {}).expect("check");
    assert!(!r.is_clean());
    assert_eq!(
        r.damage.len(),
        1,
        "only the datafile (its hint is intact): {r:?}"
    );
    let d = &r.damage[0];
    assert_eq!(&d.file, victim);
    let off = d.offset.expect("an offset");
    assert!(
        off <= at && at - off < 300,
        "damage at {off}, byte flipped at {at}"
    );
    // The records after the damaged one were still checked.
    assert!(r.records > 0);
}

#[test]
fn damaged_hints_snapshots_and_headers_are_reported() {
    let tmp = tempfile::tempdir().expect("tmp");
    build(tmp.path());
    let hint = hint_files(tmp.path())[0].clone();
    flip(&hint, 40);
    let snap = tmp.path().join("KEYDIR");
    let len = std::fs::metadata(&snap).expect("snapshot").len();
    flip(&snap, len / 2);
    let first = data_files(tmp.path())[0].clone();
    flip(&first, 0); // the magic
    let r = check(tmp.path(), |_, _| {}).expect("check");
    for file in [&hint, &snap, &first] {
        assert!(
            r.damage.iter().any(|d| &d.file == file),
            "{file:?} in {r:?}"
        );
    }
    let header = r.damage.iter().find(|d| d.file == first).expect("header");
    assert_eq!(header.offset, Some(0));
}

#[test]
fn a_torn_tail_is_a_note_and_a_stale_snapshot_is_not_damage() {
    let tmp = tempfile::tempdir().expect("tmp");
    build(tmp.path());
    let last = data_files(tmp.path()).pop().expect("a datafile");
    let len = std::fs::metadata(&last).expect("meta").len();
    let mut bytes = std::fs::read(&last).expect("read");
    bytes.extend_from_slice(&[0xAB; 37]); // half a record
    std::fs::write(&last, bytes).expect("write");
    let r = check(tmp.path(), |_, _| {}).expect("check");
    assert!(r.is_clean(), "{r:?}");
    let torn = r.torn_tail.expect("torn tail noted");
    assert_eq!((torn.file, torn.offset), (last, Some(len)));
    assert!(
        r.snapshot_stale.is_some(),
        "the snapshot no longer matches the files"
    );
}

#[test]
fn a_writer_keeps_check_out_and_a_reader_does_not() {
    let tmp = tempfile::tempdir().expect("tmp");
    build(tmp.path());
    run(async {
        let db = Db::open(tmp.path(), small_opts()).await.expect("open");
        assert!(matches!(
            check(tmp.path(), |_, _| {}),
            Err(Error::Locked { .. })
        ));
        db.close().await.expect("close");
        let ro = Db::open_read_only(tmp.path(), small_opts())
            .await
            .expect("ro");
        assert!(check(tmp.path(), |_, _| {}).expect("check").is_clean());
        ro.close().await.expect("close");
    });
}
