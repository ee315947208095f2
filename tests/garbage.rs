//! Opening hostile directories: real stores with random damage (bit flips, cuts, extensions,
//! swapped files) and files of random bytes. Open must return a value or a clear error, reads
//! must too, and no thread of the engine may panic.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{run, small_opts, Rng};
use ringcask::{Db, Error, WriteBatch};

fn make_store(dir: &Path) {
    run(async {
        let db = Db::open(dir, small_opts()).await.expect("open");
        for i in 0..300u32 {
            db.put(format!("k{}", i % 120), vec![i as u8; (i % 97) as usize])
                .await
                .expect("put");
            if i % 13 == 0 {
                db.delete(format!("k{}", i % 50)).await.expect("delete");
            }
            if i % 29 == 0 {
                db.write(WriteBatch::new().put(format!("b{i}"), "x").delete("k1"))
                    .await
                    .expect("batch");
            }
        }
        db.close().await.expect("close");
    });
}

fn mutate(dir: &Path, rng: &mut Rng) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n != "LOCK"))
        .collect();
    files.sort();
    for _ in 0..1 + rng.below(3) {
        let f = &files[rng.below(files.len() as u64) as usize];
        let mut bytes = std::fs::read(f).expect("read");
        match rng.below(6) {
            0 => {
                for _ in 0..1 + rng.below(4) {
                    if !bytes.is_empty() {
                        let i = rng.below(bytes.len() as u64) as usize;
                        bytes[i] ^= 1 << rng.below(8);
                    }
                }
            }
            1 => bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize),
            2 => {
                let n = rng.below(200) as usize;
                bytes.extend(rng.bytes(n));
            }
            3 => {
                // A huge length field somewhere.
                if bytes.len() > 8 {
                    let i = rng.below(bytes.len() as u64 - 4) as usize;
                    bytes[i..i + 4].copy_from_slice(&u32::MAX.to_le_bytes());
                }
            }
            4 => {
                let n = rng.below(100) as usize;
                bytes = rng.bytes(n);
            }
            _ => {
                // Swap contents with another file of the store.
                let g = &files[rng.below(files.len() as u64) as usize];
                bytes = std::fs::read(g).expect("read");
            }
        }
        std::fs::write(f, &bytes).expect("write");
    }
}

#[test]
fn damaged_directories_never_panic() {
    let panics = Arc::new(AtomicUsize::new(0));
    let counter = panics.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let pristine = tempfile::tempdir().expect("tmp");
    make_store(pristine.path());
    let mut rng = Rng::new(7);
    let (mut opened, mut refused) = (0, 0);
    let rounds: u64 = common::env_or("RINGCASK_GARBAGE_ROUNDS", 150);
    for round in 0..rounds {
        let tmp = tempfile::tempdir().expect("tmp");
        for e in std::fs::read_dir(pristine.path()).expect("read_dir") {
            let e = e.expect("entry");
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).expect("copy");
        }
        mutate(tmp.path(), &mut rng);
        let skip = round % 2 == 0;
        run(async {
            match Db::open(tmp.path(), small_opts().skip_damaged_records(skip)).await {
                Ok(db) => {
                    opened += 1;
                    for k in db.keys() {
                        match db.get(&k).await {
                            Ok(_) | Err(Error::Corrupt { .. }) => {}
                            Err(e) => panic!("round {round}: unexpected read error {e:?}"),
                        }
                    }
                    db.put("after", "damage").await.expect("writes still work");
                    db.close().await.expect("close");
                }
                Err(Error::Corrupt { .. }) | Err(Error::UnsupportedVersion { .. }) => refused += 1,
                Err(e) => panic!("round {round}: unexpected open error {e:?}"),
            }
        });
    }
    let _ = std::panic::take_hook();
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a thread panicked");
    assert!(
        opened > 10 && refused > 10,
        "opened {opened}, refused {refused}"
    );
}
