#![no_main]
//! Arbitrary operation sequences against a `BTreeMap` model, with merges, reopens and crashes
//! by truncation (see `ringcask::fuzzing::model`). A panic on any thread aborts the process.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringcask::fuzzing::abort_on_panic();
    let Ok(dir) = tempfile::tempdir() else { return };
    ringcask::fuzzing::model(dir.path(), data);
});
