//! The command-line tools beside `serve`: each opens the store (read-only where it only
//! reads), does one thing, and closes it.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use ringcask::{Db, Options, SyncPolicy, WriteBatch};
use serde::{Deserialize, Serialize};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Records per batch when loading.
const LOAD_BATCH: usize = 1024;

/// One line of `dump`: base64 key and value, and the time left to live if any.
#[derive(Serialize, Deserialize)]
struct Line {
    key: String,
    value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl_ms: Option<u64>,
}

async fn open_rw(dir: &Path) -> Res<Db> {
    Ok(Db::open(dir, Options::default().sync(SyncPolicy::Never)).await?)
}

fn spinner(msg: &'static str) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(msg);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn counter(msg: &'static str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total).with_message(msg);
    if let Ok(style) = ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} ({eta})") {
        bar.set_style(style);
    }
    bar
}

/// Checks the store; whether it is clean.
pub fn check(dir: &Path) -> Res<bool> {
    let bar = ProgressBar::new(0).with_message("checking");
    if let Ok(style) = ProgressStyle::with_template("{msg} {bar:40} {bytes}/{total_bytes} ({eta})")
    {
        bar.set_style(style);
    }
    let r = ringcask::check(dir, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let r = r?;
    for d in &r.damage {
        let at = d
            .offset
            .map_or_else(String::new, |o| format!(" at offset {o}"));
        println!("DAMAGE {}{at}: {}", d.file.display(), d.reason);
    }
    if let Some(t) = &r.torn_tail {
        let at = t.offset.unwrap_or(0);
        println!(
            "torn tail {} at offset {at}: {} (the next open cuts it)",
            t.file.display(),
            t.reason
        );
    }
    if let Some(why) = &r.snapshot_stale {
        println!("keydir snapshot is stale ({why}): the next open loads hint files instead");
    }
    println!(
        "{}: {} datafiles, {} records, {} bytes, {} hint files, keydir snapshot {}; {} damaged",
        if r.is_clean() { "clean" } else { "DAMAGED" },
        r.datafiles,
        r.records,
        r.bytes,
        r.hints,
        if r.snapshot_found {
            "checked"
        } else {
            "absent"
        },
        r.damage.len()
    );
    Ok(r.is_clean())
}

pub async fn stats(dir: &Path) -> Res<()> {
    let db = Db::open_read_only(dir, Options::default()).await?;
    let s = db.stats();
    println!("keys: {}", s.keys);
    println!("files: {} (active {})", s.files.len(), s.active_file_id);
    println!("total_bytes: {}", s.total_bytes);
    println!(
        "dead_bytes: {} ({:.1} %)",
        s.dead_bytes,
        s.fragmentation * 100.0
    );
    println!("io_backend: {:?}", s.io_backend);
    let r = &s.recovery;
    println!(
        "recovery: {:?}, from snapshot {}, {} files from hints, {} scanned, {} truncated bytes",
        r.duration, r.from_snapshot, r.files_from_hints, r.files_scanned, r.truncated_bytes
    );
    db.close().await?;
    Ok(())
}

pub async fn merge(dir: &Path) -> Res<()> {
    let db = open_rw(dir).await?;
    let bar = spinner("merging");
    let r = db.merge().await;
    bar.finish_and_clear();
    let r = r?;
    println!(
        "merged {} file(s) into {}: {} records copied, {} bytes reclaimed",
        r.inputs.len(),
        r.outputs.len(),
        r.records_copied,
        r.reclaimed_bytes
    );
    db.close().await?;
    Ok(())
}

pub async fn get(dir: &Path, key: &str) -> Res<bool> {
    let db = Db::open_read_only(dir, Options::default()).await?;
    let v = db.get(key).await?;
    db.close().await?;
    match v {
        Some(v) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&v)?;
            out.write_all(b"\n")?;
            Ok(true)
        }
        None => Ok(false),
    }
}

pub async fn put(dir: &Path, key: &str, value: &str, ttl: Option<u64>) -> Res<()> {
    let db = open_rw(dir).await?;
    match ttl {
        Some(s) => db.put_with_ttl(key, value, Duration::from_secs(s)).await?,
        None => db.put(key, value).await?,
    }
    db.sync().await?;
    db.close().await?;
    Ok(())
}

pub async fn del(dir: &Path, key: &str) -> Res<()> {
    let db = open_rw(dir).await?;
    db.delete(key).await?;
    db.sync().await?;
    db.close().await?;
    Ok(())
}

pub async fn keys(dir: &Path, prefix: Option<&str>) -> Res<()> {
    let db = Db::open_read_only(dir, Options::default()).await?;
    let mut keys = match prefix {
        Some(p) => db.keys_with_prefix(p),
        None => db.keys(),
    };
    keys.sort_unstable();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for k in keys {
        out.write_all(&k)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    db.close().await?;
    Ok(())
}

pub async fn dump(dir: &Path) -> Res<()> {
    let db = Db::open_read_only(dir, Options::default()).await?;
    let bar = counter("dumping", db.len() as u64);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut iter = db.iter();
    while let Some(item) = iter.next().await {
        let (key, value) = item?;
        let ttl_ms = db.ttl(&key).flatten().map(|d| d.as_millis().max(1) as u64);
        let line = Line {
            key: B64.encode(&key),
            value: B64.encode(&value),
            ttl_ms,
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
        bar.inc(1);
    }
    out.flush()?;
    bar.finish_and_clear();
    db.close().await?;
    Ok(())
}

pub async fn load(dir: &Path) -> Res<()> {
    let db = open_rw(dir).await?;
    let bar = spinner("loading");
    let (mut batch, mut n) = (WriteBatch::new(), 0u64);
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |e: &dyn std::fmt::Display| format!("line {}: {e}", i + 1);
        let rec: Line = serde_json::from_str(&line).map_err(|e| bad(&e))?;
        let key = B64.decode(&rec.key).map_err(|e| bad(&e))?;
        let value = B64.decode(&rec.value).map_err(|e| bad(&e))?;
        batch = match rec.ttl_ms {
            Some(ms) => batch.put_with_ttl(key, value, Duration::from_millis(ms)),
            None => batch.put(key, value),
        };
        n += 1;
        if batch.len() >= LOAD_BATCH {
            db.write(std::mem::take(&mut batch)).await?;
            bar.set_message(format!("loading: {n} records"));
        }
    }
    db.write(batch).await?;
    db.sync().await?;
    bar.finish_and_clear();
    eprintln!("loaded {n} records");
    db.close().await?;
    Ok(())
}

pub async fn checkpoint(dir: &Path, dest: &Path) -> Res<()> {
    let db = Db::open_read_only(dir, Options::default()).await?;
    let bar = spinner("checkpointing");
    let r = db.checkpoint(dest).await;
    bar.finish_and_clear();
    let r = r?;
    println!("checkpoint written to {}: {r:?}", dest.display());
    db.close().await?;
    Ok(())
}
