use std::os::unix::fs::FileExt;

use super::*;
use crate::fault::FaultInjector;

fn create(fi: &FaultInjector, path: &Path) -> File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .expect("create");
    fi.note_created(path);
    f
}

fn write(fi: &FaultInjector, f: &File, off: u64, data: &[u8]) {
    f.write_all_at(data, off).expect("write");
    fi.note_write(f, off, data);
}

fn sync_dir(fi: &FaultInjector, dir: &Path) {
    fi.note_dir_sync(dir);
}

/// What survives a cut: synced data and dir-synced entries; unsynced data and entries do not;
/// files that existed before are durable; an unlink not dir-synced is undone.
#[test]
fn a_cut_keeps_what_was_synced_and_nothing_else() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    std::fs::write(dir.join("old"), b"before").expect("old");
    std::fs::write(dir.join("gone"), b"unlinked").expect("gone");
    let fi = FaultInjector::power_loss(dir, 1).expect("injector");
    let a = create(&fi, &dir.join("a"));
    write(&fi, &a, 0, b"synced");
    fi.note_sync(&a);
    write(&fi, &a, 6, b"-lost"); // unsynced, and not the last write
    let b = create(&fi, &dir.join("b"));
    sync_dir(&fi, dir);
    std::fs::remove_file(dir.join("gone")).expect("rm");
    let c = create(&fi, &dir.join("c")); // never dir-synced
    write(&fi, &c, 0, b"c");
    fi.note_sync(&c);
    write(&fi, &b, 0, &[7u8; 1]); // the last write: one sector, kept or not
    let cut = fi.cut_power().expect("cut");
    let read = |n: &str| std::fs::read(dir.join(n)).ok();
    assert_eq!(read("old").as_deref(), Some(&b"before"[..]));
    assert_eq!(read("a").as_deref(), Some(&b"synced"[..]));
    assert_eq!(
        read("gone").as_deref(),
        Some(&b"unlinked"[..]),
        "unlink undone"
    );
    assert_eq!(read("c"), None, "entry never dir-synced");
    let b = read("b").expect("b was dir-synced");
    assert!(b.is_empty() || b == [7u8], "{b:?}");
    assert_eq!(cut.torn_write, b == [7u8]);
    assert_eq!(cut.entries_lost, 1);
    assert_eq!(cut.entries_back, 1);
    // The injector fails everything until restarted.
    assert!(fi.check(false).is_err());
    fi.restart();
    assert!(fi.check(false).is_ok());
}

/// The last unsynced write reaches the disk as a subset of its 512-byte sectors (by file
/// offset): over many seeds every sector is sometimes kept and sometimes lost, and nothing
/// else of the file changes.
#[test]
fn the_last_write_tears_at_sector_granularity() {
    let (mut kept_some, mut lost_some) = (0, 0);
    for seed in 1..40u64 {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        let fi = FaultInjector::power_loss(dir, seed * 7919).expect("injector");
        let f = create(&fi, &dir.join("f"));
        sync_dir(&fi, dir);
        write(&fi, &f, 0, &[1u8; 1000]);
        fi.note_sync(&f);
        // Spans sectors 1 (from 1000), 2, 3 and 4 (up to 2100).
        write(&fi, &f, 1000, &[2u8; 1100]);
        fi.cut_power().expect("cut");
        let got = std::fs::read(dir.join("f")).expect("f");
        assert_eq!(&got[..1000], &[1u8; 1000][..], "synced bytes unchanged");
        for (s, range) in [
            (1, 1000..1024),
            (2, 1024..1536),
            (3, 1536..2048),
            (4, 2048..2100),
        ] {
            let part = got.get(range.clone());
            match part {
                Some(p) if p.iter().all(|&b| b == 2) => kept_some += 1,
                Some(p) => assert!(p.iter().all(|&b| b == 0), "sector {s} mixed: {p:?}"),
                None => lost_some += 1,
            }
        }
    }
    assert!(
        kept_some > 20 && lost_some > 5,
        "{kept_some} kept, {lost_some} lost"
    );
}

/// An inode reused after an unlink is a new file to the model: the unlinked file's durable
/// contents come back under its old name, the new file's under its own.
#[test]
fn reused_inodes_never_mix_two_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let fi = FaultInjector::power_loss(dir, 3).expect("injector");
    let x = create(&fi, &dir.join("x"));
    write(&fi, &x, 0, b"xxxx");
    fi.note_sync(&x);
    sync_dir(&fi, dir);
    drop(x);
    std::fs::remove_file(dir.join("x")).expect("rm");
    for i in 0..20 {
        let y = create(&fi, &dir.join(format!("y{i}")));
        write(&fi, &y, 0, b"yy");
        fi.note_sync(&y);
    }
    sync_dir(&fi, dir);
    fi.cut_power().expect("cut");
    assert_eq!(
        std::fs::read(dir.join("x")).ok(),
        None,
        "the unlink was dir-synced"
    );
    for i in 0..20 {
        assert_eq!(std::fs::read(dir.join(format!("y{i}"))).expect("y"), b"yy");
    }
}
