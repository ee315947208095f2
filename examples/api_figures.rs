//! Figures for the application API, printed as one table per mode:
//!
//! - `iter`: iterate every key of a store of `RINGCASK_FIG_KEYS` keys (default 1M, 100-byte
//!   values) after a reopen: keys/s and the peak RSS the iteration adds, side by side with the
//!   naive way (`keys()` then `get` each).
//! - `checkpoint`: checkpoint a store of `RINGCASK_FIG_GIB` GiB (default 2; 4 KiB values) while
//!   it stays open: time, bytes linked and copied.
//!
//! - `bigput`: the peak RSS a put of a 100 MiB value adds.
//!
//! `cargo run --release --example api_figures -- iter|checkpoint|bigput [dir]` (a temp dir by
//! default).

use std::time::Instant;

use futures::StreamExt;
use ringcask::{Db, Options, SyncPolicy};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS (`VmHWM`) to the current RSS.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn opts() -> Options {
    Options::default().sync(SyncPolicy::Never)
}

async fn fill(dir: &std::path::Path, keys: u64, value_len: usize) -> ringcask::Result<()> {
    let db = Db::open(dir, opts()).await?;
    let value = vec![0x5Au8; value_len];
    for i in 0..keys {
        db.put(format!("user/{i:012}"), &value).await?;
    }
    db.close().await
}

async fn iter_figures(dir: &std::path::Path) -> ringcask::Result<()> {
    let keys = env_or("RINGCASK_FIG_KEYS", 1_000_000);
    fill(dir, keys, 100).await?;
    let db = Db::open(dir, opts()).await?;
    println!("| way | keys | seconds | keys/s | RSS before (MiB) | peak added (MiB) |");
    println!("|---|---|---|---|---|---|");
    for round in 0..2 {
        // Stream.
        let rss = status_kib("VmRSS:");
        reset_peak();
        let started = Instant::now();
        let mut n = 0u64;
        let mut it = db.iter();
        while let Some(item) = it.next().await {
            let (_k, v) = item?;
            assert_eq!(v.len(), 100);
            n += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        let added = status_kib("VmHWM:").saturating_sub(rss);
        println!(
            "| db.iter() (round {round}) | {n} | {secs:.2} | {:.0} | {:.0} | {:.1} |",
            n as f64 / secs,
            rss as f64 / 1024.0,
            added as f64 / 1024.0
        );
        drop(it);
        // Naive: every key in a Vec, then a get each.
        let rss = status_kib("VmRSS:");
        reset_peak();
        let started = Instant::now();
        let all = db.keys();
        let mut m = 0u64;
        for k in &all {
            if db.get(k).await?.is_some() {
                m += 1;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let added = status_kib("VmHWM:").saturating_sub(rss);
        drop(all);
        println!(
            "| keys() + get (round {round}) | {m} | {secs:.2} | {:.0} | {:.0} | {:.1} |",
            m as f64 / secs,
            rss as f64 / 1024.0,
            added as f64 / 1024.0
        );
    }
    db.close().await
}

async fn checkpoint_figures(dir: &std::path::Path) -> ringcask::Result<()> {
    let gib = env_or("RINGCASK_FIG_GIB", 2);
    let value_len = 4096usize;
    let keys = gib * (1 << 30) / value_len as u64;
    let started = Instant::now();
    fill(&dir.join("live"), keys, value_len).await?;
    eprintln!(
        "filled {keys} keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let db = Db::open(dir.join("live"), opts()).await?;
    // Some writes after the open, so that the active file has something to copy.
    for i in 0..10_000u64 {
        db.put(format!("late/{i}"), vec![1u8; value_len]).await?;
    }
    println!("| checkpoint | seconds | files linked | GiB linked | files copied | MiB copied |");
    println!("|---|---|---|---|---|---|");
    for n in 0..3 {
        let dest = dir.join(format!("cp{n}"));
        let r = db.checkpoint(&dest).await?;
        println!(
            "| {n} | {:.3} | {} | {:.2} | {} | {:.1} |",
            r.duration.as_secs_f64(),
            r.files_linked,
            r.bytes_linked as f64 / (1u64 << 30) as f64,
            r.files_copied,
            r.bytes_copied as f64 / (1u64 << 20) as f64
        );
        let copy = Db::open_read_only(&dest, opts()).await?;
        assert_eq!(copy.len(), db.len());
        copy.close().await?;
        std::fs::remove_dir_all(&dest)?;
    }
    db.close().await
}

/// Peak RSS a put of a 100 MiB value adds over the value itself.
async fn big_put_figures(dir: &std::path::Path) -> ringcask::Result<()> {
    let db = Db::open(dir, opts().max_value_bytes(128 << 20)).await?;
    let value = vec![7u8; 100 << 20];
    let rss = status_kib("VmRSS:");
    reset_peak();
    db.put("big", &value).await?;
    let added = status_kib("VmHWM:").saturating_sub(rss);
    println!(
        "| put of a 100 MiB value | RSS before {:.0} MiB (value included) | peak added {:.0} MiB |",
        rss as f64 / 1024.0,
        added as f64 / 1024.0
    );
    db.close().await
}

fn main() -> ringcask::Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "iter".into());
    let tmp;
    let dir = match args.next() {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    futures::executor::block_on(async {
        match mode.as_str() {
            "iter" => iter_figures(&dir).await,
            "checkpoint" => checkpoint_figures(&dir).await,
            "bigput" => big_put_figures(&dir).await,
            other => {
                eprintln!("unknown mode {other}: iter or checkpoint");
                Ok(())
            }
        }
    })
}
