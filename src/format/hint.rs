#![deny(clippy::indexing_slicing)]
//! Hint records and the hint footer (laid out in the module above).

use super::{
    crc, need, range, record_len, seal_crc, u32_at, u64_at, u8_at, Apart, DecodeError,
    FILE_HEADER_LEN, FLAG_APART, FLAG_TOMBSTONE, FOOTER_MAGIC, FOOT_COUNT_OFFSET, FOOT_CRC_OFFSET,
    FOOT_DATA_LEN_OFFSET, FOOT_MAGIC_OFFSET, HINT_APART_LEN, HINT_CRC_OFFSET, HINT_EXPIRY_OFFSET,
    HINT_FLAGS_OFFSET, HINT_FOOTER_LEN, HINT_KEY_LEN_OFFSET, HINT_RECORD_HEADER_LEN,
    HINT_REC_LEN_OFFSET, HINT_REC_OFFSET_OFFSET, HINT_SEQ_OFFSET, KEY_LEN_LIMIT, VALS_ALIGN,
    VALUE_LEN_LIMIT, VALUE_REF_LEN,
};

/// One decoded hint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HintRecord<'a> {
    pub seq: u64,
    pub expiry_ms: u64,
    pub offset: u64,
    pub record_len: u32,
    pub tombstone: bool,
    pub key: &'a [u8],
    /// Where the record's value lies when it is kept apart (hint flag [`FLAG_APART`]; stored
    /// after the key).
    pub apart: Option<Apart>,
}

/// Appends one hint record to `out`.
pub(crate) fn encode_hint(out: &mut Vec<u8>, h: &HintRecord<'_>) {
    assert!(!h.key.is_empty() && h.key.len() <= KEY_LEN_LIMIT as usize);
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&h.seq.to_le_bytes());
    out.extend_from_slice(&h.expiry_ms.to_le_bytes());
    out.extend_from_slice(&h.offset.to_le_bytes());
    out.extend_from_slice(&h.record_len.to_le_bytes());
    out.extend_from_slice(&(h.key.len() as u32).to_le_bytes());
    let flags = match (h.tombstone, h.apart) {
        (true, _) => FLAG_TOMBSTONE,
        (false, Some(_)) => FLAG_APART,
        (false, None) => 0,
    };
    out.push(flags);
    out.extend_from_slice(h.key);
    if let Some(a) = h.apart.filter(|_| !h.tombstone) {
        out.extend_from_slice(&a.offset.to_le_bytes());
        out.extend_from_slice(&a.len.to_le_bytes());
        out.extend_from_slice(&a.crc.to_le_bytes());
    }
    seal_crc(out, start, HINT_SEQ_OFFSET);
}

/// Decodes the hint record at the start of `buf`; returns it and its encoded length.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode_hint(buf: &[u8]) -> Result<(HintRecord<'_>, usize), DecodeError> {
    decode_hint_with(buf, true)
}

/// [`decode_hint`], optionally without the CRC check: for a second pass over bytes whose every
/// record was already verified.
pub(crate) fn decode_hint_with(
    buf: &[u8],
    verify_crc: bool,
) -> Result<(HintRecord<'_>, usize), DecodeError> {
    need(buf, HINT_RECORD_HEADER_LEN)?;
    let key_len = u32_at(buf, HINT_KEY_LEN_OFFSET)?;
    if key_len == 0 || key_len > KEY_LEN_LIMIT {
        return Err(DecodeError::Invalid("hint key length out of range"));
    }
    let flags = u8_at(buf, HINT_FLAGS_OFFSET)?;
    if flags & !(FLAG_TOMBSTONE | FLAG_APART) != 0 || flags == FLAG_TOMBSTONE | FLAG_APART {
        return Err(DecodeError::Invalid("unknown hint flags"));
    }
    let key_end = HINT_RECORD_HEADER_LEN + key_len as usize;
    let apart = flags & FLAG_APART != 0;
    let len = key_end + if apart { HINT_APART_LEN } else { 0 };
    need(buf, len)?;
    if verify_crc && u32_at(buf, HINT_CRC_OFFSET)? != crc(range(buf, HINT_SEQ_OFFSET, len)?) {
        return Err(DecodeError::BadCrc);
    }
    let h = HintRecord {
        seq: u64_at(buf, HINT_SEQ_OFFSET)?,
        expiry_ms: u64_at(buf, HINT_EXPIRY_OFFSET)?,
        offset: u64_at(buf, HINT_REC_OFFSET_OFFSET)?,
        record_len: u32_at(buf, HINT_REC_LEN_OFFSET)?,
        tombstone: flags & FLAG_TOMBSTONE != 0,
        key: range(buf, HINT_RECORD_HEADER_LEN, key_end)?,
        apart: None,
    };
    let h = if apart {
        let a = Apart {
            offset: u64_at(buf, key_end)?,
            len: u32_at(buf, key_end + 8)?,
            crc: u32_at(buf, key_end + 12)?,
        };
        let aligned = a.offset >= VALS_ALIGN && a.offset.is_multiple_of(VALS_ALIGN);
        if !aligned || a.len == 0 || a.len > VALUE_LEN_LIMIT {
            return Err(DecodeError::Invalid(
                "hint of a value kept apart out of range",
            ));
        }
        HintRecord {
            apart: Some(a),
            ..h
        }
    } else {
        h
    };
    let min_len = record_len(key_len as usize, 0) as u64;
    let max_len = min_len + u64::from(VALUE_LEN_LIMIT);
    let rl = u64::from(h.record_len);
    let fixed = h.tombstone || apart;
    let fixed_len = min_len + if apart { VALUE_REF_LEN as u64 } else { 0 };
    if rl < min_len || rl > max_len || (fixed && rl != fixed_len) {
        return Err(DecodeError::Invalid("hint record length out of range"));
    }
    if h.offset < FILE_HEADER_LEN as u64 {
        return Err(DecodeError::Invalid("hint offset inside the file header"));
    }
    Ok((h, len))
}

// ---- hint footer -------------------------------------------------------------------------

/// The footer of a hint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HintFooter {
    pub record_count: u64,
    pub data_len: u64,
}

/// Appends a hint footer to `out`.
pub(crate) fn encode_hint_footer(out: &mut Vec<u8>, f: &HintFooter) {
    let start = out.len();
    out.extend_from_slice(&FOOTER_MAGIC);
    out.extend_from_slice(&f.record_count.to_le_bytes());
    out.extend_from_slice(&f.data_len.to_le_bytes());
    let c = crc(out.get(start..).unwrap_or_default());
    out.extend_from_slice(&c.to_le_bytes());
    debug_assert_eq!(out.len() - start, HINT_FOOTER_LEN);
}

/// Decodes a hint footer (exactly [`HINT_FOOTER_LEN`] bytes are looked at).
pub(crate) fn decode_hint_footer(buf: &[u8]) -> Result<HintFooter, DecodeError> {
    need(buf, HINT_FOOTER_LEN)?;
    if range(buf, FOOT_MAGIC_OFFSET, FOOT_COUNT_OFFSET)? != FOOTER_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if u32_at(buf, FOOT_CRC_OFFSET)? != crc(range(buf, 0, FOOT_CRC_OFFSET)?) {
        return Err(DecodeError::BadCrc);
    }
    Ok(HintFooter {
        record_count: u64_at(buf, FOOT_COUNT_OFFSET)?,
        data_len: u64_at(buf, FOOT_DATA_LEN_OFFSET)?,
    })
}
