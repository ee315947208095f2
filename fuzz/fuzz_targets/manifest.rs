#![no_main]
//! Decodes arbitrary bytes (a flag byte first: bit 0 recomputes the CRC, so that inputs reach the
//! checks behind it); a successful decode must re-encode to the same bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ringcask::fuzzing::manifest_input(data);
});
