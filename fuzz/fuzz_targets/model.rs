#![no_main]
//! Arbitrary operation sequences against a `BTreeMap` model, with merges, reopens and crashes
//! by truncation (see `ringcask::fuzzing::model`). A panic on any thread aborts the process.
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
    ringcask::fuzzing::model(dir.path(), data);
});
