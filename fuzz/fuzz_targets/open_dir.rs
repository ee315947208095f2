#![no_main]
//! Writes arbitrary bytes as the files of a store directory (datafiles, hints, a merge manifest,
//! temporary files), opens it, reads every key, writes, merges and closes. Open may refuse with
//! an error; nothing may panic (a panic on any engine thread aborts the process).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringcask::fuzzing::abort_on_panic();
    let Ok(dir) = tempfile::tempdir() else { return };
    ringcask::fuzzing::open_dir(dir.path(), data);
});
