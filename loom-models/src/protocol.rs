//! Every interleaving of the keydir protocol's actors. Only built with `--cfg loom`.

use loom::sync::Arc;
use loom::thread;

use ringcask::loom_api::{Entry, KeyDir};

const K: &[u8] = b"k";
/// File of the original record, file of the merge's copy, the writer's active file.
const INPUT: u32 = 1;
const OUTPUT: u32 = 9;
const ACTIVE: u32 = 5;

/// An entry for `seq` in `file_id`.
fn at(seq: u64, file_id: u32) -> Entry {
    Entry {
        seq,
        expiry_ms: 0,
        file_id,
        offset: 20,
        len: 40,
    }
}

fn setup() -> Arc<KeyDir> {
    let kd = Arc::new(KeyDir::default());
    kd.install(K, at(1, INPUT));
    kd
}

/// The merge's side: read the entry while copying, later repoint to the copy.
fn merge(kd: &KeyDir) {
    if let Some(e) = kd.get(K) {
        if e.file_id == INPUT {
            let copy = Entry {
                file_id: OUTPUT,
                offset: 100,
                ..e
            };
            kd.repoint(K, e.seq, INPUT, copy);
        }
    }
}

#[test]
fn a_put_racing_a_merge_always_wins() {
    loom::model(|| {
        let kd = setup();
        let m = {
            let kd = kd.clone();
            thread::spawn(move || merge(&kd))
        };
        kd.install(K, at(2, ACTIVE));
        m.join().expect("merge thread");
        assert_eq!(kd.get(K), Some(at(2, ACTIVE)));
    });
}

#[test]
fn a_delete_racing_a_merge_is_never_undone() {
    loom::model(|| {
        let kd = setup();
        let m = {
            let kd = kd.clone();
            thread::spawn(move || merge(&kd))
        };
        kd.delete(K, 2);
        m.join().expect("merge thread");
        assert_eq!(kd.get(K), None);
    });
}

#[test]
fn readers_never_see_a_key_go_back_in_time() {
    loom::model(|| {
        let kd = setup();
        let m = {
            let kd = kd.clone();
            thread::spawn(move || merge(&kd))
        };
        let r = {
            let kd = kd.clone();
            thread::spawn(move || {
                let first = kd.get(K);
                let second = kd.get(K);
                match (first, second) {
                    (Some(a), Some(b)) => assert!(b.seq >= a.seq, "{a:?} then {b:?}"),
                    (None, Some(b)) => panic!("a deleted key came back: {b:?}"),
                    _ => {}
                }
            })
        };
        // The single writer: a put, then a delete.
        kd.install(K, at(2, ACTIVE));
        kd.delete(K, 3);
        m.join().expect("merge thread");
        r.join().expect("reader thread");
        assert_eq!(kd.get(K), None);
    });
}

#[test]
fn a_merge_without_races_repoints_to_its_copy() {
    loom::model(|| {
        let kd = setup();
        let m = {
            let kd = kd.clone();
            thread::spawn(move || merge(&kd))
        };
        let r = {
            let kd = kd.clone();
            thread::spawn(move || {
                let e = kd.get(K).expect("the key is always present");
                assert_eq!(e.seq, 1);
                assert!(e.file_id == INPUT || e.file_id == OUTPUT);
            })
        };
        m.join().expect("merge thread");
        r.join().expect("reader thread");
        let e = kd.get(K).expect("present");
        assert_eq!((e.seq, e.file_id), (1, OUTPUT));
    });
}

#[test]
fn expiring_in_a_merge_never_removes_a_newer_put() {
    loom::model(|| {
        let kd = setup();
        let m = {
            let kd = kd.clone();
            thread::spawn(move || {
                // The merge found seq 1 expired and wrote a tombstone for it.
                kd.expire(K, 1);
            })
        };
        kd.install(K, at(2, ACTIVE));
        m.join().expect("merge thread");
        assert_eq!(kd.get(K), Some(at(2, ACTIVE)));
    });
}

#[test]
fn recovery_loads_in_any_order_give_the_newest_record() {
    loom::model(|| {
        // File A holds put seq 1 and put seq 4 of "k"; file B a tombstone marker seq 3 of "k"
        // and put seq 2 of "j". Two loader threads, one per file.
        let kd = Arc::new(KeyDir::default());
        let a = {
            let kd = kd.clone();
            thread::spawn(move || {
                kd.install(b"k", at(1, 1));
                kd.install(b"k", at(4, 1));
            })
        };
        let b = {
            let kd = kd.clone();
            thread::spawn(move || {
                kd.install(b"k", Entry::marker(3));
                kd.install(b"j", at(2, 2));
            })
        };
        a.join().expect("loader a");
        b.join().expect("loader b");
        assert_eq!(kd.get(b"k"), Some(at(4, 1)));
        assert_eq!(kd.get(b"j"), Some(at(2, 2)));
    });
}

// Batches are modelled against one other actor at a time: a three-thread model (batch vs merge
// vs put) trips loom 0.7.3's own assertion (`rt/notify.rs: state.notified`, in `join`) at three
// preemptions. No keydir call holds more than one shard lock, so pairs cover the protocol.

#[test]
fn a_batch_racing_a_merge_keeps_its_writes() {
    loom::model(|| {
        // "k" in the merge's input; the writer's batch puts "k" seq 2 and deletes "j" seq 3.
        let kd = setup();
        kd.install(b"j", at(1, INPUT));
        let m = {
            let kd = kd.clone();
            thread::spawn(move || merge(&kd))
        };
        kd.apply_many(&[(K, at(2, ACTIVE), false), (b"j", at(3, ACTIVE), true)]);
        m.join().expect("merge thread");
        assert_eq!(kd.get(K), Some(at(2, ACTIVE)));
        assert_eq!(kd.get(b"j"), None);
    });
}

#[test]
fn a_batch_and_a_newer_put_leave_the_newest_write() {
    loom::model(|| {
        // A batch deletes "j" with seq 3 while a put of "j" with seq 4 races it.
        let kd = setup();
        kd.install(b"j", at(1, INPUT));
        let p = {
            let kd = kd.clone();
            thread::spawn(move || {
                kd.install(b"j", at(4, ACTIVE));
            })
        };
        kd.apply_many(&[(K, at(2, ACTIVE), false), (b"j", at(3, ACTIVE), true)]);
        p.join().expect("put thread");
        assert_eq!(kd.get(K), Some(at(2, ACTIVE)));
        assert_eq!(kd.get(b"j"), Some(at(4, ACTIVE)), "the newer put of j wins");
    });
}

#[test]
fn grouped_recovery_loads_and_the_sweep_leave_only_live_newest_entries() {
    loom::model(|| {
        // Two loaders apply their files in groups; markers lose to newer puts and the sweep
        // drops the markers that won.
        let kd = Arc::new(KeyDir::default());
        let a = {
            let kd = kd.clone();
            thread::spawn(move || {
                kd.apply_many(&[(b"k", at(1, 1), false), (b"j", Entry::marker(5), false)]);
            })
        };
        kd.apply_many(&[(b"k", Entry::marker(2), false), (b"j", at(3, 2), false)]);
        a.join().expect("loader");
        kd.sweep(0);
        assert_eq!(kd.get(b"k"), None, "the newer tombstone of k wins");
        assert_eq!(kd.get(b"j"), None, "the newer tombstone of j wins");
        assert!(kd.is_empty());
    });
}
