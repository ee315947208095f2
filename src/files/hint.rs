#![deny(clippy::indexing_slicing)]
//! Hint files: the keys and record locations of one sealed datafile, so that open does not have
//! to read values. Written under a temporary name, synced, renamed, and the directory synced.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::fault::FaultInjector;
use crate::format::{self, FileKind, HintFooter, HintRecord, FILE_HEADER_LEN, HINT_FOOTER_LEN};
use crate::io::{self, fs};
use crate::layout::{hint_path, temp_path};
use crate::options::IoBackendKind;

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
        format::encode_hint(&mut self.records, h);
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
        format::encode_file_header(&mut out, FileKind::Hint, file_id);
        out.extend_from_slice(&self.records);
        encode_footer(&mut out, self.count, data_len);
        out
    }

    /// Writes the hint file of the datafile this builder describes (`data_len` bytes) under its
    /// final name, atomically: completes the spilled temporary file, or writes it whole.
    pub(crate) async fn write(
        &mut self,
        kind: IoBackendKind,
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
            let _ = fs::remove_file(sp.fault.as_deref(), &sp.path);
            return Err(std::io::Error::other("an earlier hint spill failed"));
        }
        let mut tail = std::mem::take(&mut self.records);
        encode_footer(&mut tail, self.count, data_len);
        let res = async {
            sp.append(&tail)?;
            if let Some(f) = &sp.file {
                io::sync_file(sp.fault.as_deref(), f)?;
            }
            let final_path = hint_path(dir, file_id);
            fs::rename(sp.fault.as_deref(), &sp.path, &final_path)?;
            fs::sync_dir(sp.fault.as_deref(), dir)
        }
        .await;
        if res.is_err() {
            let _ = fs::remove_file(sp.fault.as_deref(), &sp.path);
        }
        sp.file = None;
        sp.failed = true; // a builder writes its hint once
        res
    }
}

impl Spill {
    /// Appends `bytes` to the temporary hint file, creating it (with its header) first.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.failed {
            return Err(std::io::Error::other("an earlier hint spill failed"));
        }
        let fault = self.fault.as_deref();
        if self.file.is_none() {
            let f = fs::create_file(fault, &self.path)?;
            let mut header = Vec::with_capacity(FILE_HEADER_LEN);
            format::encode_file_header(&mut header, FileKind::Hint, self.file_id);
            io::pwrite_all(fault, &f, &header, 0)?;
            self.written = header.len() as u64;
            self.file = Some(f);
        }
        let Some(f) = &self.file else {
            return Err(std::io::Error::other("no spill file"));
        };
        io::pwrite_all(fault, f, bytes, self.written)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

fn encode_footer(out: &mut Vec<u8>, record_count: u64, data_len: u64) {
    format::encode_hint_footer(
        out,
        &HintFooter {
            record_count,
            data_len,
        },
    );
}

/// Writes the hint file of datafile `file_id` atomically: temp file, sync, rename, sync dir.
pub(crate) async fn write(
    kind: IoBackendKind,
    dir: &Path,
    file_id: u32,
    bytes: Vec<u8>,
    fault: Option<&Arc<FaultInjector>>,
) -> std::io::Result<()> {
    let final_path = hint_path(dir, file_id);
    let tmp = temp_path(&final_path);
    let res = async {
        fs::write_temp(kind, &tmp, bytes, fault).await?;
        fs::rename(fault.map(|f| &**f), &tmp, &final_path)?;
        fs::sync_dir(fault.map(|f| &**f), dir)
    }
    .await;
    if res.is_err() {
        // Best effort: a leftover temp file is removed at the next open anyway.
        let _ = fs::remove_file(fault.map(|f| &**f), &tmp);
    }
    res
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
    format::decode_hint_footer(&buf)
        .ok()
        .map(|f| f.record_count)
}

/// Bytes a hint file is read in: loading never holds a whole hint file (~53 bytes per record)
/// in memory.
const LOAD_CHUNK: usize = 128 << 10;

/// Why a hint file was not loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoadError {
    /// The hint cannot be trusted (damaged, stale, unreadable). Nothing was applied: the caller
    /// scans the datafile instead.
    Unusable(String),
    /// Reading failed after records were applied (the disk failed, or the file changed while
    /// it was read): the load cannot be completed or undone.
    Failed(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Unusable(why) | LoadError::Failed(why) => f.write_str(why),
        }
    }
}

/// Loads the hint file at `path` for datafile `file_id` whose current length is `data_len`.
///
/// The file is read twice in [`LOAD_CHUNK`]s: once to verify every record, once to apply them
/// (the second read comes from the page cache). The second pass is split into up to `parts`
/// ranges of records applied on their own threads, each with its own `state()`; `apply` is
/// called once per record. Returns the record count and the states, in file order.
pub(crate) fn load<S: Send>(
    path: &Path,
    file_id: u32,
    data_len: u64,
    parts: usize,
    fault: Option<&FaultInjector>,
    state: impl Fn() -> S + Sync,
    apply: impl Fn(&mut S, &HintRecord<'_>) + Sync,
) -> Result<(u64, Vec<S>), LoadError> {
    use std::os::unix::fs::FileExt;
    let cannot = |e: std::io::Error| format!("cannot read: {e}");
    let file = std::fs::File::open(path)
        .map_err(cannot)
        .map_err(LoadError::Unusable)?;
    let len = file
        .metadata()
        .map_err(cannot)
        .map_err(LoadError::Unusable)?
        .len();
    let read_at = |buf: &mut [u8], off: u64| {
        crate::fault::read_point(fault).map_err(cannot)?;
        file.read_at(buf, off).map_err(cannot)
    };
    let how = How {
        parts,
        ..How::default()
    };
    load_from(&read_at, len, file_id, data_len, how, state, apply)
}

/// [`load`] over the bytes of a hint file, `chunk` bytes at a time (tests use tiny chunks to
/// cross every boundary).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn load_bytes<S: Send>(
    bytes: &[u8],
    file_id: u32,
    data_len: u64,
    how: How,
    state: impl Fn() -> S + Sync,
    apply: impl Fn(&mut S, &HintRecord<'_>) + Sync,
) -> Result<(u64, Vec<S>), LoadError> {
    let read_at = |buf: &mut [u8], off: u64| {
        let from = usize::try_from(off).map_or(bytes.len(), |o| o.min(bytes.len()));
        let n = buf.len().min(bytes.len() - from);
        match (buf.get_mut(..n), bytes.get(from..from + n)) {
            (Some(dst), Some(src)) => dst.copy_from_slice(src),
            _ => return Err("read out of range".to_string()),
        }
        Ok(n)
    };
    load_from(
        &read_at,
        bytes.len() as u64,
        file_id,
        data_len,
        how,
        state,
        apply,
    )
}

/// How a hint file is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct How {
    /// Bytes per read.
    pub chunk: usize,
    /// Most ranges the apply pass is split into.
    pub parts: usize,
    /// Fewest body bytes per range: a small hint is not worth a thread.
    pub min_part_bytes: u64,
}

impl Default for How {
    fn default() -> How {
        How {
            chunk: LOAD_CHUNK,
            parts: 1,
            min_part_bytes: MIN_PART_BYTES,
        }
    }
}

/// Default [`How::min_part_bytes`]: ~20k records of 16-byte keys.
const MIN_PART_BYTES: u64 = 1 << 20;

/// Positioned reads of a hint file: `(buf, offset) -> bytes read` (0 at the end).
type ReadAt<'a> = dyn Fn(&mut [u8], u64) -> Result<usize, String> + Sync + 'a;

/// Fills `buf` from `off`; fails if the file ends first.
fn read_exact_at(read_at: &ReadAt<'_>, buf: &mut [u8], off: u64) -> Result<(), String> {
    let mut done = 0;
    while done < buf.len() {
        let rest = buf.get_mut(done..).unwrap_or_default();
        match read_at(rest, off + done as u64)? {
            0 => return Err("the file shrank while it was read".into()),
            n => done += n,
        }
    }
    Ok(())
}

fn load_from<S: Send>(
    read_at: &ReadAt<'_>,
    len: u64,
    file_id: u32,
    data_len: u64,
    how: How,
    state: impl Fn() -> S + Sync,
    apply: impl Fn(&mut S, &HintRecord<'_>) + Sync,
) -> Result<(u64, Vec<S>), LoadError> {
    let (count, bounds) =
        verify(read_at, len, file_id, data_len, how).map_err(LoadError::Unusable)?;
    // Every record was verified above; skip the second CRC.
    let apply_range = |r: std::ops::Range<u64>| {
        let mut st = state();
        for_each_record(read_at, r, how.chunk, false, |h, _, _| {
            apply(&mut st, h);
            Ok(())
        })
        .map(|_| st)
    };
    let states = if let [from, to] = bounds[..] {
        vec![apply_range(from..to)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = bounds
                .windows(2)
                .filter_map(|w| match *w {
                    [from, to] => Some(s.spawn(move || apply_range(from..to))),
                    _ => None,
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a hint loading thread panicked".into()))
                })
                .collect()
        })
    };
    let states = states
        .into_iter()
        .collect::<Result<Vec<S>, String>>()
        .map_err(LoadError::Failed)?;
    Ok((count, states))
}

/// Checks the whole hint file; returns its record count and record boundaries that split its
/// body into up to `how.parts` ranges (first and last: the body's start and end).
fn verify(
    read_at: &ReadAt<'_>,
    len: u64,
    file_id: u32,
    data_len: u64,
    how: How,
) -> Result<(u64, Vec<u64>), String> {
    let mut header = [0u8; FILE_HEADER_LEN];
    let head_len = header.len().min(usize::try_from(len).unwrap_or(usize::MAX));
    let header = header.get_mut(..head_len).unwrap_or_default();
    read_exact_at(read_at, header, 0)?;
    let id = format::decode_file_header(header, FileKind::Hint).map_err(|e| e.to_string())?;
    if id != file_id {
        return Err(format!("names file {id}, expected {file_id}"));
    }
    if len < (FILE_HEADER_LEN + HINT_FOOTER_LEN) as u64 {
        return Err("too short for a footer".into());
    }
    let body_end = len - HINT_FOOTER_LEN as u64;
    let mut foot = [0u8; HINT_FOOTER_LEN];
    read_exact_at(read_at, &mut foot, body_end)?;
    let footer = format::decode_hint_footer(&foot).map_err(|e| e.to_string())?;
    if footer.data_len != data_len {
        return Err(format!(
            "describes {} datafile bytes, the datafile has {data_len}",
            footer.data_len
        ));
    }
    let body = FILE_HEADER_LEN as u64..body_end;
    // Validate everything before applying anything; note record boundaries near the points
    // that split the body into `parts` equal ranges.
    let body_len = body.end - body.start;
    let parts = (how.parts as u64)
        .min(body_len / how.min_part_bytes.max(1))
        .max(1);
    let step = (body_len / parts).max(1);
    let mut bounds = vec![body.start];
    let count = for_each_record(read_at, body.clone(), how.chunk, true, |h, i, at| {
        // Checked: a damaged offset near u64::MAX must not wrap past the test.
        let end = h.offset.checked_add(u64::from(h.record_len));
        if end.is_none_or(|end| end > data_len) {
            return Err(format!("record {i} points past the datafile end"));
        }
        if (bounds.len() as u64) < parts && at >= body.start + step * bounds.len() as u64 {
            bounds.push(at);
        }
        Ok(())
    })?;
    if count != footer.record_count {
        return Err(format!(
            "holds {count} records, footer says {}",
            footer.record_count
        ));
    }
    bounds.push(body.end);
    Ok((count, bounds))
}

/// Decodes the hint records in `range` of the file, reading `chunk` bytes at a time (more when
/// one record is larger), and calls `f(record, index in the range, file offset)` for each;
/// returns how many there were.
fn for_each_record(
    read_at: &ReadAt<'_>,
    range: std::ops::Range<u64>,
    chunk: usize,
    verify_crc: bool,
    mut f: impl FnMut(&HintRecord<'_>, u64, u64) -> Result<(), String>,
) -> Result<u64, String> {
    let total = range.end - range.start;
    let mut buf = vec![
        0u8;
        chunk
            .max(1)
            .min(usize::try_from(total).unwrap_or(usize::MAX))
    ];
    // `buf[at..filled]` holds the file's bytes from `range.start + pos + at`.
    let (mut pos, mut at, mut filled) = (0u64, 0usize, 0usize);
    let mut count = 0u64;
    loop {
        let mut needed = 0;
        while at < filled {
            let bytes = buf.get(at..filled).unwrap_or_default();
            match format::decode_hint_with(bytes, verify_crc) {
                Ok((h, n)) => {
                    f(&h, count, range.start + pos + at as u64)?;
                    at += n;
                    count += 1;
                }
                Err(format::DecodeError::Truncated { needed: want, .. })
                    if pos + (filled as u64) < total =>
                {
                    needed = usize::try_from(want).map_err(|e| e.to_string())?;
                    break;
                }
                Err(e) => return Err(format!("record {count}: {e}")),
            }
        }
        let unread = total - pos - filled as u64;
        if unread == 0 {
            return Ok(count);
        }
        // Keep the partial record, make room for the next one, read on.
        buf.copy_within(at..filled, 0);
        pos += at as u64;
        filled -= at;
        at = 0;
        if needed > buf.len() {
            buf.resize(needed, 0);
        }
        let want = (buf.len() - filled).min(usize::try_from(unread).unwrap_or(usize::MAX));
        let dst = buf
            .get_mut(filled..filled + want)
            .ok_or("read buffer out of range")?;
        read_exact_at(read_at, dst, range.start + pos + filled as u64)?;
        filled += want;
    }
}

#[cfg(test)]
mod tests;
