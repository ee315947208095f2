#![allow(clippy::indexing_slicing)]
use super::*;
use crate::test_rng::TestRng;
use crate::{Db, SyncPolicy};
use std::collections::BTreeMap as Map;
use std::path::PathBuf;

fn opts() -> Options {
    Options::default()
        .sync(SyncPolicy::Never)
        .max_file_bytes(8192)
        .preallocate_bytes(0)
        .auto_merge(false)
}

async fn contents(db: &Db) -> Map<Vec<u8>, Vec<u8>> {
    let mut m = Map::new();
    for k in db.keys() {
        let v = db.get(&k).await.expect("get").expect("listed key");
        m.insert(k.to_vec(), v.to_vec());
    }
    m
}

/// Writes a store of several files (overwrites, deletes, long keys, TTLs) and closes it;
/// returns its contents.
fn make_store(dir: &Path) -> Map<Vec<u8>, Vec<u8>> {
    futures::executor::block_on(async {
        let db = Db::open(dir, opts()).await.expect("open");
        for i in 0..600u32 {
            let k = format!("key{}{}", i % 250, "L".repeat((i % 3) as usize * 9));
            db.put(k, format!("value-{i}")).await.expect("put");
        }
        for i in (0..250u32).step_by(7) {
            db.delete(format!("key{i}")).await.expect("delete");
        }
        let hour = std::time::Duration::from_secs(3600);
        db.put_with_ttl("ttl-long", "stays", hour)
            .await
            .expect("ttl");
        db.put_with_ttl("ttl-short", "goes", std::time::Duration::from_millis(1))
            .await
            .expect("ttl");
        std::thread::sleep(std::time::Duration::from_millis(5));
        let want = contents(&db).await;
        assert!(want.contains_key(&b"ttl-long"[..]));
        assert!(!want.contains_key(&b"ttl-short"[..]));
        db.close().await.expect("close");
        want
    })
}

/// Opens `dir`, checks its contents, closes it if `close`; returns the recovery report.
fn reopen(dir: &Path, o: Options, want: &Map<Vec<u8>, Vec<u8>>, close: bool) -> RecoveryReport {
    futures::executor::block_on(async {
        let db = Db::open(dir, o).await.expect("reopen");
        assert!(
            !dir.join(SNAPSHOT_NAME).exists(),
            "the open took the snapshot"
        );
        assert_eq!(&contents(&db).await, want);
        let r = db.stats().recovery;
        if close {
            db.close().await.expect("close");
        }
        r
    })
}

/// The accounting per file, as open rebuilt it.
fn accounting(dir: &Path, o: Options) -> (RecoveryReport, Vec<(u32, u64, u64)>, u64) {
    futures::executor::block_on(async {
        let db = Db::open(dir, o).await.expect("reopen");
        let st = db.stats();
        let mut files: Vec<_> = st
            .files
            .iter()
            .map(|f| (f.file_id, f.total_bytes, f.dead_bytes))
            .collect();
        files.sort();
        let next = {
            db.put("probe-seq", "x").await.expect("put");
            db.stats().puts
        };
        // Leave without a snapshot so that the caller decides what the next open sees.
        db.close().await.expect("close");
        let _ = std::fs::remove_file(dir.join(SNAPSHOT_NAME));
        (st.recovery, files, next)
    })
}

/// A clean close saves a snapshot; the next open loads it with the same contents and the
/// same space accounting as a load from the hint files, and it serves one open only.
#[test]
fn snapshot_loads_like_the_hint_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let want = make_store(tmp.path());
    assert!(tmp.path().join(SNAPSHOT_NAME).exists());
    let saved = std::fs::read(tmp.path().join(SNAPSHOT_NAME)).expect("read");
    let (snap, snap_files, _) = accounting(tmp.path(), opts());
    assert!(snap.from_snapshot, "{snap:?}");
    assert!(snap.files_from_hints == 0 && snap.files_scanned == 0);
    // Undo that session: its probe write went to a file of its own (the snapshot was
    // taken, so nothing changed the old files).
    let newest = std::fs::read_dir(tmp.path())
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "data"))
        .max()
        .expect("a datafile");
    std::fs::remove_file(&newest).expect("rm");
    let _ = std::fs::remove_file(newest.with_extension("hint"));
    let (hints, hint_files, _) = accounting(tmp.path(), opts().keydir_snapshot(false));
    assert!(
        !hints.from_snapshot && hints.files_from_hints > 1,
        "{hints:?}"
    );
    assert_eq!(snap_files, hint_files, "per-file accounting");
    assert_eq!(snap.keys, hints.keys);
    // The saved bytes decode on their own too, with the same keys.
    let head = read_header(&InMemory(&saved)).expect("header");
    let d = decode(&InMemory(&saved), head, 3, now_ms()).expect("decode");
    assert_eq!(d.keydir.len(), want.len());
    // Damage with the checksums recomputed reaches the checks behind them: each
    // snapshot is refused or decodes to a keydir in which every key is found.
    let (mut refused, mut gen) = (0, TestRng::new(0x9E37_79B9_7F4A_7C15));
    for _ in 0..300 {
        let rng = gen.next();
        let mut bad = saved.clone();
        let at = rng as usize % bad.len();
        bad[at] ^= 1 << (rng >> 60 & 7);
        fix_checksums(&mut bad);
        let decoded =
            read_header(&InMemory(&bad)).and_then(|h| decode(&InMemory(&bad), h, 2, now_ms()));
        match decoded {
            Ok(d) => d.keydir.for_each(|k, e| {
                assert_eq!(d.keydir.get(k), Some(*e), "stored key not found");
            }),
            Err(_) => refused += 1,
        }
    }
    assert!(
        refused > 50,
        "only {refused} of 300 damaged snapshots refused"
    );
}

/// A snapshot that does not describe the directory, or is damaged, is deleted and the
/// open loads the hint files; nothing is lost and nothing comes back.
/// Re-encodes the snapshot `saved` after `edit` changed its shards' entries (each entry's
/// bytes), with the index and every checksum made to agree.
fn edit_bodies(saved: &[u8], edit: impl FnOnce(&mut Vec<Vec<Vec<u8>>>)) -> Vec<u8> {
    use crate::format::snapshot::*;
    let fixed = decode_snapshot_fixed(&saved[..SNAPSHOT_FIXED_LEN]).expect("fixed");
    let head_len = snapshot_header_len(fixed.files as usize, fixed.shards as usize);
    let mut head = decode_snapshot_header(&saved[..head_len]).expect("header");
    let mut bodies: Vec<Vec<Vec<u8>>> = head
        .index
        .iter()
        .map(|ix| {
            let mut body = &saved[ix.offset as usize..(ix.offset + ix.len) as usize];
            let mut entries = Vec::new();
            while !body.is_empty() {
                let (_, used) = decode_snapshot_entry(body).expect("entry");
                entries.push(body[..used].to_vec());
                body = &body[used..];
            }
            entries
        })
        .collect();
    edit(&mut bodies);
    let mut out = vec![0u8; head_len];
    for (ix, entries) in head.index.iter_mut().zip(&bodies) {
        let body: Vec<u8> = entries.concat();
        *ix = ShardIndex {
            offset: out.len() as u64,
            len: body.len() as u64,
            entries: entries.len() as u64,
            crc: snapshot_crc(&body),
        };
        out.extend_from_slice(&body);
    }
    out[..head_len].copy_from_slice(&encode_snapshot_header(&head));
    out
}

// long: one scenario per way a snapshot goes stale or bad, each a few lines against one store.
#[test]
fn stale_or_damaged_snapshots_fall_back_to_the_hint_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let mut want = make_store(dir);
    let snap_path = dir.join(SNAPSHOT_NAME);
    let saved = std::fs::read(&snap_path).expect("read");
    let put_back = |bytes: &[u8]| std::fs::write(&snap_path, bytes).expect("write");

    // A power loss undid the unlink of a snapshot the last session had taken, after that
    // session wrote, deleted and merged.
    futures::executor::block_on(async {
        let db = Db::open(dir, opts()).await.expect("open");
        db.put("after", "the snapshot").await.expect("put");
        db.delete("key1").await.expect("delete");
        db.merge().await.expect("merge");
        db.close().await.expect("close");
    });
    want.insert(b"after".to_vec(), b"the snapshot".to_vec());
    want.remove(&b"key1"[..]);
    put_back(&saved);
    let r = reopen(dir, opts(), &want, true);
    assert!(!r.from_snapshot, "{r:?}");

    // Fresh snapshot from that close, then each kind of damage.
    let saved = std::fs::read(&snap_path).expect("a snapshot of the last close");
    let data: Vec<PathBuf> = {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "data"))
            .collect();
        v.sort();
        v
    };
    let last = data.last().expect("a datafile").clone();
    let aside = last.with_extension("data.bak");
    // (what, damage, whether the directory still holds every key)
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, bool);
    let mut cases: Vec<Case> = vec![
        ("valid", Box::new(|| {}), true),
        (
            "a temporary file",
            Box::new(|| std::fs::write(dir.join("0000000099.data.tmp"), b"x").expect("w")),
            true,
        ),
    ];
    // Cases that touch datafiles (a rename or a rewrite moves their ctime, which makes the
    // saved snapshot stale for good) come last, after the snapshot-content cases.
    let touching_datafiles: Vec<Case> = vec![
        (
            "a datafile missing",
            Box::new(|| std::fs::rename(&last, &aside).expect("mv")),
            false,
        ),
        (
            "a datafile changed in place",
            Box::new(|| {
                let b = std::fs::read(&data[0]).expect("read");
                std::thread::sleep(std::time::Duration::from_millis(20));
                std::fs::write(&data[0], b).expect("rewrite");
            }),
            true,
        ),
    ];
    for at in [0usize, 5, 20, 41, saved.len() / 2, saved.len() - 1] {
        let mut bad = saved.clone();
        bad[at] ^= 0x40;
        cases.push(("a flipped byte", Box::new(move || put_back(&bad)), true));
    }
    let short = saved[..saved.len() - 10].to_vec();
    cases.push(("cut short", Box::new(move || put_back(&short)), true));
    cases.push(("not a snapshot", Box::new(|| put_back(b"hello")), true));
    let mut v1 = saved.clone();
    v1[8..12].copy_from_slice(&1u32.to_le_bytes());
    fix_checksums(&mut v1);
    cases.push(("format version 1", Box::new(move || put_back(&v1)), true));
    let dup = edit_bodies(&saved, |bodies| {
        let b = bodies.iter_mut().find(|b| !b.is_empty()).expect("a shard");
        let first = b[0].clone();
        b.push(first);
    });
    cases.push(("a forged duplicate", Box::new(move || put_back(&dup)), true));
    let moved = edit_bodies(&saved, |bodies| {
        let from = bodies.iter().position(|b| !b.is_empty()).expect("a shard");
        let e = bodies[from].pop().expect("an entry");
        let to = (from + 1) % bodies.len();
        bodies[to].push(e);
    });
    cases.push((
        "an entry in the wrong shard",
        Box::new(move || put_back(&moved)),
        true,
    ));
    cases.extend(touching_datafiles);
    for (what, damage, complete) in &cases {
        put_back(&saved);
        damage();
        let r = futures::executor::block_on(async {
            let db = Db::open(dir, opts()).await.expect("reopen");
            assert!(!snap_path.exists(), "{what}: the open took the snapshot");
            if *complete {
                assert!(contents(&db).await == want, "{what}: contents differ");
            }
            let r = db.stats().recovery;
            // Closed before the next case writes its snapshot (a dropped handle would close,
            // and save one, in the background).
            db.close().await.expect("close");
            r
        });
        assert_eq!(r.from_snapshot, *what == "valid", "{what}: {r:?}");
        if aside.exists() {
            std::fs::rename(&aside, &last).expect("mv back");
        }
    }
    // With snapshots off, close saves none and open deletes one it finds.
    put_back(&saved);
    let r = reopen(dir, opts().keydir_snapshot(false), &want, true);
    assert!(!r.from_snapshot);
    assert!(!snap_path.exists(), "no snapshot saved with the option off");
}

/// Entries forged behind valid checksums are refused for what they are: a key stored twice, a
/// key in another shard than its hash's, an entry outside its file, a wrong entry count.
#[test]
fn forged_entries_are_refused_with_their_reason() {
    let tmp = tempfile::tempdir().expect("tmp");
    make_store(tmp.path());
    let saved = std::fs::read(tmp.path().join(SNAPSHOT_NAME)).expect("read");
    let refusal = |bytes: &[u8]| -> String {
        let decoded =
            read_header(&InMemory(bytes)).and_then(|h| decode(&InMemory(bytes), h, 2, now_ms()));
        match decoded {
            Ok(_) => "accepted".into(),
            Err(e) => format!("{e:?}"),
        }
    };
    assert_eq!(refusal(&edit_bodies(&saved, |_| {})), "accepted");
    let first = |bodies: &Vec<Vec<Vec<u8>>>| bodies.iter().position(|b| !b.is_empty());
    let dup = edit_bodies(&saved, |bodies| {
        let i = first(bodies).expect("a shard");
        let e = bodies[i][0].clone();
        bodies[i].push(e);
    });
    assert!(
        refusal(&dup).contains("key stored twice"),
        "{}",
        refusal(&dup)
    );
    let moved = edit_bodies(&saved, |bodies| {
        let i = first(bodies).expect("a shard");
        let e = bodies[i].pop().expect("an entry");
        bodies[(i + 1) % SHARDS].push(e);
    });
    assert!(
        refusal(&moved).contains("wrong shard"),
        "{}",
        refusal(&moved)
    );
    let outside = edit_bodies(&saved, |bodies| {
        let i = first(bodies).expect("a shard");
        let e = &mut bodies[i][0];
        let at = e.len() - 8;
        e[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes()); // offset
    });
    assert!(
        refusal(&outside).contains("outside its file"),
        "{}",
        refusal(&outside)
    );
    let mut short_count = saved.clone();
    use crate::format::snapshot::{decode_snapshot_fixed, LISTED_LEN, SNAPSHOT_FIXED_LEN};
    let fixed = decode_snapshot_fixed(&saved[..SNAPSHOT_FIXED_LEN]).expect("fixed");
    let i = SNAPSHOT_FIXED_LEN + fixed.files as usize * LISTED_LEN + 16; // shard 0's count
    let n = u64::from_le_bytes(short_count[i..i + 8].try_into().expect("8"));
    short_count[i..i + 8].copy_from_slice(&(n + 1).to_le_bytes());
    fix_checksums(&mut short_count);
    // (When shard 0's body is short, the count is caught as more than the body can hold.)
    let why = refusal(&short_count);
    assert!(
        why.contains("entry count") || why.contains("more entries than a shard body can hold"),
        "{why}"
    );
}
