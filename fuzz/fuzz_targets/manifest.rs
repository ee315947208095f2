#![no_main]
//! Decodes arbitrary bytes; a successful decode must re-encode to the same bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ringcask::fuzzing::manifest(data);
});
