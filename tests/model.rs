//! Model-based test: random operations against the store and a `BTreeMap`, including reopen
//! (by close and by drop), merges, crashes injected through the IO layer (a write fails, possibly
//! torn, and every later IO fails as if the process had died), and power cuts after such a
//! crash (what was not synced is lost: the store must come back to the state after some
//! operation since the last durable point).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{run, Rng};
use futures::StreamExt;
use ringcask::testing::FaultInjector;
use ringcask::{Db, IoMode, Options, Snapshot, SyncPolicy, WriteBatch};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    /// A put whose TTL has already passed: reads as absent and hides older values.
    PutExpired(Vec<u8>, Vec<u8>),
    PutLongTtl(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    PutIfAbsent(Vec<u8>, Vec<u8>),
    /// compare_and_swap(key, expected, new).
    Cas(Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>),
    /// expire(key, 1 hour): the value stays.
    Expire(Vec<u8>),
}

impl Op {
    fn keys(&self) -> Vec<Vec<u8>> {
        match self {
            Op::Put(k, _)
            | Op::PutExpired(k, _)
            | Op::PutLongTtl(k, _)
            | Op::Delete(k)
            | Op::PutIfAbsent(k, _)
            | Op::Cas(k, _, _)
            | Op::Expire(k) => vec![k.clone()],
            Op::Batch(ops) => ops.iter().map(|(k, _)| k.clone()).collect(),
        }
    }

    fn apply(&self, m: &mut Model) {
        match self {
            Op::Put(k, v) | Op::PutLongTtl(k, v) => {
                m.insert(k.clone(), v.clone());
            }
            Op::PutExpired(k, _) | Op::Delete(k) => {
                m.remove(k);
            }
            Op::Batch(ops) => {
                for (k, v) in ops {
                    match v {
                        Some(v) => m.insert(k.clone(), v.clone()),
                        None => m.remove(k),
                    };
                }
            }
            Op::PutIfAbsent(k, v) => {
                m.entry(k.clone()).or_insert_with(|| v.clone());
            }
            Op::Cas(k, expected, new) => {
                if m.get(k) == expected.as_ref() {
                    match new {
                        Some(v) => m.insert(k.clone(), v.clone()),
                        None => m.remove(k),
                    };
                }
            }
            Op::Expire(_) => {}
        }
    }

    /// What a conditional op must answer on `m`: whether it applied (`Expire`: whether the key
    /// was there).
    fn expected(&self, m: &Model) -> Option<bool> {
        match self {
            Op::PutIfAbsent(k, _) => Some(!m.contains_key(k)),
            Op::Cas(k, expected, _) => Some(m.get(k) == expected.as_ref()),
            Op::Expire(k) => Some(m.contains_key(k)),
            _ => None,
        }
    }

    async fn run(&self, db: &Db) -> ringcask::Result<Option<bool>> {
        match self.clone() {
            Op::PutIfAbsent(k, v) => return db.put_if_absent(k, v).await.map(Some),
            Op::Cas(k, e, n) => return db.compare_and_swap(k, e, n).await.map(|r| Some(r.is_ok())),
            Op::Expire(k) => {
                return db
                    .expire(k, Some(Duration::from_secs(3600)))
                    .await
                    .map(Some)
            }
            _ => {}
        }
        match self.clone() {
            Op::Put(k, v) => db.put(k, v).await,
            Op::PutExpired(k, v) => db.put_with_ttl(k, v, Duration::ZERO).await,
            Op::PutLongTtl(k, v) => db.put_with_ttl(k, v, Duration::from_secs(3600)).await,
            Op::Delete(k) => db.delete(k).await,
            Op::Batch(ops) => {
                let mut b = WriteBatch::new();
                for (k, v) in ops {
                    b = match v {
                        Some(v) => b.put(k, v),
                        None => b.delete(k),
                    };
                }
                db.write(b).await
            }
            _ => unreachable!("conditional ops are run above"),
        }
        .map(|()| None)
    }
}

fn random_key(rng: &mut Rng) -> Vec<u8> {
    format!("key{}", rng.below(40)).into_bytes()
}

fn random_value(rng: &mut Rng) -> Vec<u8> {
    let n = rng.below(300) as usize;
    rng.bytes(n)
}

fn random_op(rng: &mut Rng, model: &Model) -> Op {
    let k = random_key(rng);
    match rng.below(26) {
        20 | 21 => Op::PutIfAbsent(k, random_value(rng)),
        22 | 23 => {
            // Mostly the current value (it applies), sometimes a stale guess (it does not).
            let expected = if rng.below(4) == 0 {
                Some(random_value(rng))
            } else {
                model.get(&k).cloned()
            };
            let new = (rng.below(4) != 0).then(|| random_value(rng));
            Op::Cas(k, expected, new)
        }
        24 | 25 => Op::Expire(k),
        0..=8 => Op::Put(k, random_value(rng)),
        9 => Op::PutExpired(k, random_value(rng)),
        10 => Op::PutLongTtl(k, random_value(rng)),
        11..=14 => Op::Delete(k),
        _ => {
            let n = 1 + rng.below(5);
            Op::Batch(
                (0..n)
                    .map(|_| {
                        let k = random_key(rng);
                        let v = (rng.below(3) != 0).then(|| random_value(rng));
                        (k, v)
                    })
                    .collect(),
            )
        }
    }
}

fn opts(seed: u64, fault: Option<std::sync::Arc<FaultInjector>>) -> Options {
    let sync = match seed % 3 {
        0 => SyncPolicy::Always,
        1 => SyncPolicy::Never,
        _ => SyncPolicy::IntervalMs(2),
    };
    let o = Options::default()
        .sync(sync)
        .hint_spill_bytes(256)
        .auto_merge(false)
        .merge_bytes_per_sec(0)
        .max_file_bytes(8 * 1024)
        .preallocate_bytes(if seed.is_multiple_of(2) { 4096 } else { 0 })
        // Some seeds read through a small value cache, one writes through the writer thread.
        .value_cache_bytes(if seed % 4 >= 2 { 16 * 1024 } else { 0 })
        .inline_writes(seed % 6 != 5)
        // Some read sealed files with O_DIRECT (with the cache of the seed above).
        .io_mode(if seed % 10 >= 5 {
            IoMode::Direct
        } else {
            IoMode::Buffered
        });
    match fault {
        Some(f) => o.fault_injector(f),
        None => o,
    }
}

async fn check_all(db: &Db, model: &Model, ctx: &str) {
    assert_eq!(db.len(), model.len(), "{ctx}: len");
    for (k, v) in model {
        let got = db.get(k).await.expect("get");
        assert_eq!(
            got.as_deref(),
            Some(&v[..]),
            "{ctx}: key {}",
            String::from_utf8_lossy(k)
        );
    }
}

/// A snapshot still holds the model it was taken at: by iteration, len and point reads.
async fn check_snapshot(snap: &Snapshot, want: &Model, ctx: &str) {
    let mut got = Model::new();
    let mut it = snap.iter();
    while let Some(item) = it.next().await {
        let (k, v) = item.expect("iter");
        assert!(
            got.insert(k.to_vec(), v.to_vec()).is_none(),
            "{ctx}: key twice"
        );
    }
    assert!(
        &got == want,
        "{ctx}: a snapshot's iteration differs from its model"
    );
    assert_eq!(snap.len(), want.len(), "{ctx}: snapshot len");
    for k in want.keys().take(20) {
        let v = snap.get(k).await.expect("snapshot get");
        assert_eq!(
            v.as_deref(),
            want.get(k).map(Vec::as_slice),
            "{ctx}: snapshot get"
        );
    }
}

/// Every key, by a cursor scan in pages of `count`.
fn scan_all(db: &Db, count: usize) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    let mut cursor = 0;
    loop {
        let (next, page) = db.scan(cursor, count);
        keys.extend(page.into_iter().map(|k| k.to_vec()));
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

fn run_seed(seed: u64, steps: usize) {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let mut rng = Rng::new(seed);
    let mut model = Model::new();
    let (mut crashes, mut reopens, mut merges, mut cuts) = (0, 0, 0, 0);
    let always = seed.is_multiple_of(3); // opts(): SyncPolicy::Always
                                         // Model states since the last durable point: a power cut may go back to any of them.
    let mut since_durable = vec![model.clone()];
    // Live snapshots with the model each was taken at.
    let mut snaps: Vec<(Snapshot, Model)> = Vec::new();
    run(async {
        let fault = FaultInjector::power_loss(dir, seed + 1).expect("injector");
        let mut db = Db::open(dir, opts(seed, Some(fault.clone())))
            .await
            .expect("open");
        let mut step = 0;
        while step < steps {
            step += 1;
            let roll = rng.below(100);
            if roll <= 3 {
                // Before a reopen or crash: the snapshots still hold their instants, then go.
                for (snap, want) in snaps.drain(..) {
                    check_snapshot(&snap, &want, &format!("seed {seed} step {step}")).await;
                }
            }
            match roll {
                0..=1 => {
                    reopens += 1;
                    if rng.below(2) == 0 {
                        db.close().await.expect("close");
                    }
                    // Close, or the drop of the last handle, syncs everything.
                    drop(db);
                    since_durable = vec![model.clone()];
                    db = Db::open(dir, opts(seed, Some(fault.clone())))
                        .await
                        .expect("reopen");
                    check_all(
                        &db,
                        &model,
                        &format!("seed {seed} step {step} after reopen"),
                    )
                    .await;
                }
                2..=3 => {
                    // Crash after a few more IO operations, somewhere in the next writes, and
                    // now and then cut the power too.
                    crashes += 1;
                    let power = rng.below(2) == 0;
                    fault.tear_writes(rng.below(2) == 0);
                    fault.crash_after(rng.below(6));
                    let mut uncertain: Option<(Op, Model)> = None;
                    for _ in 0..20 {
                        if rng.below(4) == 0 {
                            // A merge never changes what the store holds, crash or not; one
                            // that completes with inputs synced the writer first.
                            if db.merge().await.is_ok_and(|r| !r.inputs.is_empty()) {
                                since_durable = vec![model.clone()];
                            }
                            if fault.has_crashed() {
                                break;
                            }
                            continue;
                        }
                        let op = random_op(&mut rng, &model);
                        let before = model.clone();
                        match op.run(&db).await {
                            Ok(_) => {
                                op.apply(&mut model);
                                if always {
                                    since_durable = vec![model.clone()];
                                } else {
                                    since_durable.push(model.clone());
                                }
                            }
                            Err(_) => {
                                // The first failed op may or may not have reached the disk;
                                // later ones are refused before any IO.
                                if uncertain.is_none() {
                                    uncertain = Some((op, before));
                                }
                            }
                        }
                        if uncertain.is_some() {
                            break;
                        }
                    }
                    common::shut(db).await;
                    if power {
                        cuts += 1;
                        fault.cut_power().expect("cut");
                    }
                    fault.restart();
                    db = Db::open(dir, opts(seed, Some(fault.clone())))
                        .await
                        .expect("reopen after crash");
                    if power {
                        let mut allowed = since_durable.clone();
                        if let Some((op, before)) = &uncertain {
                            let mut after = before.clone();
                            op.apply(&mut after);
                            allowed.push(after);
                        }
                        let got = common::contents(&db).await;
                        assert!(
                            allowed.contains(&got),
                            "seed {seed} step {step}: after a power cut the store is in none of \
                             the {} states since the last durable point",
                            allowed.len()
                        );
                        model = got;
                        since_durable = vec![model.clone()];
                        continue;
                    }
                    if let Some((op, before)) = uncertain {
                        let mut after = before.clone();
                        op.apply(&mut after);
                        let mut applied = None;
                        for k in op.keys() {
                            let got = db.get(&k).await.expect("get").map(|b| b.to_vec());
                            let is_before = got.as_ref() == before.get(&k);
                            let is_after = got.as_ref() == after.get(&k);
                            assert!(
                                is_before || is_after,
                                "seed {seed} step {step}: key neither old nor new"
                            );
                            if is_before != is_after {
                                assert!(
                                    applied.is_none() || applied == Some(is_after),
                                    "seed {seed} step {step}: batch applied partially"
                                );
                                applied = Some(is_after);
                            }
                        }
                        if applied == Some(true) {
                            model = after;
                            since_durable.push(model.clone());
                        }
                    }
                    check_all(&db, &model, &format!("seed {seed} step {step} after crash")).await;
                }
                4..=5 => {
                    merges += 1;
                    // A merge with inputs syncs the writer first.
                    if !db.merge().await.expect("merge").inputs.is_empty() {
                        since_durable = vec![model.clone()];
                    }
                    check_all(&db, &model, &format!("seed {seed} step {step} after merge")).await;
                }
                6 => {
                    if snaps.len() < 3 {
                        snaps.push((db.snapshot(), model.clone()));
                    }
                }
                7 => {
                    if !snaps.is_empty() {
                        let (snap, want) = snaps.remove(0);
                        check_snapshot(&snap, &want, &format!("seed {seed} step {step}")).await;
                    }
                }
                8 => {
                    let mut keys = scan_all(&db, 1 + rng.below(40) as usize);
                    keys.sort();
                    assert_eq!(
                        keys,
                        model.keys().cloned().collect::<Vec<_>>(),
                        "seed {seed} step {step}: scan"
                    );
                }
                9..=30 => {
                    let k = random_key(&mut rng);
                    let got = db.get(&k).await.expect("get").map(|b| b.to_vec());
                    assert_eq!(got.as_ref(), model.get(&k), "seed {seed} step {step}: get");
                    assert_eq!(db.contains_key(&k), model.contains_key(&k));
                }
                _ => {
                    let op = random_op(&mut rng, &model);
                    let got = op.run(&db).await.expect("write");
                    assert_eq!(got, op.expected(&model), "seed {seed} step {step}: {op:?}");
                    op.apply(&mut model);
                    if always {
                        since_durable = vec![model.clone()];
                    } else {
                        since_durable.push(model.clone());
                    }
                }
            }
        }
        check_all(&db, &model, &format!("seed {seed} end")).await;
        let mut keys: Vec<Vec<u8>> = db.keys().into_iter().map(|k| k.to_vec()).collect();
        keys.sort();
        assert_eq!(keys, model.keys().cloned().collect::<Vec<_>>());
    });
    assert!(
        crashes > 0 && reopens > 0 && cuts > 0,
        "seed {seed}: {crashes} crashes ({cuts} with a power cut), {reopens} reopens"
    );
}

#[test]
fn random_operations_match_a_btreemap() {
    let seeds: u64 = common::env_or("RINGCASK_MODEL_SEEDS", 6);
    for seed in 0..seeds {
        run_seed(seed, 1500);
    }
}
