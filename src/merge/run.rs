//! Steps 1 and 2 of a merge: read the inputs record by record, decide each record's fate, write
//! what is kept to the outputs, then sync the outputs and their hints under temporary names.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::clock::now_ms;
use crate::format::{
    self, FileKind, HintRecord, Record, RecordHeader, FILE_HEADER_LEN, FLAG_TOMBSTONE,
    RECORD_HEADER_LEN,
};
use crate::io::fs::{self};
use crate::io::{Access, IoFile};
use crate::keydir::Entry;
use crate::layout::{data_path, hint_path, temp_path, vals_path, VALS_BIT};
use crate::options::IoBackendKind;
use crate::{Error, Result};

use super::{MergeReport, Merger, Output};

/// Bytes read from an input per IO.
const CHUNK_BYTES: usize = 1 << 20;

/// A live record copied to an output, to be repointed after the commit.
pub(super) struct Copied {
    pub(super) key: Box<[u8]>,
    pub(super) seq: u64,
    pub(super) from_file: u32,
    pub(super) to: Entry,
}

/// One merge's work in progress: its outputs, what must be repointed or dropped from the keydir
/// after the commit, and its report.
pub(super) struct MergeRun {
    /// Tombstones and expired values below this seq may be dropped (no file outside the inputs
    /// can hold an older value of their key).
    floor: u64,
    now: u64,
    pub(super) outputs: Vec<Output>,
    pub(super) copied: Vec<Copied>,
    /// Tombstones and expired values whose keydir entries go once the merge commits.
    pub(super) expired: Vec<(Box<[u8]>, u64)>,
    pub(super) report: MergeReport,
    throttle: Throttle,
}

/// How often a long merge logs its progress.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl MergeRun {
    pub(super) fn new(floor: u64, bytes_per_sec: u64, report: MergeReport) -> MergeRun {
        MergeRun {
            floor,
            now: now_ms(),
            outputs: Vec::new(),
            copied: Vec::new(),
            expired: Vec::new(),
            report,
            throttle: Throttle {
                rate: bytes_per_sec,
                start: Instant::now(),
                moved: 0,
            },
        }
    }
}

/// Keeps the bytes a merge moves under `rate` bytes per second (0 = no limit).
struct Throttle {
    rate: u64,
    start: Instant,
    moved: u64,
}

impl Throttle {
    /// Sleeps so that the bytes moved since `start` stay under the rate.
    async fn pace(&self) {
        if self.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.moved as f64 / self.rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed + Duration::from_millis(1) {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// An input being read: the whole record at `off` is made to sit in `chunk`.
struct Input {
    id: u32,
    path: PathBuf,
    file: IoFile,
    file_len: u64,
    chunk: Vec<u8>,
    chunk_start: u64,
    off: u64,
    /// The input's value file, if it has one: values kept apart are read from it (and
    /// written back into their records in the output).
    vals: Option<IoFile>,
}

impl Input {
    /// The keydir's file id for records of this input: its value file's for a value kept
    /// apart.
    fn entry_file(&self, rec: &Record<'_>) -> (u32, u64) {
        match rec.apart {
            Some(a) => (self.id | VALS_BIT, a.offset),
            None => (self.id, self.off),
        }
    }

    /// The value kept apart at `a`, read from the value file and checked against its CRC.
    async fn read_apart(&self, a: format::Apart) -> Result<Vec<u8>> {
        let path = || vals_path(self.path.parent().unwrap_or(Path::new("")), self.id);
        let Some(vals) = &self.vals else {
            return Err(corrupt(&path(), a.offset, "value file missing"));
        };
        let v = vals.read_exact_at(a.len as usize, a.offset).await?;
        if format::value_crc(&v) != a.crc {
            return Err(corrupt(
                &path(),
                a.offset,
                "value kept apart fails its checksum",
            ));
        }
        Ok(v)
    }
}

impl Merger {
    /// Steps 1 and 2: read the inputs, write and sync the outputs under temporary names.
    pub(super) async fn write_outputs(&self, inputs: &[u32], run: &mut MergeRun) -> Result<()> {
        let started = std::time::Instant::now();
        let mut last_log = started;
        for (done, &input) in inputs.iter().enumerate() {
            self.copy_input(input, run).await?;
            if self.kind == IoBackendKind::Pread {
                tokio::task::yield_now().await;
            }
            // A long merge says how far it is, every few seconds.
            if last_log.elapsed() >= PROGRESS_EVERY && done + 1 < inputs.len() {
                last_log = std::time::Instant::now();
                tracing::info!(
                    inputs_done = done + 1,
                    inputs = inputs.len(),
                    bytes_read = run.report.input_bytes,
                    live_bytes_copied = run.report.live_bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "merge in progress"
                );
            }
        }
        for out in run.outputs.iter_mut() {
            out.flush().await?;
            out.file.set_len(out.len)?;
            out.file.sync_all().await?;
            if let Some(v) = &out.vals {
                v.file.sync_all().await?;
            }
            let bytes = out.hint.finish(out.id, out.len);
            let tmp = temp_path(&hint_path(&self.dir, out.id));
            fs::write_temp(self.kind, &tmp, bytes, self.opts.fault_injector.as_ref()).await?;
        }
        Ok(())
    }

    /// Reads input `id` record by record and keeps what must be kept.
    async fn copy_input(&self, id: u32, run: &mut MergeRun) -> Result<()> {
        let path = data_path(&self.dir, id);
        let file = IoFile::open_read(self.kind, &path, Access::Sequential, None)?;
        let file_len = std::fs::metadata(&path)?.len();
        run.report.input_bytes += file_len + crate::layout::vals_len(&self.dir, id);
        let header = file.read_exact_at(FILE_HEADER_LEN, 0).await?;
        format::decode_file_header(&header, FileKind::Data).map_err(|e| Error::Corrupt {
            file: path.clone(),
            offset: 0,
            reason: format!("merge input header: {e}"),
        })?;
        let vals_file = vals_path(&self.dir, id);
        let vals = if vals_file.exists() {
            Some(IoFile::open_read(
                self.kind,
                &vals_file,
                Access::Sequential,
                None,
            )?)
        } else {
            None
        };
        let mut input = Input {
            id,
            path,
            file,
            file_len,
            chunk: Vec::new(),
            chunk_start: FILE_HEADER_LEN as u64,
            off: FILE_HEADER_LEN as u64,
            vals,
        };
        while input.off < input.file_len {
            if self.stopping() {
                return Err(Error::Closed);
            }
            let Some(need) = self.fill(&mut input, run).await? else {
                continue;
            };
            let at = (input.off - input.chunk_start) as usize;
            let rec = format::decode_record(&input.chunk[at..at + need])
                .map_err(|e| corrupt(&input.path, input.off, e))?;
            let fate = self.fate(&input, &rec, run);
            let apart = match (fate, rec.apart) {
                (Fate::Copy, Some(a)) => Some(input.read_apart(a).await?),
                _ => None,
            };
            let value = apart.as_deref().unwrap_or(rec.value);
            let (from_file, _) = input.entry_file(&rec);
            self.keep(fate, from_file, &rec, value, run).await?;
            input.off += need as u64;
            run.throttle.pace().await;
        }
        Ok(())
    }

    /// The length of the whole record at `input.off` when the chunk holds it, else `None` after
    /// reading the chunk that will.
    async fn fill(&self, input: &mut Input, run: &mut MergeRun) -> Result<Option<usize>> {
        let in_chunk = (input.off - input.chunk_start) as usize;
        let have = input.chunk.len().saturating_sub(in_chunk);
        let need = if have >= RECORD_HEADER_LEN {
            let h = format::decode_record_header(&input.chunk[in_chunk..])
                .map_err(|e| corrupt(&input.path, input.off, e))?;
            h.record_len() as usize
        } else {
            RECORD_HEADER_LEN
        };
        if have >= need {
            return Ok(Some(need));
        }
        let want = need
            .max(CHUNK_BYTES)
            .min((input.file_len - input.off) as usize);
        if want < need {
            return Err(corrupt(
                &input.path,
                input.off,
                "record runs past the end of the file",
            ));
        }
        input.chunk = input.file.read_exact_at(want, input.off).await?;
        input.chunk_start = input.off;
        run.throttle.moved += want as u64;
        run.throttle.pace().await;
        Ok(None)
    }

    /// What the merge does with `rec`, read at `input.off`, given the keydir's entry for its key.
    fn fate(&self, input: &Input, rec: &Record<'_>, run: &mut MergeRun) -> Fate {
        let h = rec.header;
        let is_expired = h.expiry_ms != 0 && h.expiry_ms <= run.now;
        let fate = match self.keydir.get(rec.key) {
            Some(e) if e.seq > h.seq => Fate::Drop,
            Some(e) if e.seq == h.seq => {
                let (file, offset) = input.entry_file(rec);
                if e.file_id != file || u64::from(e.offset) != offset {
                    Fate::Drop // a duplicate; the keydir points at another copy
                } else if h.is_tombstone() || is_expired {
                    run.expired.push((Box::from(rec.key), h.seq));
                    Fate::Tombstone
                } else {
                    Fate::Copy
                }
            }
            // No newer value known: a tombstone or expired value may still hide an
            // older one; a live value absent from the keydir was deleted later.
            _ if h.is_tombstone() || is_expired => Fate::Tombstone,
            None => Fate::Drop,
            // Cannot happen in a consistent store (the keydir holds the newest seq);
            // keep the record rather than risk losing it.
            Some(_) => Fate::Copy,
        };
        match fate {
            Fate::Tombstone if h.seq < run.floor => Fate::Drop,
            _ => fate,
        }
        .counted(&h, fate, run)
    }

    /// Writes what `fate` keeps of `rec` (whose keydir entry names file `from_file`), with
    /// its `value` (read from the value file when it was kept apart), to the outputs.
    async fn keep(
        &self,
        fate: Fate,
        from_file: u32,
        rec: &Record<'_>,
        value: &[u8],
        run: &mut MergeRun,
    ) -> Result<()> {
        let h = rec.header;
        let out = match fate {
            Fate::Drop => return Ok(()),
            Fate::Tombstone => {
                let out = self.output_for(&mut run.outputs, rec.key.len(), 0).await?;
                let (at, len) = out.append(h.seq, 0, FLAG_TOMBSTONE, rec.key, &[]);
                out.dead_bytes += u64::from(len);
                out.hint.push(&HintRecord {
                    seq: h.seq,
                    expiry_ms: 0,
                    offset: at,
                    record_len: len,
                    tombstone: true,
                    key: rec.key,
                    apart: None,
                });
                out
            }
            Fate::Copy => {
                let out = self
                    .output_for(&mut run.outputs, rec.key.len(), value.len())
                    .await?;
                let to = out.append_copy(h.seq, h.expiry_ms, rec.key, value);
                run.report.live_bytes += to.footprint(rec.key.len());
                run.copied.push(Copied {
                    key: Box::from(rec.key),
                    seq: h.seq,
                    from_file,
                    to,
                });
                out
            }
        };
        run.throttle.moved += out.flush_if_full().await?;
        Ok(())
    }
}

/// What a merge does with one input record.
#[derive(Clone, Copy)]
enum Fate {
    Copy,
    /// Keep as a tombstone (a tombstone, or an expired value that may hide an older one).
    Tombstone,
    Drop,
}

impl Fate {
    /// Counts the decision in the report: `self` is the final fate, `first` the one before the
    /// tombstone floor was applied.
    fn counted(self, h: &RecordHeader, first: Fate, run: &mut MergeRun) -> Fate {
        let r = &mut run.report;
        match (first, self) {
            (Fate::Drop, _) => r.dropped_superseded += 1,
            (Fate::Tombstone, Fate::Drop) if h.is_tombstone() => r.dropped_tombstones += 1,
            (Fate::Tombstone, Fate::Drop) => r.dropped_expired += 1,
            (Fate::Tombstone, _) => {
                if !h.is_tombstone() {
                    r.dropped_expired += 1;
                }
                r.tombstones_kept += 1;
            }
            (Fate::Copy, _) => r.records_copied += 1,
        }
        self
    }
}

fn corrupt(path: &Path, offset: u64, why: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        file: path.to_path_buf(),
        offset,
        reason: format!("merge input: {why}"),
    }
}
