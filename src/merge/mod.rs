//! Merge: rewrite the live records of sealed datafiles into new files, crash-atomically.
//!
//! Protocol (every step that matters is fsynced before the next):
//! 1. Read each input sequentially; keep a record only if the keydir still points at it
//!    (a live value), or if it is a tombstone / expired value that may still hide an older
//!    value in a file outside the inputs (then it is written as a tombstone). Outputs get fresh
//!    ids, the merged-datafile magic, and temporary names (`NNNNNNNNNN.data.tmp`, `.hint.tmp`).
//! 2. Outputs and their hints are synced, and the writer syncs the active file: records the
//!    merge dropped as superseded may be superseded by records not yet synced under
//!    `SyncPolicy::Never` / `IntervalMs`, and must not be lost together with them.
//! 3. **Commit**: the manifest (inputs, outputs) is written as `MERGE.tmp`, synced, renamed to
//!    `MERGE`, and the directory synced. Before this point a crash leaves only temporary files,
//!    which open removes; from this point on, open finishes the merge (steps 4 and 6).
//! 4. Outputs are renamed to their final names; directory synced.
//! 5. The keydir is repointed to the copies, each only if its entry still has the copied seq
//!    in the input (a racing put or delete wins); reads are told to drop the inputs' handles.
//! 6. Inputs and their hints are deleted, then the manifest; directory synced.
//!
//! Tombstone rule: a tombstone (or an expired value) with seq `s` is dropped only when every
//! datafile outside the inputs holds records with seqs above `s` only, so no older value of
//! its key can exist outside the merge.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::clock::now_ms;
use crate::fault::FaultInjector;
use crate::files::hint::HintBuilder;
use crate::files::manifest::{self, manifest_path};
use crate::format::{self, FileKind, Manifest, FILE_HEADER_LEN};
use crate::io::fs;
use crate::io::IoFile;
use crate::keydir::KeyDir;
use crate::layout::{data_path, hint_path, temp_path, vals_path};
use crate::options::IoBackendKind;
use crate::read::cache::ValueCache;
use crate::read::filetable::FileTable;
use crate::read::reader::ReaderMsg;
use crate::read::ring::RingReads;
use crate::state::Shared;
use crate::stats::FileStats;
use crate::write::{self, WriteMsg};
use crate::{Error, Options, Result};

mod output;
mod run;
mod task;
mod warm;

use output::{OutVals, Output, OUT_BUF_BYTES};
use run::{Copied, MergeRun};
pub(crate) use task::{spawn, MergeMsg};

/// What a merge did.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct MergeReport {
    /// Datafile ids merged (and deleted).
    pub inputs: Vec<u32>,
    /// Datafile ids written.
    pub outputs: Vec<u32>,
    /// Total length of the inputs (their value files included).
    pub input_bytes: u64,
    /// Total length of the outputs (their value files included).
    pub output_bytes: u64,
    /// Bytes of live records copied.
    pub live_bytes: u64,
    /// `input_bytes - output_bytes`: disk space given back.
    pub reclaimed_bytes: u64,
    /// Live records copied.
    pub records_copied: u64,
    /// Records dropped because a newer record of their key exists.
    pub dropped_superseded: u64,
    /// Tombstones dropped (no older value can remain outside the merge).
    pub dropped_tombstones: u64,
    /// Expired values dropped (or, where they may still hide an older value, kept as a
    /// tombstone and counted in `tombstones_kept`).
    pub dropped_expired: u64,
    /// Tombstones written to the outputs.
    pub tombstones_kept: u64,
    /// Wall time of the merge.
    pub duration: Duration,
}

/// Everything a merge needs; lives on the merge thread.
pub(crate) struct Merger {
    pub dir: PathBuf,
    pub kind: IoBackendKind,
    pub opts: Options,
    pub keydir: Arc<KeyDir>,
    pub shared: Arc<Shared>,
    pub readers: Vec<mpsc::Sender<ReaderMsg>>,
    /// The `O_DIRECT` descriptors of callers' direct reads, if they read through the shared ring.
    pub ring_reads: Option<Arc<RingReads>>,
    /// Read handles of the callers' fast path.
    pub files: Arc<FileTable>,
    /// The handle's value cache, warmed after open (see [`Merger::warm_cache`]).
    pub cache: Option<Arc<ValueCache>>,
    /// The writer, asked for an `fdatasync` before the commit (see [`Merger::merge`]).
    pub writer: mpsc::Sender<WriteMsg>,
    /// Set after a failure past the commit point: the next open finishes that merge.
    pub broken: Option<String>,
}

impl Merger {
    fn fault(&self) -> Option<&FaultInjector> {
        self.opts.fault_injector.as_deref()
    }

    fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    /// Ids of every file the writer has sealed (and applied), oldest first.
    pub(crate) fn sealed_files(&self) -> Vec<FileStats> {
        self.shared
            .with_usage(|u| u.values().filter(|f| f.sealed).copied().collect())
    }

    /// Merges the given sealed files; `trigger` says why (for the log).
    pub(crate) async fn merge(
        &mut self,
        inputs: Vec<u32>,
        trigger: &'static str,
    ) -> Result<MergeReport> {
        if let Some(why) = &self.broken {
            return Err(Error::Poisoned(why.clone()));
        }
        let started = Instant::now();
        let report = MergeReport {
            inputs: inputs.clone(),
            ..MergeReport::default()
        };
        if inputs.is_empty() {
            return Ok(report);
        }
        let (input_bytes, dead_bytes) = self.shared.with_usage(|u| {
            inputs
                .iter()
                .filter_map(|id| u.get(id))
                .fold((0, 0), |(t, d), f| (t + f.total_bytes, d + f.dead_bytes))
        });
        tracing::info!(
            trigger,
            inputs = ?inputs,
            input_bytes,
            dead_bytes,
            "merge started"
        );
        // Tombstones below every seq held outside the inputs cannot hide anything any more.
        let floor = self.shared.with_usage(|u| {
            u.values()
                .filter(|f| !inputs.contains(&f.file_id))
                .map(|f| f.min_seq)
                .min()
                .unwrap_or(u64::MAX)
        });
        let mut run = MergeRun::new(floor, self.opts.merge_bytes_per_sec, report);
        if let Err(e) = self.write_outputs(&inputs, &mut run).await {
            self.discard(&run.outputs);
            return Err(match e {
                Error::Io(io) => Error::Io(crate::io::context(
                    io,
                    format!("merging datafiles {inputs:?} in {}", self.dir.display()),
                )),
                other => other,
            });
        }
        let MergeRun {
            outputs,
            copied,
            expired,
            mut report,
            ..
        } = run;
        // The merge dropped records because newer ones exist, possibly in the active file and
        // not yet synced (`SyncPolicy::Never` / `IntervalMs`). Make those durable before the
        // inputs go, or a power loss could lose both the new and the old value of a key.
        if let Err(e) = self.sync_writer().await {
            self.discard(&outputs);
            return Err(e);
        }
        // Step 3: commit.
        let manifest = Manifest {
            inputs: inputs.clone(),
            outputs: outputs.iter().map(|o| o.id).collect(),
        };
        self.commit_or_abandon(&manifest, &outputs).await?;
        // Past the commit point: a failure leaves the rest to the next open.
        if let Err(e) = self.publish(&manifest, &outputs, copied, expired).await {
            let why = format!("merge failed after its commit ({e}); reopen to finish it");
            tracing::error!("{why}");
            self.broken = Some(why);
            return Err(e.into());
        }
        report.outputs = manifest.outputs;
        report.output_bytes = outputs.iter().map(Output::total_len).sum();
        Ok(self.finished(report, started))
    }

    /// Commits; a commit that did not happen discards the outputs, one that may have happened
    /// leaves them for the next open and stops further merges.
    async fn commit_or_abandon(&mut self, manifest: &Manifest, outputs: &[Output]) -> Result<()> {
        match self.commit(manifest).await {
            Ok(()) => Ok(()),
            Err(Commit::NotDone(e)) => {
                self.discard(outputs);
                let _ = fs::remove_file(self.fault(), &temp_path(&manifest_path(&self.dir)));
                Err(e.into())
            }
            Err(Commit::Uncertain(e)) => {
                // The manifest may be in place: the outputs must stay for the next open.
                let why = format!("merge commit not confirmed ({e}); reopen to finish it");
                tracing::error!("{why}");
                self.broken = Some(why);
                Err(e.into())
            }
        }
    }

    /// Completes the report of a published merge, counts it and logs it.
    fn finished(&self, mut report: MergeReport, started: Instant) -> MergeReport {
        report.reclaimed_bytes = report.input_bytes.saturating_sub(report.output_bytes);
        report.duration = started.elapsed();
        self.shared.merges.add(1);
        self.shared
            .merge_reclaimed_bytes
            .add(report.reclaimed_bytes);
        tracing::info!(
            inputs = report.inputs.len(),
            outputs = report.outputs.len(),
            reclaimed_bytes = report.reclaimed_bytes,
            elapsed_ms = report.duration.as_millis() as u64,
            "merge finished"
        );
        report
    }

    /// The output that takes the next record, rotating at `max_file_bytes`.
    async fn output_for<'o>(
        &self,
        outputs: &'o mut Vec<Output>,
        key_len: usize,
        value_len: usize,
    ) -> Result<&'o mut Output> {
        // A value kept apart takes up to an eighth more, and a reference.
        let len = format::record_len(key_len, value_len) as u64;
        let len = len + len / 8 + format::VALUE_REF_LEN as u64;
        let full = outputs.last().is_none_or(|o| {
            o.total_len() + len > self.opts.max_file_bytes
                && o.len + o.buf.len() as u64 > FILE_HEADER_LEN as u64
        });
        if full {
            if let Some(o) = outputs.last_mut() {
                o.flush().await?;
            }
            let id = self.shared.allocate_file_id()?;
            let path = temp_path(&data_path(&self.dir, id));
            let file = IoFile::create_new(self.kind, &path, self.opts.fault_injector.clone())?;
            let mut buf = Vec::with_capacity(OUT_BUF_BYTES);
            format::encode_file_header(&mut buf, FileKind::Merged, id);
            // The writer's rule: a store written by the direct-IO writer keeps values apart.
            let vals = if self.opts.direct_writes() && self.opts.values_apart {
                let path = temp_path(&vals_path(&self.dir, id));
                let file = IoFile::create_new(self.kind, &path, self.opts.fault_injector.clone())?;
                let mut buf = Vec::with_capacity(OUT_BUF_BYTES);
                format::encode_file_header(&mut buf, FileKind::Vals, id);
                buf.resize(format::VALS_ALIGN as usize, 0);
                Some(OutVals { file, len: 0, buf })
            } else {
                None
            };
            outputs.push(Output {
                id,
                file,
                len: 0,
                buf,
                hint: HintBuilder::default(),
                min_seq: u64::MAX,
                dead_bytes: 0,
                vals,
            });
        }
        outputs
            .last_mut()
            .ok_or_else(|| Error::Io(std::io::Error::other("no merge output")))
    }

    /// Asks the writer for an `fdatasync` of everything acknowledged so far.
    async fn sync_writer(&self) -> Result<()> {
        write::request_sync(&self.writer, u64::MAX).await
    }

    /// Removes the temporary outputs of an aborted merge (best effort: open removes leftovers).
    fn discard(&self, outputs: &[Output]) {
        for o in outputs {
            let _ = fs::remove_file(self.fault(), &temp_path(&data_path(&self.dir, o.id)));
            let _ = fs::remove_file(self.fault(), &temp_path(&hint_path(&self.dir, o.id)));
            if o.vals.is_some() {
                let _ = fs::remove_file(self.fault(), &temp_path(&vals_path(&self.dir, o.id)));
            }
        }
    }

    /// Step 3: write the manifest under its final name, atomically.
    async fn commit(&self, m: &Manifest) -> Result<(), Commit> {
        let path = manifest_path(&self.dir);
        let tmp = temp_path(&path);
        fs::write_temp(
            self.kind,
            &tmp,
            format::encode_manifest(m),
            self.opts.fault_injector.as_ref(),
        )
        .await
        .map_err(Commit::NotDone)?;
        // A failed rename may still have happened (the call can fail after the directory
        // changed); from here on the outputs must never be discarded.
        fs::rename(self.fault(), &tmp, &path).map_err(Commit::Uncertain)?;
        fs::sync_dir(self.fault(), &self.dir).map_err(Commit::Uncertain)
    }

    /// Steps 4 to 6.
    async fn publish(
        &self,
        m: &Manifest,
        outputs: &[Output],
        copied: Vec<Copied>,
        expired: Vec<(Box<[u8]>, u64)>,
    ) -> std::io::Result<()> {
        for o in outputs {
            let vals = o.vals.as_ref().map(|_| vals_path(&self.dir, o.id));
            let names = [data_path(&self.dir, o.id), hint_path(&self.dir, o.id)];
            for final_path in vals.into_iter().chain(names) {
                fs::rename(self.fault(), &temp_path(&final_path), &final_path)?;
            }
        }
        fs::sync_dir(self.fault(), &self.dir)?;

        // Step 5: account the outputs, repoint the keydir, retire the inputs. The outputs are
        // accounted before any key points at them, so that a write replacing a repointed key
        // meanwhile finds the output's stats to add its dead bytes to.
        self.shared.with_usage(|u| {
            for o in outputs {
                let mut f = FileStats::new(o.id);
                f.vals_bytes = o.vals.as_ref().map_or(0, |v| v.len);
                f.total_bytes = o.len + f.vals_bytes;
                // A value file's header block counts as dead.
                f.dead_bytes = o.dead_bytes + f.vals_bytes.min(format::VALS_ALIGN);
                f.min_seq = o.min_seq;
                f.sealed = true;
                u.insert(o.id, f);
            }
        });
        let mut failed: BTreeMap<u32, u64> = BTreeMap::new();
        for c in &copied {
            if !self.keydir.repoint(&c.key, c.seq, c.from_file, c.to) {
                *failed.entry(c.to.file_id).or_default() += u64::from(c.to.len);
            }
        }
        for (key, seq) in &expired {
            self.keydir.remove_if_seq(key, *seq);
        }
        self.shared.with_usage(|u| {
            for (id, bytes) in &failed {
                Shared::add_dead(u, *id, *bytes);
            }
            for id in &m.inputs {
                u.remove(id);
            }
        });
        // Step 6: delete the inputs (or, while a snapshot may still read them, mark them
        // retired so that open deletes them), then the manifest.
        if self.shared.with_pins(|p| p.retire(&m.inputs)) {
            self.delete_inputs(&m.inputs).await?;
        } else {
            tracing::info!(
                inputs = ?m.inputs,
                "merge inputs kept until the snapshots reading them drop"
            );
            manifest::mark_retired(&self.dir, &m.inputs, self.fault())?;
        }
        fs::remove_file(self.fault(), &manifest_path(&self.dir))?;
        fs::sync_dir(self.fault(), &self.dir)
    }

    /// Deletes datafiles `ids` (merged away, and read by no snapshot) and their hint files,
    /// after every read thread has dropped its handles on them.
    pub(crate) async fn delete_inputs(&self, ids: &[u32]) -> std::io::Result<()> {
        // Their value files too (the read path's ids of them).
        let read_ids: Vec<u32> = ids
            .iter()
            .flat_map(|&id| [id, id | crate::layout::VALS_BIT])
            .collect();
        let ids_all = read_ids.as_slice();
        self.files.retire(ids_all);
        if let Some(r) = &self.ring_reads {
            r.retire(ids_all);
        }
        let mut acks = Vec::new();
        for r in &self.readers {
            let (ack, rx) = oneshot::channel();
            let msg = ReaderMsg::Retire {
                file_ids: ids_all.to_vec(),
                ack,
            };
            if r.send(msg).await.is_ok() {
                acks.push(rx);
            }
        }
        for a in acks {
            let _ = a.await;
        }
        manifest::delete_retired(&self.dir, ids, self.fault())
    }

    /// Deletes the merged-away datafiles that the last snapshot reading them has released.
    pub(crate) async fn delete_released(&self) {
        let ids = self.shared.with_pins(|p| p.take_ready());
        if ids.is_empty() {
            return;
        }
        match self.delete_inputs(&ids).await {
            Ok(()) => {
                tracing::debug!(files = ?ids, "deleted merged-away datafiles no snapshot reads")
            }
            // Their markers stay: the next open deletes them.
            Err(e) => tracing::warn!(files = ?ids, "cannot delete merged-away datafiles: {e}"),
        }
    }

    /// Drops expired entries from the keydir and counts their records as dead, so that the
    /// space accounting (and the merge trigger) sees expiry without waiting for reads.
    pub(crate) fn sweep_expired(&self) {
        if !self.shared.has_ttl.load(Ordering::Relaxed) {
            return;
        }
        let gone = self.keydir.take_expired(now_ms());
        if gone.is_empty() {
            return;
        }
        self.shared.with_usage(|u| {
            for (file_id, bytes) in &gone {
                Shared::add_dead(u, *file_id, *bytes);
            }
        });
        tracing::debug!(keys = gone.len(), "reclaimed expired keys");
    }

    /// The inputs an automatic merge would take now, if the store is fragmented enough.
    pub(crate) fn auto_inputs(&self) -> Option<Vec<u32>> {
        let sealed = self.sealed_files();
        let total: u64 = sealed.iter().map(|f| f.total_bytes).sum();
        let dead: u64 = sealed.iter().map(|f| f.dead_bytes).sum();
        if total == 0 {
            return None;
        }
        let o = &self.opts;
        if (dead as f64 / total as f64) < o.merge_trigger_ratio && dead < o.merge_trigger_bytes {
            return None;
        }
        let small = o.max_file_bytes / 4;
        let picked: Vec<&FileStats> = sealed
            .iter()
            .filter(|f| f.dead_ratio() >= o.merge_file_ratio || f.total_bytes < small)
            .collect();
        let worth_it =
            picked.iter().any(|f| f.dead_ratio() >= o.merge_file_ratio) || picked.len() >= 2;
        worth_it.then(|| picked.iter().map(|f| f.file_id).collect())
    }
}

/// How a commit failed.
enum Commit {
    /// Before the manifest's rename: nothing is committed.
    NotDone(std::io::Error),
    /// At or after the rename: the merge may be committed; only open can tell.
    Uncertain(std::io::Error),
}
