//! What the suite does not test: everything survives a reopen; snapshots stream through files
//! and install atomically (a damaged snapshot changes nothing; a cut-short install is undone).

use std::collections::BTreeMap;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log_id;
use openraft::type_config::TypeConfigExt;
use openraft::{Membership, RaftLogReader};
use ringcask_raft::{Entry, LogStore, Request, StateMachine, TypeConfig, Vote};

fn set(term: u64, index: u64, key: &str, value: &str) -> Entry {
    let req = Request::Set {
        key: key.into(),
        value: value.into(),
    };
    Entry::new_normal(log_id::<TypeConfig>(term, 1, index), req)
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("callback").expect("durable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_reopens_with_its_entries_vote_committed_and_purge_point() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("log");
    let mut log = LogStore::open(&dir).await.expect("open");
    let vote = Vote::new(3, 1);
    log.save_vote(&vote).await.expect("vote");
    let entries: Vec<Entry> = (1..=100)
        .map(|i| set(2, i, &format!("k{i}"), "v"))
        .collect();
    // Appended in three calls, two of them concurrently in flight.
    let (tx1, rx1) = TypeConfig::oneshot();
    log.append(entries[..40].to_vec(), IOFlushed::signal(tx1))
        .await
        .expect("a");
    let (tx2, rx2) = TypeConfig::oneshot();
    log.append(entries[40..70].to_vec(), IOFlushed::signal(tx2))
        .await
        .expect("b");
    rx1.await.expect("cb").expect("durable");
    rx2.await.expect("cb").expect("durable");
    append(&mut log, entries[70..].to_vec()).await;
    log.save_committed(Some(log_id::<TypeConfig>(2, 1, 90)))
        .await
        .expect("committed");
    log.truncate_after(Some(log_id::<TypeConfig>(2, 1, 80)))
        .await
        .expect("truncate");
    log.purge(log_id::<TypeConfig>(2, 1, 20))
        .await
        .expect("purge");
    log.close().await.expect("close");

    let mut log = LogStore::open(&dir).await.expect("reopen");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(
        state.last_purged_log_id,
        Some(log_id::<TypeConfig>(2, 1, 20))
    );
    assert_eq!(state.last_log_id, Some(log_id::<TypeConfig>(2, 1, 80)));
    let got = log.try_get_log_entries(0..1000).await.expect("read");
    assert_eq!(got, entries[20..80].to_vec());
    let some = log.try_get_log_entries(30..=32).await.expect("read");
    assert_eq!(some, entries[29..32].to_vec());
    assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
    let committed = log.read_committed().await.expect("committed");
    assert_eq!(committed, Some(log_id::<TypeConfig>(2, 1, 90)));
    // Everything purged, then appended after the purge point.
    log.purge(log_id::<TypeConfig>(2, 1, 80))
        .await
        .expect("purge all");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id, Some(log_id::<TypeConfig>(2, 1, 80)));
    append(&mut log, vec![set(4, 81, "x", "y")]).await;
    log.close().await.expect("close");
    let mut log = LogStore::open(&dir).await.expect("reopen");
    let got = log.try_get_log_entries(..).await.expect("read");
    assert_eq!(got, vec![set(4, 81, "x", "y")]);
    log.close().await.expect("close");
}

/// Applies `entries`, one `apply` call each (without responders: the tests read the state
/// back instead).
async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) {
    for e in entries {
        let stream = futures::stream::iter(vec![Ok((e, None))]);
        sm.apply(stream).await.expect("apply");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_machine_reopens_with_its_data_applied_id_and_membership() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("sm");
    let mut sm = StateMachine::open(&dir).await.expect("open");
    let members = Membership::new_with_defaults(vec![[1u64, 2, 3].into_iter().collect()], []);
    let cas = |i, expected: Option<&str>, new: Option<&str>| {
        let req = Request::CompareAndSwap {
            key: "c".into(),
            expected: expected.map(String::from),
            new: new.map(String::from),
        };
        Entry::new_normal(log_id::<TypeConfig>(1, 1, i), req)
    };
    let del = Entry::new_normal(
        log_id::<TypeConfig>(1, 1, 7),
        Request::Delete { key: "a".into() },
    );
    apply(
        &mut sm,
        vec![
            Entry::new_membership(log_id::<TypeConfig>(1, 1, 1), members.clone()),
            set(1, 2, "a", "1"),
            set(1, 3, "b", "2"),
            cas(4, None, Some("x")),
            cas(5, Some("wrong"), Some("y")),
            cas(6, Some("x"), Some("z")),
            del,
        ],
    )
    .await;
    assert_eq!(sm.get("c").await.expect("get").as_deref(), Some("z"));
    assert_eq!(sm.get("a").await.expect("get"), None);
    sm.close().await.expect("close");
    let mut sm = StateMachine::open(&dir).await.expect("reopen");
    let (applied, membership) = sm.applied_state().await.expect("state");
    assert_eq!(applied, Some(log_id::<TypeConfig>(1, 1, 7)));
    assert_eq!(membership.log_id(), &Some(log_id::<TypeConfig>(1, 1, 1)));
    assert_eq!(sm.get("b").await.expect("get").as_deref(), Some("2"));
    assert_eq!(sm.get("c").await.expect("get").as_deref(), Some("z"));
    sm.close().await.expect("close");
}

/// A state machine holding `n` keys applied at indices 1..=n.
async fn filled(dir: &std::path::Path, n: u64) -> StateMachine {
    let mut sm = StateMachine::open(dir).await.expect("open");
    let entries = (1..=n)
        .map(|i| set(1, i, &format!("key{i:06}"), &format!("value{i}")))
        .collect();
    apply(&mut sm, entries).await;
    sm
}

async fn contents(sm: &StateMachine, n: u64) -> BTreeMap<String, Option<String>> {
    let mut m = BTreeMap::new();
    for i in 1..=n + 5 {
        let k = format!("key{i:06}");
        let v = sm.get(&k).await.expect("get");
        m.insert(k, v);
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_streams_through_a_file_and_installs_whole_across_a_reopen() {
    let tmp = tempfile::tempdir().expect("tmp");
    let n = 5000;
    let mut leader = filled(&tmp.path().join("leader"), n).await;
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    assert_eq!(snap.meta.last_log_id, Some(log_id::<TypeConfig>(1, 1, n)));
    let want = contents(&leader, n).await;

    let follower_dir = tmp.path().join("follower");
    let mut follower = filled(&follower_dir, 10).await; // some older state to be replaced
    let current = leader
        .get_current_snapshot()
        .await
        .expect("get")
        .expect("a snapshot");
    follower
        .install_snapshot(&current.meta, current.snapshot)
        .await
        .expect("install");
    assert_eq!(contents(&follower, n).await, want);
    let (applied, _) = follower.applied_state().await.expect("state");
    assert_eq!(applied, Some(log_id::<TypeConfig>(1, 1, n)));
    follower.close().await.expect("close");
    let mut follower = StateMachine::open(&follower_dir).await.expect("reopen");
    assert_eq!(contents(&follower, n).await, want);
    let cur = follower
        .get_current_snapshot()
        .await
        .expect("get")
        .expect("kept a copy");
    assert_eq!(cur.meta, snap.meta);
    // One generation directory is left.
    let gens: Vec<_> = std::fs::read_dir(&follower_dir)
        .expect("dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("sm-"))
        .collect();
    assert_eq!(gens, vec!["sm-1".to_string()]);
    follower.close().await.expect("close");
    leader.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_changes_nothing_and_a_cut_short_install_is_undone() {
    let tmp = tempfile::tempdir().expect("tmp");
    let n = 300;
    let mut leader = filled(&tmp.path().join("leader"), n).await;
    leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let snap_path = tmp.path().join("leader").join("snapshot");
    let mut bytes = std::fs::read(&snap_path).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let damaged = tmp.path().join("damaged.snap");
    std::fs::write(&damaged, &bytes).expect("write");

    let follower_dir = tmp.path().join("follower");
    let mut follower = filled(&follower_dir, 10).await;
    let before = contents(&follower, 10).await;
    let meta = leader
        .get_current_snapshot()
        .await
        .expect("get")
        .expect("snap")
        .meta;
    let file = std::fs::File::open(&damaged).expect("open");
    let err = follower
        .install_snapshot(&meta, file)
        .await
        .expect_err("a damaged snapshot");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert_eq!(contents(&follower, 10).await, before);
    let (applied, _) = follower.applied_state().await.expect("state");
    assert_eq!(applied, Some(log_id::<TypeConfig>(1, 1, 10)));
    follower.close().await.expect("close");
    // The half-loaded generation is gone after a reopen; the old state is intact.
    let follower = StateMachine::open(&follower_dir).await.expect("reopen");
    assert!(!follower_dir.join("sm-1").exists());
    assert_eq!(contents(&follower, 10).await, before);
    follower.close().await.expect("close");
    leader.close().await.expect("close");
}
