//! The workload of the syscall census (`benches/syscall_census.sh` runs it under strace):
//! 2N durable puts from 8 tasks, then N gets of hot keys (the last written), N gets of cold keys
//! (the datafiles evicted from the page cache first), in one store. Between phases it calls
//! `getppid()` and prints the phase's name, so the trace can be cut into phases.
//!
//! `cargo run --release --example syscall_census -- [buffered|direct] [N (16000)] [VALUE (4096)]`
//! (`REAPER=tokio` in the environment: `Options::reap_on_tokio(true)`)

use std::path::Path;

use ringcask::{Db, IoMode, Options, SyncPolicy};

fn key(i: u64) -> String {
    format!("key{i:010}")
}

/// A marker in the trace: `getppid` is called nowhere else in the workload.
fn phase(name: &str) {
    let _ = std::os::unix::process::parent_id();
    eprintln!("phase {name}");
}

fn evict(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "data") {
            let f = std::fs::File::open(&p).expect("open datafile");
            f.sync_all().expect("sync");
            rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = match args.next().as_deref() {
        Some("direct") => IoMode::Direct,
        _ => IoMode::Buffered,
    };
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(16_000);
    let value = vec![0x5a_u8; args.next().and_then(|s| s.parse().ok()).unwrap_or(4096)];
    let tmp = tempfile::tempdir_in(std::env::var("DIR").unwrap_or_else(|_| "/var/tmp".into()))
        .expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let opts = Options::default()
            .io_mode(mode)
            .sync(SyncPolicy::Always)
            // Small files, so that the cold keys lie in sealed files.
            .max_file_bytes(16 << 20)
            .reap_on_tokio(std::env::var("REAPER").is_ok_and(|r| r == "tokio"));
        let db = Db::open(tmp.path(), opts).await.expect("open");
        // Cold keys first (sealed files by the time they are read), then the hot ones.
        let all = 2 * n;
        phase("durable puts");
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let (db, value) = (db.clone(), value.clone());
                tokio::spawn(async move {
                    for i in (t..all).step_by(8) {
                        db.put(key(i), &value).await.expect("put");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        phase("hot gets");
        for i in n..all {
            db.get(key(i)).await.expect("get").expect("present");
        }
        evict(tmp.path());
        phase("cold gets");
        for i in 0..n {
            db.get(key(i)).await.expect("get").expect("present");
        }
        phase("close");
        let stats = db.stats();
        db.close().await.expect("close");
        eprintln!(
            "stats: appends {} syncs {} reads inline {} io-thread {} ring {} direct {} cached {}",
            stats.appends,
            stats.syncs,
            stats.reads_inline,
            stats.reads_io_thread,
            stats.reads_ring,
            stats.reads_direct,
            stats.reads_cached
        );
    });
}
