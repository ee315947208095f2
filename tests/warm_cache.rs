//! The value cache's warm-up after open (`Options::warm_value_cache`): when the store's live
//! records fit the cache, the merge thread caches every live value after open, so gets of a
//! restarted store need no read; values are exact (overwrites, deletes, expired keys, values
//! kept apart), a store too large for the cache or a warm-up turned off caches nothing, a
//! damaged record or value is never cached (its get still reports it), and a merge asked for
//! during the warm-up runs.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::{flip, needs_direct, run, supports_direct};
use ringcask::{Db, Error, IoMode, Options, Stats, SyncPolicy};

/// Values of key `i`, starting with the unique `v{i}/{gen}:`: sizes that stay in their
/// records (100, 3000, 40 bytes) and, under the direct-IO writer, one kept apart (4096).
fn value(i: u32, gen: u32) -> Vec<u8> {
    let len = [100usize, 4096, 3000, 40][i as usize % 4];
    let mut v = format!("v{i}/{gen}:").into_bytes();
    v.extend((v.len()..len).map(|j| (i as usize * 7 + j) as u8));
    v
}

fn opts(mode: IoMode, cache: u64) -> Options {
    Options::default()
        .io_mode(mode)
        .sync(SyncPolicy::Always)
        .max_file_bytes(128 * 1024)
        .preallocate_bytes(64 * 1024)
        .value_cache_bytes(cache)
}

/// Fills a store: 300 keys, every 5th overwritten, every 7th deleted, every 11th written with
/// a TTL that has passed by the reopen. Returns what each live key holds.
async fn fill(db: &Db) -> BTreeMap<String, Vec<u8>> {
    let mut model = BTreeMap::new();
    for i in 0..300u32 {
        let k = format!("key{i}");
        if i % 11 == 0 {
            db.put_with_ttl(&k, value(i, 0), Duration::from_millis(1))
                .await
                .expect("put with ttl");
            continue;
        }
        db.put(&k, value(i, 0)).await.expect("put");
        model.insert(k, value(i, 0));
    }
    for i in (0..300u32).step_by(5).filter(|i| i % 11 != 0) {
        let k = format!("key{i}");
        db.put(&k, value(i, 1)).await.expect("overwrite");
        model.insert(k, value(i, 1));
    }
    for i in (0..300u32).step_by(7) {
        let k = format!("key{i}");
        db.delete(&k).await.expect("delete");
        model.remove(&k);
    }
    std::thread::sleep(Duration::from_millis(5));
    model
}

/// Stats once `values_warmed` reached `want` (fails the test after 20 s).
fn warmed(db: &Db, want: u64) -> Stats {
    let started = Instant::now();
    loop {
        let s = db.stats();
        if s.values_warmed >= want {
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "warm-up cached {} of {want} values: {s:?}",
            s.values_warmed
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn reads(s: &Stats) -> u64 {
    s.reads_ring + s.reads_io_thread + s.reads_inline + s.reads_tail
}

#[test]
fn a_reopened_store_serves_every_live_value_from_the_warmed_cache() {
    for mode in [IoMode::Buffered, IoMode::Direct] {
        let tmp = tempfile::tempdir().expect("tmp");
        if mode == IoMode::Direct {
            needs_direct(tmp.path());
        }
        run(async {
            let db = Db::open(tmp.path(), opts(mode, 0)).await.expect("open");
            let model = fill(&db).await;
            db.close().await.expect("close");
            if mode == IoMode::Direct {
                assert!(
                    !common::files_with_ext(tmp.path(), "vals").is_empty(),
                    "the direct-IO writer kept no value apart"
                );
            }
            let live = model.len() as u64;
            let db = Db::open(tmp.path(), opts(mode, 64 << 20))
                .await
                .expect("reopen");
            let s = warmed(&db, live);
            assert_eq!(s.values_warmed, live, "{mode:?}: {s:?}");
            for i in 0..300u32 {
                let k = format!("key{i}");
                let got = db.get(&k).await.expect("get");
                assert_eq!(
                    got.as_deref(),
                    model.get(&k).map(|v| &v[..]),
                    "{mode:?} {k}"
                );
            }
            let s = db.stats();
            assert_eq!(reads(&s), 0, "{mode:?}: a get read a file: {s:?}");
            assert_eq!(s.reads_cached, live, "{mode:?}: {s:?}");
            db.close().await.expect("close");
        });
    }
}

#[test]
fn nothing_is_warmed_when_the_store_does_not_fit_or_warm_up_is_off() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = Db::open(tmp.path(), opts(IoMode::Buffered, 0))
            .await
            .expect("open");
        let model = fill(&db).await;
        db.close().await.expect("close");
        let fits = opts(IoMode::Buffered, 64 << 20);
        for (what, o) in [
            (
                "a cache smaller than the store",
                opts(IoMode::Buffered, 64 << 10),
            ),
            ("warm-up off", fits.clone().warm_value_cache(false)),
            ("control: warm-up on", fits),
        ] {
            let db = Db::open(tmp.path(), o).await.expect("reopen");
            // The warm-up of this store takes milliseconds: give it a second.
            std::thread::sleep(Duration::from_secs(1));
            let s = db.stats();
            let want = if what.starts_with("control") {
                model.len() as u64
            } else {
                0
            };
            assert_eq!(s.values_warmed, want, "{what}: {s:?}");
            for (k, v) in &model {
                let got = db.get(k).await.expect("get");
                assert_eq!(got.as_deref(), Some(&v[..]), "{what}: {k}");
            }
            db.close().await.expect("close");
        }
    });
}

/// Where `needle` first occurs in `path`.
fn find(path: &std::path::Path, needle: &[u8]) -> Option<u64> {
    let bytes = std::fs::read(path).expect("read file");
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p as u64)
}

/// A store in `dir` filled by [`fill`] and closed, written in direct mode where the file
/// system allows it: the mode, and what each live key holds.
fn filled(dir: &std::path::Path) -> (IoMode, BTreeMap<String, Vec<u8>>) {
    let mode = match supports_direct(dir) {
        true => IoMode::Direct,
        false => IoMode::Buffered,
    };
    run(async {
        let db = Db::open(dir, opts(mode, 0)).await.expect("open");
        let model = fill(&db).await;
        db.close().await.expect("close");
        (mode, model)
    })
}

#[test]
fn a_damaged_record_or_value_is_not_warmed_and_its_get_reports_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (mode, model) = filled(tmp.path());
    let direct = mode == IoMode::Direct;
    run(async {
        // A record in the middle of the oldest datafile: key4's 100-byte value (never
        // overwritten, never deleted).
        let data = common::data_files(tmp.path());
        let at = find(&data[0], b"v4/0:").expect("key4's value in the first datafile");
        flip(&data[0], at + 50);
        let mut damaged = vec!["key4".to_string()];
        // A value kept apart: the first one of the first value file (its header fills the
        // first block), whichever key it belongs to.
        if let Some(vals) = common::files_with_ext(tmp.path(), "vals").first() {
            let mut block = vec![0u8; 4096];
            let f = std::fs::File::open(vals).expect("open vals");
            f.read_exact_at(&mut block, 4096).expect("read first value");
            let owner = model
                .iter()
                .find(|(_, v)| v.len() == 4096 && v[..] == block[..])
                .map(|(k, _)| k.clone());
            if let Some(k) = owner {
                flip(vals, 4096 + 100);
                damaged.push(k);
            }
        }
        assert_eq!(damaged.len(), if direct { 2 } else { 1 }, "{damaged:?}");
        let db = Db::open(tmp.path(), opts(mode, 64 << 20))
            .await
            .expect("reopen");
        std::thread::sleep(Duration::from_secs(1));
        let s = db.stats();
        let live = model.len() as u64;
        assert!(
            s.values_warmed > 0 && s.values_warmed < live,
            "{live} live values: {s:?}"
        );
        for (k, v) in &model {
            let got = db.get(k).await;
            if damaged.contains(k) {
                assert!(matches!(got, Err(Error::Corrupt { .. })), "{k}: {got:?}");
            } else {
                assert_eq!(got.expect("get").as_deref(), Some(&v[..]), "{k}");
            }
        }
        db.close().await.expect("close");
    });
}

#[test]
fn a_merge_asked_for_right_after_open_runs_and_every_value_stays_exact() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (mode, model) = filled(tmp.path());
    run(async {
        let db = Db::open(tmp.path(), opts(mode, 64 << 20))
            .await
            .expect("reopen");
        // Sent while the warm-up may still run: it gives way, and the merge is served.
        let report = db.merge().await.expect("merge");
        assert!(!report.inputs.is_empty(), "{report:?}");
        let s = db.stats();
        assert!(s.values_warmed <= model.len() as u64, "{s:?}");
        for i in 0..300u32 {
            let k = format!("key{i}");
            let got = db.get(&k).await.expect("get");
            assert_eq!(got.as_deref(), model.get(&k).map(|v| &v[..]), "{k}");
        }
        db.close().await.expect("close");
        // And the merged store warms whole at the next open.
        let db = Db::open(tmp.path(), opts(mode, 64 << 20))
            .await
            .expect("reopen merged");
        warmed(&db, model.len() as u64);
        for (k, v) in &model {
            assert_eq!(
                db.get(k).await.expect("get").as_deref(),
                Some(&v[..]),
                "{k}"
            );
        }
        assert_eq!(reads(&db.stats()), 0, "{:?}", db.stats());
        db.close().await.expect("close");
    });
}
