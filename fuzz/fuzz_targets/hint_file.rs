#![no_main]
//! Loads arbitrary bytes as a hint file (behind a valid header when the first byte is odd);
//! every location it yields must lie inside the datafile. Input: flag (1 byte), datafile
//! length (u32 LE), hint bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let data_len = u64::from(u32::from_le_bytes([data[1], data[2], data[3], data[4]]));
    let rest = &data[5..];
    if data[0] & 1 == 1 {
        let mut with_header = ringcask::fuzzing::hint_header(1);
        with_header.extend_from_slice(rest);
        ringcask::fuzzing::hint_file(&with_header, data_len);
    } else {
        ringcask::fuzzing::hint_file(rest, data_len);
    }
});
