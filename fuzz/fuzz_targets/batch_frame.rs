#![no_main]
//! Scans arbitrary bytes (a flag byte first: bit 0 recomputes every record CRC) as the records
//! of a datafile (after a valid header), in strict and
//! skip-damaged mode, through the atomic-batch framing.
use libfuzzer_sys::fuzz_target;

thread_local! {
    static DIR: tempfile::TempDir = tempfile::tempdir().expect("tmp");
}

fuzz_target!(|data: &[u8]| {
    DIR.with(|d| ringcask::fuzzing::datafile_input(d.path(), data));
});
