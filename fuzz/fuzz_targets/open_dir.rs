#![no_main]
//! Writes arbitrary bytes as the files of a store directory (datafiles, hints, a merge manifest,
//! temporary files), opens it, reads every key, writes, merges and closes. Open may refuse with
//! an error; nothing may panic (a panic on any engine thread aborts the process).
use std::sync::Once;

use libfuzzer_sys::fuzz_target;

static HOOK: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            std::process::abort();
        }));
    });
    let Ok(dir) = tempfile::tempdir() else { return };
    ringcask::fuzzing::open_dir(dir.path(), data);
});
