//! Real crashes around the keydir snapshot: a child process cycles open → writes → close on one
//! store, so that each close saves a snapshot and each open takes it, with merges running in
//! the background; it reports every acknowledged write. The parent kills it with SIGKILL at a
//! random moment (in a write, a merge, a snapshot save or a snapshot load), reopens the store
//! and compares it with a model: nothing acknowledged lost, nothing deleted back. Odd rounds
//! run in `IoMode::Direct`.
//!
//! Set `RINGCASK_SNAPSHOT_KILLS` for a longer campaign (default 12).

mod common;

use std::collections::BTreeMap;

use common::crash::{self, Reporter};
use common::{contents_under, Rng};
use ringcask::{Db, IoMode, Options, SyncPolicy};

/// Writes between a close and the next open in the child.
const OPS_PER_OPEN: u64 = 250;
const KEYS: u64 = 3000;

/// The i-th operation of `round`: `(key, Some(value))` a put, `(key, None)` a delete.
fn op(round: u64, i: u64) -> (String, Option<Vec<u8>>) {
    let mut r = Rng::new(round * 1_000_003 + i);
    let key = format!("k{}", r.below(KEYS));
    if r.below(8) == 0 {
        return (key, None);
    }
    let mut v = format!("{round}/{i}/").into_bytes();
    v.resize(v.len() + r.below(120) as usize, b'v');
    (key, Some(v))
}

fn apply(model: &mut BTreeMap<String, Vec<u8>>, (k, v): (String, Option<Vec<u8>>)) {
    match v {
        Some(v) => model.insert(k, v),
        None => model.remove(&k),
    };
}

/// Odd rounds run in `IoMode::Direct`.
fn opts(round: u64) -> Options {
    // `Never`: a process crash loses nothing acknowledged, and writes are fast enough for
    // many open/close cycles per round.
    let mode = if round % 2 == 1 {
        IoMode::Direct
    } else {
        IoMode::Buffered
    };
    Options::default()
        .io_mode(mode)
        .sync(SyncPolicy::Never)
        .max_file_bytes(32 * 1024)
        .preallocate_bytes(0)
        .merge_check_interval_ms(20)
        .merge_trigger_ratio(0.3)
        .merge_trigger_bytes(64 * 1024)
}

const NAME: &str = "snapshot";
const TEST: &str = "sigkill_around_snapshot_save_and_load_loses_nothing";

fn child(dir: &str, round: u64) {
    let rt = common::multi_thread_rt(2);
    rt.block_on(async {
        let out = Reporter::default();
        out.ready();
        let mut i = 0u64;
        loop {
            let db = Db::open(dir, opts(round)).await.expect("child open");
            for _ in 0..OPS_PER_OPEN {
                let res = match op(round, i) {
                    (k, Some(v)) => db.put(k, v).await,
                    (k, None) => db.delete(k).await,
                };
                res.expect("child write");
                out.ack(0, i);
                i += 1;
            }
            db.close().await.expect("child close");
        }
    });
}

#[test]
fn sigkill_around_snapshot_save_and_load_loses_nothing() {
    if let Some((dir, round)) = crash::child_role(NAME) {
        child(&dir, round);
        return;
    }
    let rounds: u64 = common::env_or("RINGCASK_SNAPSHOT_KILLS", 12);
    let tmp = tempfile::tempdir().expect("tmp");
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut rng = Rng::new(0x5A9_5407);
    let (mut total_acks, mut from_snapshot) = (0u64, 0u32);
    for round in 0..rounds {
        let acked =
            crash::kill_child(TEST, NAME, tmp.path(), round, 1, 50 + rng.below(600)).acked[0];
        total_acks += acked;
        let (without, with) = crash::acked_states(&expected, acked, |m, i| apply(m, op(round, i)));
        common::run(async {
            let db = Db::open(tmp.path(), opts(round))
                .await
                .expect("reopen after kill");
            from_snapshot += u32::from(db.stats().recovery.from_snapshot);
            let got = contents_under(&db, "").await;
            assert!(
                got == without || got == with,
                "round {round}: {acked} acked ops; the store does not match the model \
                 ({} keys, model {})",
                got.len(),
                without.len()
            );
            expected = got;
            db.close().await.expect("close");
        });
    }
    // A clean close after all those kills saves a snapshot that the next open loads whole.
    common::run(async {
        let db = Db::open(tmp.path(), opts(rounds))
            .await
            .expect("final open");
        let r = db.stats().recovery;
        assert!(r.from_snapshot, "{r:?}");
        assert_eq!(contents_under(&db, "").await, expected);
        db.close().await.expect("close");
    });
    assert!(
        total_acks > OPS_PER_OPEN,
        "the children acknowledged only {total_acks} writes"
    );
    eprintln!("{rounds} kills, {total_acks} acked writes, {from_snapshot} reopens from a snapshot");
}
