//! The merge manifest's codec (its bytes are drawn at the top of `format/mod.rs`).

use std::mem::size_of;

use super::{
    crc, need, range, u32_at, DecodeError, FORMAT_VERSION, MANIFEST_MAGIC, MANIFEST_MAX_IDS,
};

const MAN_MAGIC_OFFSET: usize = 0;
const MAN_VERSION_OFFSET: usize = MAN_MAGIC_OFFSET + MANIFEST_MAGIC.len();
pub(super) const MAN_INPUTS_OFFSET: usize = MAN_VERSION_OFFSET + size_of::<u32>();

/// The inputs and outputs of a committed merge.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Manifest {
    pub inputs: Vec<u32>,
    pub outputs: Vec<u32>,
}

/// Encodes a merge manifest.
pub(crate) fn encode_manifest(m: &Manifest) -> Vec<u8> {
    encode_manifest_version(m, FORMAT_VERSION)
}

/// [`encode_manifest`] with the format version given (the fuzz targets re-encode what they
/// decoded, of either version: the layout is the same).
pub(crate) fn encode_manifest_version(m: &Manifest, version: u32) -> Vec<u8> {
    assert!(m.inputs.len() as u64 <= u64::from(MANIFEST_MAX_IDS));
    assert!(m.outputs.len() as u64 <= u64::from(MANIFEST_MAX_IDS));
    let mut out = Vec::with_capacity(24 + 4 * (m.inputs.len() + m.outputs.len()));
    out.extend_from_slice(&MANIFEST_MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    for ids in [&m.inputs, &m.outputs] {
        out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        for id in ids.iter() {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    let c = crc(&out);
    out.extend_from_slice(&c.to_le_bytes());
    out
}

/// Decodes a merge manifest (the whole file).
pub(crate) fn decode_manifest(buf: &[u8]) -> Result<Manifest, DecodeError> {
    need(
        buf,
        MAN_INPUTS_OFFSET + 2 * size_of::<u32>() + size_of::<u32>(),
    )?;
    if range(buf, MAN_MAGIC_OFFSET, MAN_VERSION_OFFSET)? != MANIFEST_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = u32_at(buf, MAN_VERSION_OFFSET)?;
    if !(super::MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let body_len = buf.len() - size_of::<u32>();
    let body = range(buf, 0, body_len)?;
    if u32_at(buf, body_len)? != crc(body) {
        return Err(DecodeError::BadCrc);
    }
    let mut at = MAN_INPUTS_OFFSET;
    let mut lists = [Vec::new(), Vec::new()];
    for list in lists.iter_mut() {
        need(body, at + size_of::<u32>())?;
        let n = u32_at(buf, at)?;
        if n > MANIFEST_MAX_IDS {
            return Err(DecodeError::Invalid("manifest lists too many files"));
        }
        at += size_of::<u32>();
        let end = at + n as usize * size_of::<u32>();
        need(body, end)?;
        for i in (at..end).step_by(size_of::<u32>()) {
            list.push(u32_at(buf, i)?);
        }
        at = end;
    }
    if at != body_len {
        return Err(DecodeError::Invalid("trailing bytes in the manifest"));
    }
    let [inputs, outputs] = lists;
    Ok(Manifest { inputs, outputs })
}
