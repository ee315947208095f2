//! Checksum fixing for the fuzz targets: inputs reach the checks behind the CRCs.
#![deny(clippy::indexing_slicing)]

use std::mem::size_of;

use super::{
    crc, seal_crc, u32_at, u8_at, FILE_HEADER_LEN, FLAG_APART, HINT_APART_LEN, HINT_FLAGS_OFFSET,
    HINT_FOOTER_LEN, HINT_KEY_LEN_OFFSET, HINT_RECORD_HEADER_LEN, HINT_SEQ_OFFSET,
    RECORD_HEADER_LEN, REC_FLAGS_OFFSET, REC_KEY_LEN_OFFSET, REC_SEQ_OFFSET, REC_VALUE_LEN_OFFSET,
    VALUE_REF_LEN,
};

/// The length of the record (`header`-byte header, key length at `key_at`, flags at
/// `flags_at`; after the key `body(flags)` bytes) at the start of `buf`, if it fits.
fn fixable_len(
    buf: &[u8],
    header: usize,
    key_at: usize,
    flags_at: usize,
    body: impl FnOnce(u8) -> Option<usize>,
) -> Option<usize> {
    let k = u32_at(buf, key_at).ok()? as usize;
    let v = body(u8_at(buf, flags_at).ok()?)?;
    header
        .checked_add(k)?
        .checked_add(v)
        .filter(|&l| l <= buf.len())
}

/// Recomputes the CRC of the data record at the start of `buf`; returns its length.
pub(crate) fn fix_record_crc(buf: &mut [u8]) -> Option<usize> {
    // A record keeping its value apart holds the value's reference, not the value.
    let body = |flags: u8| match flags & FLAG_APART {
        0 => u32_at(buf, REC_VALUE_LEN_OFFSET).ok().map(|v| v as usize),
        _ => Some(VALUE_REF_LEN),
    };
    let len = fixable_len(
        buf,
        RECORD_HEADER_LEN,
        REC_KEY_LEN_OFFSET,
        REC_FLAGS_OFFSET,
        body,
    )?;
    seal_crc(buf.get_mut(..len)?, 0, REC_SEQ_OFFSET);
    Some(len)
}

/// Recomputes the CRC of every data record of `buf`, from its start, as far as they fit.
pub(crate) fn fix_record_crcs(buf: &mut [u8]) {
    let mut at = 0;
    while let Some(len) = buf.get_mut(at..).and_then(fix_record_crc) {
        at += len.max(1);
    }
}

/// Recomputes the CRC of the hint record at the start of `buf`.
pub(crate) fn fix_hint_crc(buf: &mut [u8]) -> Option<usize> {
    let body = |flags: u8| {
        Some(if flags & FLAG_APART != 0 {
            HINT_APART_LEN
        } else {
            0
        })
    };
    let len = fixable_len(
        buf,
        HINT_RECORD_HEADER_LEN,
        HINT_KEY_LEN_OFFSET,
        HINT_FLAGS_OFFSET,
        body,
    )?;
    seal_crc(buf.get_mut(..len)?, 0, HINT_SEQ_OFFSET);
    Some(len)
}

/// Recomputes every CRC of a hint file: its header, its records (as far as they fit before
/// the footer) and its footer.
pub(crate) fn fix_hint_file_crcs(buf: &mut [u8]) {
    fix_trailing_crc(buf, FILE_HEADER_LEN);
    let Some(body_end) = buf.len().checked_sub(HINT_FOOTER_LEN) else {
        return;
    };
    let mut at = FILE_HEADER_LEN;
    while let Some(len) = buf.get_mut(at..body_end).and_then(fix_hint_crc) {
        at += len.max(1);
    }
    if let Some(footer) = buf.get_mut(body_end..) {
        fix_trailing_crc(footer, HINT_FOOTER_LEN);
    }
}

/// Recomputes the CRC of a file header (or, for a manifest, of the whole file): the last 4
/// bytes of `buf[..len]` hold the CRC of the bytes before them.
pub(crate) fn fix_trailing_crc(buf: &mut [u8], len: usize) {
    let Some(body) = len.checked_sub(size_of::<u32>()) else {
        return;
    };
    let Some(c) = buf.get(..body).map(crc) else {
        return;
    };
    if let Some(dst) = buf.get_mut(body..len) {
        dst.copy_from_slice(&c.to_le_bytes());
    }
}
