//! Dropping the last handle without `close`: the close runs on the engine's own thread (the
//! dropping thread, maybe an executor's, does not wait for the disk), it is a full close
//! (keydir snapshot included), and an open of the directory right after waits for it instead of
//! failing with `Error::Locked`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{contents, open, run, small_opts};
use ringcask::testing::FaultInjector;
use ringcask::{Db, SyncPolicy};

#[test]
fn dropping_the_last_handle_does_not_wait_for_the_disk() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fault = FaultInjector::new();
    let want = run(async {
        let opts = small_opts()
            .max_file_bytes(1 << 20)
            .sync(SyncPolicy::IntervalMs(60_000))
            .fault_injector(fault.clone());
        let db = open(tmp.path(), opts).await;
        for i in 0..2000 {
            db.put(format!("k{i}"), vec![i as u8; 100])
                .await
                .expect("put");
        }
        let want = contents(&db).await;
        // The disk stalls: the final sync and seal cannot finish until it is released.
        fault.hold();
        let watchdog_fired = Arc::new(AtomicBool::new(false));
        {
            let (fault, fired) = (fault.clone(), watchdog_fired.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(30));
                fired.store(true, Ordering::SeqCst);
                fault.release();
            });
        }
        // On this current-thread runtime's only thread.
        drop(db);
        let returned_while_held = !watchdog_fired.load(Ordering::SeqCst);
        fault.release();
        assert!(
            returned_while_held,
            "dropping the handle waited for the stalled disk"
        );
        want
    });
    run(async {
        // Right after: waits for the background close rather than failing with `Locked`.
        let db = Db::open(tmp.path(), small_opts())
            .await
            .expect("open right after the drop");
        assert_eq!(contents(&db).await, want);
        assert!(
            db.stats().recovery.from_snapshot,
            "the background close saved the keydir snapshot"
        );
        db.close().await.expect("close");
    });
}

#[test]
fn an_open_right_after_a_drop_waits_for_the_close() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(async {
        for round in 0..20u32 {
            let db = if round % 3 == 2 {
                Db::open_read_only(tmp.path(), small_opts())
                    .await
                    .expect("read-only open right after a drop")
            } else {
                Db::open(tmp.path(), small_opts())
                    .await
                    .expect("open right after a drop")
            };
            for r in 0..round {
                let got = db.get(format!("r{r}")).await.expect("get");
                let want = (r % 3 != 2).then(|| vec![r as u8; 3000]);
                assert_eq!(got.map(|v| v.to_vec()), want, "round {r} after {round}");
            }
            if !db.is_read_only() {
                db.put(format!("r{round}"), vec![round as u8; 3000])
                    .await
                    .expect("put");
            }
            drop(db);
        }
    });
}
