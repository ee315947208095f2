//! Replays every input the fuzzers once crashed on (`fuzz/regressions/<target>/`), so a fixed
//! bug stays fixed. Built with the `fuzzing` feature (`.ci/run` runs it):
//!
//! ```text
//! cargo test --features fuzzing --test fuzz_regressions
//! ```
#![cfg(feature = "fuzzing")]

use std::path::Path;

use ringcask::fuzzing;

fn inputs(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| std::fs::read(e.path()).expect("read input"))
        .collect()
}

#[test]
fn model_regressions() {
    let all = inputs("model");
    assert!(!all.is_empty(), "the model target has recorded regressions");
    for data in all {
        let tmp = tempfile::tempdir().expect("tmp");
        fuzzing::model(tmp.path(), &data);
    }
}

#[test]
fn open_dir_regressions() {
    for data in inputs("open_dir") {
        let tmp = tempfile::tempdir().expect("tmp");
        fuzzing::open_dir(tmp.path(), &data);
    }
}

#[test]
fn decoder_regressions() {
    for data in inputs("record") {
        fuzzing::record_input(&data);
    }
    for data in inputs("hint_record") {
        fuzzing::hint_record_input(&data);
    }
    for data in inputs("manifest") {
        fuzzing::manifest_input(&data);
    }
    for data in inputs("file_header") {
        fuzzing::file_header_input(&data);
    }
}

#[test]
fn hint_file_regressions() {
    let all = inputs("hint_file");
    assert!(
        !all.is_empty(),
        "the hint_file target has a recorded regression"
    );
    for data in all {
        fuzzing::hint_file_input(&data);
    }
}

#[test]
fn keydir_snapshot_regressions() {
    let all = inputs("keydir_snapshot");
    assert!(
        !all.is_empty(),
        "the keydir_snapshot target has a recorded regression"
    );
    for data in all {
        // Each recorded input is a damaged snapshot: it must be refused, not decoded or panic.
        assert!(!fuzzing::keydir_snapshot(&data));
    }
}
