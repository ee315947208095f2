//! Quickstart: open a store (in a temporary directory unless a path is given), write, read,
//! delete, batch, reopen, and print what the engine reports.
//!
//! ```text
//! cargo run --release --example quickstart [-- <store dir>]
//! ```

use std::time::{Duration, Instant};

use ringcask::{Db, Options, SyncPolicy, WriteBatch};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("quickstart"));
    println!("store directory: {}", dir.display());

    let opts = Options::default().sync(SyncPolicy::Always);
    let db = Db::open(&dir, opts.clone()).await?;

    // 64 concurrent durable writers share fdatasyncs (group commit).
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..64u32 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200u32 {
                db.put(format!("user:{t:02}:{i:04}"), format!("profile of {t}/{i}"))
                    .await?;
            }
            Ok::<_, ringcask::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    println!(
        "wrote 12800 durable puts from 64 tasks in {:.1} ms ({:.0} puts/s)",
        elapsed.as_secs_f64() * 1e3,
        12800.0 / elapsed.as_secs_f64()
    );

    let v = db.get(b"user:07:0042").await?;
    println!(
        "get user:07:0042 -> {:?}",
        v.as_deref().map(String::from_utf8_lossy)
    );
    db.delete("user:07:0042").await?;
    println!("after delete -> {:?}", db.get(b"user:07:0042").await?);
    db.put_with_ttl("session:abc", "token", Duration::from_millis(50))
        .await?;
    db.write(
        WriteBatch::new()
            .put("account:1", "90")
            .put("account:2", "110"),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(60)).await;
    println!(
        "session:abc after its TTL -> {:?}",
        db.get(b"session:abc").await?
    );

    let st = db.stats();
    println!(
        "io backend: {:?}{}",
        st.io_backend,
        st.io_fallback_reason
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    println!(
        "keys {} | puts {} | deletes {} | appends {} | fdatasyncs {} | bytes written {}",
        st.keys, st.puts, st.deletes, st.appends, st.syncs, st.bytes_written
    );
    db.close().await?;

    let started = Instant::now();
    let db = Db::open(&dir, opts).await?;
    let r = db.stats().recovery;
    // After a clean close the keydir comes from the snapshot the close saved; after a crash,
    // from hint files and scans.
    println!(
        "reopened in {:.2} ms: {} keys, from the keydir snapshot: {}, {} files from hints, {} scanned, {} bytes truncated",
        started.elapsed().as_secs_f64() * 1e3,
        db.len(),
        r.from_snapshot,
        r.files_from_hints,
        r.files_scanned,
        r.truncated_bytes
    );
    assert_eq!(db.len(), 64 * 200 - 1 + 2);
    println!(
        "account:2 -> {:?}",
        db.get(b"account:2")
            .await?
            .as_deref()
            .map(String::from_utf8_lossy)
    );
    db.close().await?;
    Ok(())
}
