//! Conditional writes: `put_if_absent` and `compare_and_swap` are atomic with respect to every
//! other write, on the inline path and through the writer thread, while plain writers and
//! merges run.

mod common;

use std::sync::Arc;

use common::{multi_thread_rt, small_opts};
use ringcask::{Db, SyncPolicy};

const TASKS: u64 = 6;
const INCREMENTS: u64 = 40;

/// Adds 1 to the decimal counter under `key` by compare-and-swap; returns the retries.
async fn increment(db: &Db, key: &str) -> u64 {
    let mut retries = 0;
    loop {
        let cur = db.get(key).await.expect("get");
        let n: u64 = cur
            .as_deref()
            .map(|b| {
                std::str::from_utf8(b)
                    .expect("utf8")
                    .parse()
                    .expect("number")
            })
            .unwrap_or(0);
        let next = (n + 1).to_string();
        // Let the other tasks run between the read and the swap: inline gets and swaps complete
        // without yielding, so on a busy machine the tasks could otherwise run one after
        // another and never race (the test asserts that they did).
        tokio::task::yield_now().await;
        match db
            .compare_and_swap(key, cur, Some(next))
            .await
            .expect("cas")
        {
            Ok(()) => return retries,
            Err(_) => retries += 1,
        }
    }
}

#[test]
fn racing_increments_are_neither_lost_nor_doubled() {
    for inline in [true, false] {
        let tmp = tempfile::tempdir().expect("tmp");
        let rt = multi_thread_rt(2);
        let opts = small_opts()
            .inline_writes(inline)
            .sync(SyncPolicy::Never)
            .merge_check_interval_ms(5)
            .merge_trigger_ratio(0.2)
            .merge_trigger_bytes(8 * 1024);
        rt.block_on(async {
            let db = Arc::new(Db::open(tmp.path(), opts).await.expect("open"));
            let mut tasks = Vec::new();
            for t in 0..TASKS {
                let db = db.clone();
                tasks.push(tokio::spawn(async move {
                    let mut retries = 0;
                    for _ in 0..INCREMENTS {
                        retries += increment(&db, "counter").await;
                        // A plain writer of other keys in between (rotations, dead bytes).
                        db.put(format!("noise{t}"), vec![t as u8; 300])
                            .await
                            .expect("put");
                    }
                    retries
                }));
            }
            let merger = {
                let db = db.clone();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        db.merge().await.expect("merge");
                        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
                    }
                })
            };
            let mut retries = 0;
            for t in tasks {
                retries += t.await.expect("task");
            }
            merger.await.expect("merger");
            let got = db.get("counter").await.expect("get").expect("counter");
            assert_eq!(
                got.as_ref(),
                (TASKS * INCREMENTS).to_string().as_bytes(),
                "inline {inline}: {retries} retries"
            );
            assert!(retries > 0, "inline {inline}: the increments never raced");
            db.close().await.expect("close");
        });
        rt.block_on(async {
            let db = Db::open(tmp.path(), small_opts()).await.expect("reopen");
            let got = db.get("counter").await.expect("get").expect("counter");
            assert_eq!(got.as_ref(), (TASKS * INCREMENTS).to_string().as_bytes());
        });
    }
}

#[test]
fn of_racing_put_if_absent_exactly_one_wins() {
    let rt = multi_thread_rt(2);
    for round in 0..20u32 {
        let tmp = tempfile::tempdir().expect("tmp");
        let inline = round % 2 == 0;
        rt.block_on(async {
            let db = Arc::new(
                Db::open(tmp.path(), small_opts().inline_writes(inline))
                    .await
                    .expect("open"),
            );
            let tasks: Vec<_> = (0..8u8)
                .map(|t| {
                    let db = db.clone();
                    tokio::spawn(async move { (t, db.put_if_absent("k", [t]).await.expect("put")) })
                })
                .collect();
            let mut winners = Vec::new();
            for t in tasks {
                let (t, won) = t.await.expect("task");
                if won {
                    winners.push(t);
                }
            }
            assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
            let v = db.get("k").await.expect("get").expect("value");
            assert_eq!(v.as_ref(), &[winners[0]]);
            // A deleted or expired key is absent again.
            db.delete("k").await.expect("delete");
            assert!(db.put_if_absent("k", "again").await.expect("put"));
            db.put_with_ttl("t", "x", std::time::Duration::ZERO)
                .await
                .expect("ttl");
            assert!(db.put_if_absent("t", "y").await.expect("put"));
            db.close().await.expect("close");
        });
    }
}

#[test]
fn expire_and_ttl_change_a_keys_life_and_survive_a_reopen() {
    use std::time::Duration;
    let tmp = tempfile::tempdir().expect("tmp");
    common::run(async {
        let db = Db::open(tmp.path(), small_opts()).await.expect("open");
        assert!(!db.expire("missing", None).await.expect("expire"));
        assert_eq!(db.ttl("missing"), None);
        db.put("forever", "v").await.expect("put");
        db.put_with_ttl("short", "v", Duration::from_secs(3600))
            .await
            .expect("put");
        assert_eq!(db.ttl("forever"), Some(None));
        let left = db.ttl("short").flatten().expect("an expiry");
        assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600));
        assert!(db.expire("short", None).await.expect("persist"));
        assert!(db
            .expire("forever", Some(Duration::from_millis(150)))
            .await
            .expect("expire"));
        db.put("soon", "x").await.expect("put");
        assert!(db
            .expire("soon", Some(Duration::from_secs(3600)))
            .await
            .expect("expire"));
        assert_eq!(
            db.get("short").await.expect("get").as_deref(),
            Some(&b"v"[..])
        );
        db.close().await.expect("close");
    });
    std::thread::sleep(Duration::from_millis(200));
    common::run(async {
        let db = Db::open(tmp.path(), small_opts()).await.expect("reopen");
        assert_eq!(
            db.ttl("short"),
            Some(None),
            "persisting survived the reopen"
        );
        assert_eq!(
            db.get("forever").await.expect("get"),
            None,
            "the new expiry did too"
        );
        assert!(db.ttl("soon").flatten().is_some());
        assert_eq!(
            db.get("soon").await.expect("get").as_deref(),
            Some(&b"x"[..])
        );
    });
}

#[test]
fn get_many_returns_values_in_order() {
    let tmp = tempfile::tempdir().expect("tmp");
    common::run(async {
        let db = Db::open(tmp.path(), small_opts()).await.expect("open");
        for i in 0..300u32 {
            if i % 3 != 0 {
                db.put(format!("k{i}"), format!("v{i}")).await.expect("put");
            }
        }
        db.merge().await.expect("merge");
        let keys: Vec<String> = (0..300u32).map(|i| format!("k{i}")).collect();
        let got = db.get_many(&keys).await.expect("get_many");
        for (i, v) in got.iter().enumerate() {
            let want = (i % 3 != 0).then(|| format!("v{i}"));
            assert_eq!(v.as_deref(), want.as_deref().map(str::as_bytes), "k{i}");
        }
        db.close().await.expect("close");
    });
}
