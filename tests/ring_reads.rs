//! Direct reads submitted by the caller to the shared ring (`Options::caller_submits_reads`),
//! and reaped either by the engine's reaper thread or by a task on the caller's tokio runtime
//! (`Options::reap_on_tokio`): every read returns its value whoever reaps it, whichever
//! runtime or executor the caller is on; reaping passes back to the thread when the runtime
//! with the task shuts down or stops running it; gets dropped mid-read leave nothing behind;
//! failed reads come back as errors.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{multi_thread_rt, needs_direct, run, small_opts};
use ringcask::testing::FaultInjector;
use ringcask::{Db, Error, IoMode, Options};

fn value(i: u32) -> Vec<u8> {
    let len = [1usize, 100, 3000, 4096, 4097, 9000][i as usize % 6];
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

const N: u32 = 200;

/// Runs `body` on its own thread and fails if it has not finished within a minute: a read
/// nobody wakes must fail the test, not hang it.
fn within_a_minute(body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => t.join().expect("test body"),
        // The body panicked (its sender dropped): report its panic.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(p) = t.join() {
                std::panic::resume_unwind(p)
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("a read was never woken: the test body did not finish within a minute")
        }
    }
}

/// Direct mode, no value cache (every get reads the file), the shared ring reaped by a task.
fn opts() -> Options {
    small_opts()
        .max_file_bytes(256 * 1024)
        .io_mode(IoMode::Direct)
        .value_cache_bytes(0)
        .reap_on_tokio(true)
}

/// A store of `N` values, all in sealed files (closed and reopened), in a fresh directory.
fn store() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tmp");
    needs_direct(tmp.path());
    run(async {
        let db = Db::open(tmp.path(), opts()).await.expect("open");
        for i in 0..N {
            db.put(format!("k{i}"), value(i)).await.expect("put");
        }
        db.close().await.expect("close");
    });
    tmp
}

async fn check(db: &Db, from: u32, to: u32) {
    for i in from..to {
        let got = db.get(format!("k{i}")).await.expect("get");
        assert_eq!(got.as_deref(), Some(&value(i)[..]), "k{i}");
    }
}

/// Gets from many tasks of a multi-thread runtime at once.
async fn check_concurrently(db: &Db) {
    let tasks: Vec<_> = (0..8u32)
        .map(|t| {
            let db = db.clone();
            tokio::spawn(async move { check(&db, t * N / 8, (t + 1) * N / 8).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
}

#[test]
fn a_task_on_the_callers_runtime_reaps_and_the_thread_takes_over_when_it_shuts_down() {
    within_a_minute(|| {
        let tmp = store();
        let rt = multi_thread_rt(2);
        let db = rt.block_on(Db::open(tmp.path(), opts())).expect("open");
        rt.block_on(check_concurrently(&db));
        let s = db.stats();
        assert_eq!(s.reads_ring, u64::from(N), "{s:?}");
        assert!(
            s.reads_reaped_on_runtime > 0,
            "a task on the runtime reaped: {s:?}"
        );
        // The runtime with the task goes away: a caller on a current-thread runtime, then one on
        // no runtime at all, are woken by the thread.
        drop(rt);
        let by_task = db.stats().reads_reaped_on_runtime;
        run(check(&db, 0, N));
        futures::executor::block_on(check(&db, 0, N));
        let s = db.stats();
        assert_eq!(s.reads_ring, 3 * u64::from(N), "{s:?}");
        assert_eq!(
            s.reads_reaped_on_runtime, by_task,
            "the thread reaped: {s:?}"
        );
        // A new multi-thread runtime starts a new task.
        let rt = multi_thread_rt(2);
        rt.block_on(check_concurrently(&db));
        assert!(db.stats().reads_reaped_on_runtime > by_task);
        rt.block_on(db.close()).expect("close");
    });
}

#[test]
fn the_thread_reaps_by_default_and_reads_go_to_read_threads_when_callers_do_not_submit() {
    within_a_minute(|| {
        let tmp = store();
        let rt = multi_thread_rt(2);
        for (submit, reap) in [(true, false), (false, true)] {
            let o = opts().caller_submits_reads(submit).reap_on_tokio(reap);
            let db = rt.block_on(Db::open(tmp.path(), o)).expect("open");
            rt.block_on(check_concurrently(&db));
            let s = db.stats();
            assert_eq!(s.reads_reaped_on_runtime, 0, "{s:?}");
            assert_eq!(s.reads_direct, u64::from(N), "{s:?}");
            // Every record here spans at most 16 KiB of blocks: each read went into a buffer
            // registered with the ring that carried it (the shared one or a read thread's).
            assert_eq!(s.reads_registered, u64::from(N), "{s:?}");
            if submit {
                assert_eq!(
                    (s.reads_ring, s.reads_io_thread),
                    (u64::from(N), 0),
                    "{s:?}"
                );
            } else {
                assert_eq!(
                    (s.reads_ring, s.reads_io_thread),
                    (0, u64::from(N)),
                    "{s:?}"
                );
            }
            rt.block_on(db.close()).expect("close");
        }
    });
}

/// tokio panics when asked to watch a descriptor on a runtime without IO; the engine catches
/// that and the thread reaps.
#[test]
fn a_runtime_without_io_gets_the_thread() {
    within_a_minute(|| {
        let tmp = store();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .expect("runtime");
        let db = rt.block_on(Db::open(tmp.path(), opts())).expect("open");
        rt.block_on(check_concurrently(&db));
        let s = db.stats();
        assert_eq!(s.reads_ring, u64::from(N), "{s:?}");
        assert_eq!(s.reads_reaped_on_runtime, 0, "{s:?}");
        rt.block_on(db.close()).expect("close");
    });
}

/// The runtime whose task reaps is alive but its only worker is blocked: a caller elsewhere is
/// still woken (the thread finds the completions nobody took).
#[test]
fn completions_the_task_cannot_take_are_taken_by_the_thread() {
    within_a_minute(|| {
        let tmp = store();
        let rt = multi_thread_rt(1);
        let db = rt.block_on(Db::open(tmp.path(), opts())).expect("open");
        rt.block_on(check(&db, 0, 10));
        assert!(db.stats().reads_reaped_on_runtime > 0);
        let (started, released) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let blocker = {
            let (started, released) = (started.clone(), released.clone());
            rt.spawn(async move {
                started.store(true, Ordering::SeqCst);
                // Blocks the runtime's only worker (and so the reaper task) until released.
                while !released.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        common::poll_until("the blocker runs", Duration::from_secs(10), || {
            started.load(Ordering::SeqCst)
        });
        futures::executor::block_on(check(&db, 10, N));
        assert!(
            !released.load(Ordering::SeqCst),
            "the reads completed while the task could not run"
        );
        released.store(true, Ordering::SeqCst);
        rt.block_on(blocker).expect("blocker");
        rt.block_on(check_concurrently(&db));
        rt.block_on(db.close()).expect("close");
    });
}

/// Gets dropped while their reads are in the kernel (a timeout shorter than a read) leave
/// their buffers to the ring; the store keeps answering, closes and reopens.
#[test]
fn gets_dropped_mid_read_leave_the_ring_working() {
    within_a_minute(|| {
        let tmp = store();
        for reap in [true, false] {
            let rt = multi_thread_rt(2);
            let db = rt
                .block_on(Db::open(tmp.path(), opts().reap_on_tokio(reap)))
                .expect("open");
            rt.block_on(async {
                for round in 0..5u32 {
                    let tasks: Vec<_> = (0..64u32)
                        .map(|i| {
                            let db = db.clone();
                            tokio::spawn(async move {
                                let k = format!("k{}", (i * 7 + round) % N);
                                let _ =
                                    tokio::time::timeout(Duration::from_micros(1), db.get(k)).await;
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task");
                    }
                }
            });
            rt.block_on(check_concurrently(&db));
            rt.block_on(db.close()).expect("close");
            drop(rt);
        }
        run(async {
            let db = Db::open(tmp.path(), opts()).await.expect("reopen");
            check(&db, 0, N).await;
            db.close().await.expect("close");
        });
    });
}

/// A read the fault layer fails comes back as an IO error; the next ones succeed.
#[test]
fn a_failed_ring_read_is_an_io_error() {
    within_a_minute(|| {
        let tmp = store();
        let fault = FaultInjector::new();
        let rt = multi_thread_rt(2);
        let db = rt
            .block_on(Db::open(tmp.path(), opts().fault_injector(fault.clone())))
            .expect("open");
        fault.fail_reads(0, 1);
        match rt.block_on(db.get("k5")) {
            Err(Error::Io(_)) => {}
            other => panic!("expected an IO error, got {other:?}"),
        }
        rt.block_on(check_concurrently(&db));
        assert_eq!(db.stats().reads_ring, u64::from(N));
        rt.block_on(db.close()).expect("close");
    });
}

/// Buffered mode: a read the caller's thread could not serve from the page cache (here every
/// read: `inline_reads(false)`) goes through the same ring, buffered, under either reaper.
#[test]
fn buffered_reads_go_through_the_ring_too() {
    within_a_minute(|| {
        let tmp = store();
        for reap in [false, true] {
            let o = small_opts()
                .max_file_bytes(256 * 1024)
                .inline_reads(false)
                .reap_on_tokio(reap);
            let rt = multi_thread_rt(2);
            let db = rt.block_on(Db::open(tmp.path(), o)).expect("open");
            rt.block_on(check_concurrently(&db));
            let s = db.stats();
            assert_eq!((s.reads_ring, s.reads_direct), (u64::from(N), 0), "{s:?}");
            assert_eq!(s.reads_reaped_on_runtime > 0, reap, "{s:?}");
            rt.block_on(db.close()).expect("close");
        }
    });
}
