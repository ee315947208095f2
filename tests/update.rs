//! `Db::update` (read-modify-write of one key) and `Db::write_if_absent` (a batch applied only
//! when all its keys are absent) are atomic with respect to every other write, keep or set
//! expiries as asked, and survive a reopen.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{multi_thread_rt, run, small_opts};
use ringcask::{Current, Db, Expiry, SyncPolicy, Update, WriteBatch};

fn parse(v: Option<&Bytes>) -> u64 {
    v.map_or(0, |v| {
        std::str::from_utf8(v)
            .expect("utf8")
            .parse()
            .expect("number")
    })
}

/// `update` as an increment: returns the new count.
async fn incr(db: &Db, key: &str) -> u64 {
    db.update(key, |cur| {
        let n = parse(cur.map(|c| &c.value)) + 1;
        let value = Bytes::from(n.to_string());
        (
            Update::Put {
                value,
                expiry: Expiry::Keep,
            },
            n,
        )
    })
    .await
    .expect("update")
}

#[test]
fn racing_updates_are_neither_lost_nor_doubled_and_each_sees_a_distinct_count() {
    const TASKS: u64 = 6;
    const EACH: u64 = 50;
    for inline in [true, false] {
        let tmp = tempfile::tempdir().expect("tmp");
        let rt = multi_thread_rt(2);
        let opts = small_opts().inline_writes(inline).sync(SyncPolicy::Never);
        let mut seen: Vec<u64> = rt.block_on(async {
            let db = Arc::new(Db::open(tmp.path(), opts).await.expect("open"));
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let db = db.clone();
                    tokio::spawn(async move {
                        let mut got = Vec::new();
                        for _ in 0..EACH {
                            got.push(incr(&db, "n").await);
                        }
                        got
                    })
                })
                .collect();
            let mut seen = Vec::new();
            for t in tasks {
                seen.extend(t.await.expect("task"));
            }
            db.close().await.expect("close");
            seen
        });
        // Every increment returned the count it produced: all of 1..=N, each once.
        seen.sort_unstable();
        let want: Vec<u64> = (1..=TASKS * EACH).collect();
        assert_eq!(seen, want, "inline {inline}");
        rt.block_on(async {
            let db = Db::open(tmp.path(), small_opts()).await.expect("reopen");
            let v = db.get("n").await.expect("get");
            assert_eq!(parse(v.as_ref()), TASKS * EACH);
        });
    }
}

#[test]
fn update_keeps_sets_or_drops_the_expiry_as_asked() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = Db::open(tmp.path(), small_opts()).await.expect("open");
        db.put_with_ttl("k", "1", Duration::from_secs(100))
            .await
            .expect("put");
        let seen = db
            .update("k", |c| (Update::Keep, c.and_then(|c| c.expires_at)))
            .await
            .expect("keep");
        let left = seen.expect("the closure sees the expiry");
        let left = left.duration_since(SystemTime::now()).expect("future");
        assert!(left > Duration::from_secs(90), "{left:?}");
        incr(&db, "k").await;
        let ttl = db.ttl("k").flatten().expect("kept its expiry");
        assert!(ttl > Duration::from_secs(90) && ttl <= Duration::from_secs(100));
        // Expiry::Keep on an absent key: no expiry.
        incr(&db, "fresh").await;
        assert_eq!(db.ttl("fresh"), Some(None));
        // Never drops it; In sets one.
        let put = |expiry| {
            move |_: Option<&Current>| {
                let value = Bytes::from_static(b"v");
                (Update::Put { value, expiry }, ())
            }
        };
        db.update("k", put(Expiry::Never)).await.expect("update");
        assert_eq!(db.ttl("k"), Some(None));
        db.update("k", put(Expiry::In(Duration::from_secs(5))))
            .await
            .expect("update");
        assert!(db.ttl("k").flatten().expect("ttl") <= Duration::from_secs(5));
        // At a time in the future; at a time past deletes the key.
        let at = SystemTime::now() + Duration::from_secs(50);
        db.update("k", put(Expiry::At(at))).await.expect("update");
        let ttl = db.ttl("k").flatten().expect("ttl");
        assert!(ttl > Duration::from_secs(45) && ttl <= Duration::from_secs(50));
        let past = SystemTime::now() - Duration::from_secs(1);
        db.update("k", put(Expiry::At(past))).await.expect("update");
        assert_eq!(db.get("k").await.expect("get"), None);
        db.update("absent", put(Expiry::At(past)))
            .await
            .expect("update");
        assert_eq!(db.get("absent").await.expect("get"), None);
        // Six puts above; the past expiry deleted "k" and wrote nothing for "absent".
        let stats = db.stats();
        assert_eq!((stats.puts, stats.deletes), (6, 1));
        db.close().await.expect("close");
    });
}

#[test]
fn update_keep_and_delete_write_only_what_changes() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        let db = Db::open(tmp.path(), small_opts()).await.expect("open");
        db.put("k", "v").await.expect("put");
        let seen = db
            .update("k", |c| (Update::Keep, c.map(|c| c.value.clone())))
            .await
            .expect("keep");
        assert_eq!(seen.as_deref(), Some(&b"v"[..]));
        let old = db
            .update("k", |c| (Update::Delete, c.map(|c| c.value.clone())))
            .await
            .expect("getdel");
        assert_eq!(old.as_deref(), Some(&b"v"[..]));
        assert_eq!(db.get("k").await.expect("get"), None);
        // Deleting an absent key writes no tombstone.
        let deletes = db.stats().deletes;
        let old = db
            .update("k", |c| (Update::Delete, c.map(|c| c.value.clone())))
            .await
            .expect("delete absent");
        assert_eq!(old, None);
        assert_eq!(db.stats().deletes, deletes);
        db.close().await.expect("close");
        let db = Db::open(tmp.path(), small_opts()).await.expect("reopen");
        assert_eq!(db.get("k").await.expect("get"), None);
        db.close().await.expect("close");
    });
}

#[test]
fn of_racing_write_if_absent_batches_over_one_shared_key_exactly_one_applies_whole() {
    let rt = multi_thread_rt(2);
    for round in 0..10u8 {
        let tmp = tempfile::tempdir().expect("tmp");
        let inline = round % 2 == 0;
        rt.block_on(async {
            let opts = small_opts().inline_writes(inline);
            let db = Arc::new(Db::open(tmp.path(), opts).await.expect("open"));
            let tasks: Vec<_> = (0..6u8)
                .map(|t| {
                    let db = db.clone();
                    tokio::spawn(async move {
                        let b = WriteBatch::new()
                            .put(format!("own{t}"), [t])
                            .put("shared", [t]);
                        (t, db.write_if_absent(b).await.expect("write"))
                    })
                })
                .collect();
            let mut winners = Vec::new();
            for task in tasks {
                let (t, won) = task.await.expect("task");
                if won {
                    winners.push(t);
                }
            }
            assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
            let w = winners[0];
            let shared = db.get("shared").await.expect("get").expect("shared");
            assert_eq!(shared.as_ref(), &[w]);
            for t in 0..6u8 {
                let own = db.get(format!("own{t}")).await.expect("get");
                assert_eq!(own.is_some(), t == w, "round {round}: own{t}");
            }
            // An expired key counts as absent; an empty batch applies.
            db.put_with_ttl("gone", "x", Duration::ZERO)
                .await
                .expect("put");
            assert!(db
                .write_if_absent(WriteBatch::new().put("gone", "y"))
                .await
                .expect("write"));
            assert!(db.write_if_absent(WriteBatch::new()).await.expect("empty"));
            db.close().await.expect("close");
        });
    }
}
