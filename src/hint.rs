//! Hint files: the keys and record locations of one sealed datafile, so that open does not have
//! to read values. Written under a temporary name, synced, renamed, and the directory synced.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::datafile::{hint_path, temp_path};
use crate::io::{self, FaultInjector, IoFile, Kind};
use crate::record::{self, FileKind, HintFooter, HintRecord, FILE_HEADER_LEN, HINT_FOOTER_LEN};

/// Hint records of one datafile, accumulated while it is written or scanned.
///
/// The writer's builder *spills*: once `Options::hint_spill_bytes` of records are buffered it
/// appends them to the hint file's temporary name, so that a large active file of small records does not keep ~53 bytes
/// per record in memory until it is sealed. Recovery and merge build in memory.
#[derive(Debug, Default)]
pub(crate) struct HintBuilder {
    records: Vec<u8>,
    count: u64,
    spill: Option<Spill>,
}

#[derive(Debug)]
struct Spill {
    file_id: u32,
    /// Buffered bytes that trigger an append.
    threshold: usize,
    /// The temporary name of the hint file being built.
    path: PathBuf,
    fault: Option<Arc<FaultInjector>>,
    file: Option<std::fs::File>,
    /// Bytes written to `file` (header included).
    written: u64,
    /// A spill failed: this builder cannot produce a complete hint any more.
    failed: bool,
}

impl HintBuilder {
    /// A builder that spills to the temporary name of `file_id`'s hint file in `dir`.
    pub(crate) fn spilling(
        dir: &Path,
        file_id: u32,
        threshold: usize,
        fault: Option<Arc<FaultInjector>>,
    ) -> Self {
        HintBuilder {
            records: Vec::new(),
            count: 0,
            spill: Some(Spill {
                file_id,
                threshold,
                path: temp_path(&hint_path(dir, file_id)),
                fault,
                file: None,
                written: 0,
                failed: false,
            }),
        }
    }

    /// Adds the hint of one record.
    pub(crate) fn push(&mut self, h: &HintRecord<'_>) {
        record::encode_hint(&mut self.records, h);
        self.count += 1;
        if let Some(sp) = &mut self.spill {
            if self.records.len() >= sp.threshold {
                if let Err(e) = sp.append(&self.records) {
                    tracing::warn!(
                        file_id = sp.file_id,
                        "could not spill hint records ({e}); this file will get no hint"
                    );
                    sp.failed = true;
                }
                self.records.clear();
            }
        }
    }

    /// Number of hint records so far.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// The complete hint file for datafile `file_id` of exactly `data_len` bytes (for a builder
    /// that did not spill).
    pub(crate) fn finish(&self, file_id: u32, data_len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(FILE_HEADER_LEN + self.records.len() + HINT_FOOTER_LEN);
        record::encode_file_header(&mut out, FileKind::Hint, file_id);
        out.extend_from_slice(&self.records);
        encode_footer(&mut out, self.count, data_len);
        out
    }

    /// [`HintBuilder::finish`] that hands over the records' buffer instead of copying it: the
    /// header is shifted in front of the records in place (recovery builds the hint of every
    /// scanned datafile this way; a copy doubled its memory, 53 MB per million records).
    pub(crate) fn into_file(mut self, file_id: u32, data_len: u64) -> Vec<u8> {
        let mut header = Vec::with_capacity(FILE_HEADER_LEN);
        record::encode_file_header(&mut header, FileKind::Hint, file_id);
        let mut out = std::mem::take(&mut self.records);
        out.reserve(FILE_HEADER_LEN + HINT_FOOTER_LEN);
        out.splice(0..0, header);
        encode_footer(&mut out, self.count, data_len);
        out
    }

    /// Writes the hint file of the datafile this builder describes (`data_len` bytes) under its
    /// final name, atomically: completes the spilled temporary file, or writes it whole.
    pub(crate) async fn write(
        &mut self,
        kind: Kind,
        dir: &Path,
        file_id: u32,
        data_len: u64,
        fault: Option<&Arc<FaultInjector>>,
    ) -> std::io::Result<()> {
        let spilled = self
            .spill
            .as_ref()
            .is_some_and(|sp| sp.file.is_some() || sp.failed);
        if !spilled {
            return write(kind, dir, file_id, self.finish(file_id, data_len), fault).await;
        }
        let Some(sp) = self.spill.as_mut() else {
            return Ok(());
        };
        if sp.failed {
            let _ = std::fs::remove_file(&sp.path);
            return Err(std::io::Error::other("an earlier hint spill failed"));
        }
        let mut tail = std::mem::take(&mut self.records);
        encode_footer(&mut tail, self.count, data_len);
        let res = async {
            sp.append(&tail)?;
            io::fault_point(sp.fault.as_deref())?;
            if let Some(f) = &sp.file {
                f.sync_all()?;
            }
            let final_path = hint_path(dir, file_id);
            io::rename(sp.fault.as_deref(), &sp.path, &final_path)?;
            io::sync_dir(sp.fault.as_deref(), dir)
        }
        .await;
        if res.is_err() {
            let _ = std::fs::remove_file(&sp.path);
        }
        sp.file = None;
        sp.failed = true; // a builder writes its hint once
        res
    }
}

impl Spill {
    /// Appends `bytes` to the temporary hint file, creating it (with its header) first.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if self.failed {
            return Err(std::io::Error::other("an earlier hint spill failed"));
        }
        if self.file.is_none() {
            io::fault_point(self.fault.as_deref())?;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&self.path)?;
            let mut header = Vec::with_capacity(FILE_HEADER_LEN);
            record::encode_file_header(&mut header, FileKind::Hint, self.file_id);
            f.write_all_at(&header, 0)?;
            self.written = header.len() as u64;
            self.file = Some(f);
        }
        io::fault_point(self.fault.as_deref())?;
        let Some(f) = &self.file else {
            return Err(std::io::Error::other("no spill file"));
        };
        f.write_all_at(bytes, self.written)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

fn encode_footer(out: &mut Vec<u8>, record_count: u64, data_len: u64) {
    record::encode_hint_footer(
        out,
        &HintFooter {
            record_count,
            data_len,
        },
    );
}

/// Writes the hint file of datafile `file_id` atomically: temp file, sync, rename, sync dir.
pub(crate) async fn write(
    kind: Kind,
    dir: &Path,
    file_id: u32,
    bytes: Vec<u8>,
    fault: Option<&Arc<FaultInjector>>,
) -> std::io::Result<()> {
    let final_path = hint_path(dir, file_id);
    let tmp = temp_path(&final_path);
    let res = async {
        write_temp(kind, &tmp, bytes, fault).await?;
        io::rename(fault.map(|f| &**f), &tmp, &final_path)?;
        io::sync_dir(fault.map(|f| &**f), dir)
    }
    .await;
    if res.is_err() {
        // Best effort: a leftover temp file is removed at the next open anyway.
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Creates `path` (a temporary name), writes `bytes` and syncs it.
pub(crate) async fn write_temp(
    kind: Kind,
    path: &Path,
    bytes: Vec<u8>,
    fault: Option<&Arc<FaultInjector>>,
) -> std::io::Result<()> {
    let f = IoFile::create_new(kind, path, fault.cloned())?;
    let (r, _) = f.write_all_at(bytes, 0).await;
    r?;
    f.sync_all().await
}

/// The record count a hint file's footer announces, if it has a readable footer (used to size
/// the keydir before loading).
pub(crate) fn footer_count(path: &Path) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut buf = [0u8; HINT_FOOTER_LEN];
    f.read_exact_at(&mut buf, len.checked_sub(HINT_FOOTER_LEN as u64)?)
        .ok()?;
    record::decode_hint_footer(&buf)
        .ok()
        .map(|f| f.record_count)
}

/// Loads the hint file at `path` for datafile `file_id` whose current length is `data_len`,
/// calling `apply` for each record. `Err` carries why the hint cannot be trusted (the caller
/// then scans the datafile); nothing is applied in that case.
pub(crate) fn load(
    path: &Path,
    file_id: u32,
    data_len: u64,
    apply: impl FnMut(&HintRecord<'_>),
) -> Result<u64, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    load_bytes(&bytes, file_id, data_len, apply)
}

/// [`load`] over the bytes of a hint file.
pub(crate) fn load_bytes(
    bytes: &[u8],
    file_id: u32,
    data_len: u64,
    mut apply: impl FnMut(&HintRecord<'_>),
) -> Result<u64, String> {
    let id = record::decode_file_header(bytes, FileKind::Hint).map_err(|e| e.to_string())?;
    if id != file_id {
        return Err(format!("names file {id}, expected {file_id}"));
    }
    if bytes.len() < FILE_HEADER_LEN + HINT_FOOTER_LEN {
        return Err("too short for a footer".into());
    }
    let body_end = bytes.len() - HINT_FOOTER_LEN;
    let footer = record::decode_hint_footer(&bytes[body_end..]).map_err(|e| e.to_string())?;
    if footer.data_len != data_len {
        return Err(format!(
            "describes {} datafile bytes, the datafile has {data_len}",
            footer.data_len
        ));
    }
    // Validate everything before applying anything.
    let body = &bytes[FILE_HEADER_LEN..body_end];
    let mut off = 0usize;
    let mut count = 0u64;
    while off < body.len() {
        let (h, n) =
            record::decode_hint(&body[off..]).map_err(|e| format!("record {count}: {e}"))?;
        if h.offset + u64::from(h.record_len) > data_len {
            return Err(format!("record {count} points past the datafile end"));
        }
        off += n;
        count += 1;
    }
    if count != footer.record_count {
        return Err(format!(
            "holds {count} records, footer says {}",
            footer.record_count
        ));
    }
    let mut off = 0usize;
    while off < body.len() {
        // Every record was verified above; skip the second CRC.
        let Ok((h, n)) = record::decode_hint_with(&body[off..], false) else {
            break; // unreachable: validated above
        };
        apply(&h);
        off += n;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn into_file_equals_finish() {
        let mut b = HintBuilder::default();
        for i in 0..100u64 {
            let key = format!("key{i:04}");
            let tombstone = i % 7 == 0;
            let value_len = if tombstone { 0 } else { 10 };
            b.push(&HintRecord {
                seq: i + 1,
                expiry_ms: 0,
                offset: 20 + i * 50,
                record_len: record::record_len(key.len(), value_len) as u32,
                tombstone,
                key: key.as_bytes(),
            });
        }
        let copied = b.finish(9, 5020);
        let moved = b.into_file(9, 5020);
        assert_eq!(copied, moved);
        let mut n = 0;
        let loaded = load_bytes(&moved, 9, 5020, |_| n += 1).expect("valid hint file");
        assert_eq!((loaded, n), (100, 100));
    }
}
