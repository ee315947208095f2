//! Power cuts through ringcask's power-loss injector while the Raft log appends (several
//! appends in flight, as openraft issues them) and saves votes: after every cut the log opens,
//! holds every append whose durability callback reported success and every vote whose save
//! returned, and its entries form one contiguous, intact range.

use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::testing::log_id;
use openraft::type_config::TypeConfigExt;
use openraft::RaftLogReader;
use ringcask::testing::FaultInjector;
use ringcask::Options;
use ringcask_raft::{Entry, LogStore, Request, TypeConfig, Vote};

fn entry(index: u64) -> Entry {
    let req = Request::Set {
        key: format!("k{index}"),
        value: format!("v{index}"),
    };
    Entry::new_normal(log_id::<TypeConfig>(1, 1, index), req)
}

fn opts(fault: &Arc<FaultInjector>) -> Options {
    Options::default()
        .fault_injector(fault.clone())
        .max_file_bytes(64 * 1024)
        .preallocate_bytes(16 * 1024)
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the writer knows was made durable.
#[derive(Default)]
struct Acked {
    /// Every entry up to this index.
    through: u64,
    /// The highest vote term whose save returned.
    term: u64,
}

async fn check(log: &mut LogStore, acked: &Acked, cut: u64) -> u64 {
    let state = log.get_log_state().await.expect("state");
    let last = state.last_log_id.map_or(0, |l| l.index());
    assert!(
        last >= acked.through,
        "cut {cut}: acknowledged entries up to {} lost (last {last})",
        acked.through
    );
    let entries = log.try_get_log_entries(..).await.expect("read");
    for (i, e) in entries.iter().enumerate() {
        let want = entry(i as u64 + 1);
        assert_eq!(
            e,
            &want,
            "cut {cut}: entry {} damaged or out of place",
            i + 1
        );
    }
    assert_eq!(entries.len() as u64, last, "cut {cut}: a gap in the log");
    let vote = log.read_vote().await.expect("vote");
    let term = vote.map_or(0, |v| v.leader_id().term);
    assert!(
        term >= acked.term,
        "cut {cut}: a saved vote (term {}) was lost",
        acked.term
    );
    last
}

/// Appends (several in flight) and votes until the injected crash stops the store.
async fn round(log: &mut LogStore, rng: &mut Rng, mut next: u64, acked: &mut Acked) -> u64 {
    let mut pending = Vec::new();
    for step in 0..60u64 {
        if step % 10 == 9 {
            let term = acked.term + 1;
            match log.save_vote(&Vote::new(term, 1)).await {
                Ok(()) => acked.term = term,
                Err(_) => break,
            }
        }
        let n = 1 + rng.below(8);
        let batch: Vec<Entry> = (next..next + n).map(entry).collect();
        let (tx, rx) = TypeConfig::oneshot();
        if log.append(batch, IOFlushed::signal(tx)).await.is_err() {
            break;
        }
        next += n;
        pending.push((next - 1, rx));
        if pending.len() >= 3 {
            for (end, rx) in pending.drain(..) {
                if let Ok(Ok(())) = rx.await {
                    acked.through = acked.through.max(end);
                }
            }
        }
    }
    for (end, rx) in pending {
        if let Ok(Ok(())) = rx.await {
            acked.through = acked.through.max(end);
        }
    }
    next
}

#[test]
fn power_cuts_never_lose_an_acknowledged_append_or_vote() {
    let cuts: u64 = std::env::var("RINGCASK_RAFT_POWER_CUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("log");
    std::fs::create_dir_all(&dir).expect("dir");
    let fault = FaultInjector::power_loss(&dir, 0xBEEF).expect("injector");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let mut rng = Rng(0x5EED_1234);
    let mut acked = Acked::default();
    let mut lost_unacked = 0u64;
    for cut in 0..cuts {
        fault.restart();
        rt.block_on(async {
            let mut log = LogStore::open_with(&dir, opts(&fault))
                .await
                .expect("open after a cut");
            let last = check(&mut log, &acked, cut).await;
            fault.crash_after(rng.below(300));
            let next = round(&mut log, &mut rng, last + 1, &mut acked).await;
            if log.close().await.is_ok() {
                // No crash this round: a clean close made everything durable.
                acked.through = next - 1;
            } else {
                lost_unacked += 1;
            }
        });
        fault.cut_power().expect("cut");
    }
    fault.restart();
    rt.block_on(async {
        let mut log = LogStore::open_with(&dir, opts(&fault))
            .await
            .expect("final open");
        check(&mut log, &acked, cuts).await;
        log.close().await.expect("close");
    });
    assert!(acked.through > 0, "nothing was ever acknowledged");
    assert!(lost_unacked > 0, "the crash never hit a round");
}
