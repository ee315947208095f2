#![no_main]
//! Decodes arbitrary bytes as a keydir snapshot (flag byte, then the snapshot; with the
//! flag's bit 0 set the checksums are recomputed first). Anything that decodes must be a
//! consistent keydir.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringcask::fuzzing::keydir_snapshot(data);
});
