#![no_main]
//! Loads arbitrary bytes as a hint file (behind a valid header when flag bit 0 is set; with
//! every CRC recomputed when bit 1 is); every location it yields must lie inside the datafile.
//! Input: flag (1 byte), datafile length (u32 LE), hint bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringcask::fuzzing::hint_file_input(data);
});
