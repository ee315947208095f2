//! Entry points for cargo-fuzz (feature `fuzzing`; not a stable API): every decoder of the
//! on-disk format on arbitrary bytes, with the encode-after-decode round trip checked, so that
//! fuzz targets in `fuzz/` reach code that is otherwise private.
//!
//! Each function panics only when an invariant is broken (which the fuzzer reports).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::files::datafile::{self, ScanMode};
use crate::format::{self, FileKind, HintRecord};
use crate::layout;
use crate::testing::FaultInjector;
use crate::{Db, Options, SyncPolicy, WriteBatch};

/// Decodes a data record; a decoded record must re-encode to exactly the same bytes.
/// Returns whether it decoded.
pub fn record(data: &[u8]) -> bool {
    let Ok(r) = format::decode_record(data) else {
        return false;
    };
    {
        let mut again = Vec::new();
        let h = r.header;
        match r.apart {
            Some(a) => {
                let flags = h.flags & !format::FLAG_APART;
                format::encode_record_apart(&mut again, h.seq, h.expiry_ms, flags, r.key, a)
            }
            None => format::encode_record(&mut again, h.seq, h.expiry_ms, h.flags, r.key, r.value),
        }
        assert_eq!(&again[..], &data[..again.len()], "record round trip");
        assert_eq!(again.len() as u64, r.header.record_len());
    }
    true
}

/// Decodes a hint record; a decoded record must re-encode to exactly the same bytes.
/// Returns whether it decoded.
pub fn hint_record(data: &[u8]) -> bool {
    let Ok((h, n)) = format::decode_hint(data) else {
        return false;
    };
    let mut again = Vec::new();
    format::encode_hint(&mut again, &h);
    assert_eq!(&again[..], &data[..n], "hint round trip");
    true
}

/// Decodes a file header; a decoded header must re-encode to exactly the same bytes.
/// Returns whether it decoded.
pub fn file_header(data: &[u8]) -> bool {
    let Ok((id, kind)) = format::decode_any_file_header(data) else {
        return false;
    };
    let mut again = Vec::new();
    let version = format::file_header_version(data).unwrap_or(format::FORMAT_VERSION);
    format::encode_file_header_version(&mut again, kind, id, version);
    assert_eq!(&again[..], &data[..again.len()], "header round trip");
    true
}

/// Decodes a merge manifest; a decoded manifest must re-encode to exactly the same bytes.
/// Returns whether it decoded.
pub fn manifest(data: &[u8]) -> bool {
    let Ok(m) = format::decode_manifest(data) else {
        return false;
    };
    // Same offset as a file header's version.
    let version = format::file_header_version(data).unwrap_or(format::FORMAT_VERSION);
    let again = format::encode_manifest_version(&m, version);
    assert_eq!(again, data, "manifest round trip");
    true
}

/// A decoder target's input: a flag byte, then the bytes. With flag bit 0 set, the CRCs are
/// recomputed first (by `fix`), so that the input reaches the checks behind them.
fn with_flag(
    data: &[u8],
    fix: impl FnOnce(&mut Vec<u8>),
    decode: impl FnOnce(&[u8]) -> bool,
) -> bool {
    let Some((&flag, rest)) = data.split_first() else {
        return false;
    };
    let mut bytes = rest.to_vec();
    if flag & 1 == 1 {
        fix(&mut bytes);
    }
    decode(&bytes)
}

/// The `record` target: a flag byte (bit 0: fix the CRC), then a data record for [`record`].
pub fn record_input(data: &[u8]) -> bool {
    with_flag(
        data,
        |b| {
            format::fix_record_crc(b);
        },
        record,
    )
}

/// The `hint_record` target: a flag byte (bit 0: fix the CRC), then a hint record.
pub fn hint_record_input(data: &[u8]) -> bool {
    with_flag(
        data,
        |b| {
            format::fix_hint_crc(b);
        },
        hint_record,
    )
}

/// The `file_header` target: a flag byte (bit 0: fix the CRC), then a file header.
pub fn file_header_input(data: &[u8]) -> bool {
    let fix = |b: &mut Vec<u8>| format::fix_trailing_crc(b, format::FILE_HEADER_LEN);
    with_flag(data, fix, file_header)
}

/// The `manifest` target: a flag byte (bit 0: fix the CRC), then a manifest.
pub fn manifest_input(data: &[u8]) -> bool {
    let fix = |b: &mut Vec<u8>| {
        let len = b.len();
        format::fix_trailing_crc(b, len);
    };
    with_flag(data, fix, manifest)
}

/// The `batch_frame` target: a flag byte (bit 0: fix every record's CRC), then the records of
/// a datafile for [`datafile`].
pub fn datafile_input(dir: &Path, data: &[u8]) {
    with_flag(
        data,
        |b| format::fix_record_crcs(b),
        |b| {
            datafile(dir, b);
            true
        },
    );
}

/// An encoded manifest (a seed for the `manifest` target).
pub fn encoded_manifest(inputs: &[u32], outputs: &[u32]) -> Vec<u8> {
    format::encode_manifest(&format::Manifest {
        inputs: inputs.to_vec(),
        outputs: outputs.to_vec(),
    })
}

/// Offsets and lengths of the records of a datafile's bytes (for seeds), as far as they decode.
pub fn record_spans(file: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut off = format::FILE_HEADER_LEN;
    while off < file.len() {
        match format::decode_record(&file[off..]) {
            Ok(r) => {
                let n = r.header.record_len() as usize;
                out.push((off, n));
                off += n;
            }
            Err(_) => break,
        }
    }
    out
}

/// The `hint_file` fuzz target's input: a flag byte (bit 0: put a valid hint header first;
/// bit 1: recompute every CRC — header, records, footer — so that inputs reach the checks
/// behind them), the datafile length (u32 LE), then the hint bytes; see [`hint_file`].
pub fn hint_file_input(data: &[u8]) {
    if data.len() < 5 {
        return;
    }
    let data_len = u64::from(u32::from_le_bytes([data[1], data[2], data[3], data[4]]));
    let mut bytes = if data[0] & 1 == 1 {
        hint_header(1)
    } else {
        Vec::new()
    };
    bytes.extend_from_slice(&data[5..]);
    if data[0] & 2 == 2 {
        format::fix_hint_file_crcs(&mut bytes);
    }
    hint_file(&bytes, data_len);
}

/// Loads `data` as the hint file of datafile 1 of `data_len` bytes: every record it applies
/// must lie inside the datafile.
/// Loaded whole and, with small reads, split over three threads: both see the same records.
pub fn hint_file(data: &[u8], data_len: u64) {
    use crate::files::hint::{load_bytes, How};
    let seen = |how: How| {
        load_bytes(data, 1, data_len, how, Vec::new, |v, h| {
            assert!(h.offset + u64::from(h.record_len) <= data_len);
            v.push((h.seq, h.offset, h.key.to_vec()));
        })
        .map(|(n, parts)| {
            let all: Vec<_> = parts.into_iter().flatten().collect();
            assert_eq!(all.len() as u64, n);
            all
        })
    };
    let whole = seen(How::default());
    let split = seen(How {
        chunk: 61,
        parts: 3,
        min_part_bytes: 1,
    });
    assert_eq!(whole, split);
}

/// Scans `body` as the records of datafile 1 (a valid header is put in front), in both modes,
/// through the batch framing. Applied records must lie inside the file and batches must be
/// applied whole.
pub fn datafile(dir: &Path, body: &[u8]) {
    let path = layout::data_path(dir, 1);
    let mut bytes = Vec::with_capacity(format::FILE_HEADER_LEN + body.len());
    format::encode_file_header(&mut bytes, FileKind::Data, 1);
    bytes.extend_from_slice(body);
    if std::fs::write(&path, &bytes).is_err() {
        return;
    }
    for mode in [ScanMode::Stop, ScanMode::Skip] {
        let len = bytes.len() as u64;
        let mut last_end = 0u64;
        let res = datafile::scan(&path, 1, mode, None, |h: &HintRecord<'_>| {
            assert!(h.offset >= format::FILE_HEADER_LEN as u64);
            assert!(h.offset + u64::from(h.record_len) <= len);
            last_end = last_end.max(h.offset + u64::from(h.record_len));
        });
        if let Ok(o) = res {
            assert!(o.valid_end <= len);
            if mode == ScanMode::Stop {
                assert!(
                    last_end <= o.valid_end,
                    "a record past the valid end was applied"
                );
            }
        }
    }
}

/// Makes a panic on any thread abort the process, so that libFuzzer sees panics on the
/// engine's own threads too. Idempotent.
pub fn abort_on_panic() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            std::process::abort();
        }));
    });
}

/// A valid header of datafile `id` (so that fuzzed directories get past the header check).
pub fn datafile_header(id: u32) -> Vec<u8> {
    let mut v = Vec::new();
    format::encode_file_header(&mut v, FileKind::Data, id);
    v
}

/// A valid header of the hint file of datafile `id`.
pub fn hint_header(id: u32) -> Vec<u8> {
    let mut v = Vec::new();
    format::encode_file_header(&mut v, FileKind::Hint, id);
    v
}

// ---- open_dir ------------------------------------------------------------------------------

fn open_dir_name(sel: u8) -> String {
    let id = 1 + u32::from(sel >> 4) % 4;
    match sel % 8 {
        0 | 1 => format!("{id:010}.data"),
        2 => format!("{id:010}.vals"),
        3 | 4 => format!("{id:010}.hint"),
        5 => "MERGE".into(),
        6 => format!("{id:010}.data.tmp"),
        _ => format!("{id:010}.hint.tmp"),
    }
}

/// Decodes `data` as a keydir snapshot: input is a flag byte, then the snapshot bytes. With
/// bit 0 of the flag set, every checksum is recomputed first so that the input reaches the
/// checks behind them; bit 1 picks one or two decoding threads. What decodes must be a keydir
/// in which every stored key is found with its entry. Returns whether it decoded.
pub fn keydir_snapshot(data: &[u8]) -> bool {
    use crate::files::snapshot::{decode, fix_checksums, read_header, InMemory};
    let Some((&flag, rest)) = data.split_first() else {
        return false;
    };
    let mut bytes = rest.to_vec();
    if flag & 1 == 1 {
        fix_checksums(&mut bytes);
    }
    let src = InMemory(&bytes);
    let Ok(head) = read_header(&src) else {
        return false;
    };
    let Ok(d) = decode(
        &src,
        head,
        1 + usize::from(flag >> 1 & 1),
        crate::clock::now_ms(),
    ) else {
        return false;
    };
    let mut n = 0;
    d.keydir.for_each(|k, e| {
        assert_eq!(d.keydir.get(k), Some(*e), "a stored key is not found");
        n += 1;
    });
    assert_eq!(n, d.keydir.len());
    true
}

/// Writes `data` as the files of a store directory `dir` (entries of selector byte, u16 LE
/// length, bytes; the selector picks datafile, value file, hint, manifest or temporary file
/// and id 1..=4,
/// its bit 3 puts a valid header first), opens it, reads every key, writes, merges and closes.
/// Open may refuse with an error; nothing may panic.
pub fn open_dir(dir: &Path, data: &[u8]) {
    let mut i = 0;
    let mut files = 0;
    while i + 3 <= data.len() && files < 8 {
        let sel = data[i];
        let len = (usize::from(u16::from_le_bytes([data[i + 1], data[i + 2]])) % 4096)
            .min(data.len() - i - 3);
        i += 3;
        let name = open_dir_name(sel);
        let mut bytes = Vec::new();
        if sel & 0x08 != 0 {
            let id = 1 + u32::from(sel >> 4) % 4;
            if name.contains(".hint") {
                bytes = hint_header(id);
            } else if name.contains(".data") {
                bytes = datafile_header(id);
            } else if name.contains(".vals") {
                // A value file's header block: its values start at 4096.
                format::encode_file_header(&mut bytes, FileKind::Vals, id);
                bytes.resize(format::VALS_ALIGN as usize, 0);
            }
        }
        bytes.extend_from_slice(&data[i..i + len]);
        i += len;
        if std::fs::write(dir.join(name), &bytes).is_err() {
            return;
        }
        files += 1;
    }
    futures::executor::block_on(async {
        let opts = Options::default()
            .auto_merge(false)
            .preallocate_bytes(0)
            .max_file_bytes(8192);
        let skip = data.first().is_some_and(|b| b & 1 == 1);
        if let Ok(db) = Db::open(dir, opts.skip_damaged_records(skip)).await {
            for k in db.keys() {
                let _ = db.get(&k).await;
            }
            let _ = db.put("fuzz", "value").await;
            let _ = db.merge().await;
            let _ = db.close().await;
        }
    });
}

// ---- model ---------------------------------------------------------------------------------

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn model_opts(policy: SyncPolicy, fault: &Arc<FaultInjector>) -> Options {
    Options::default()
        .sync(policy)
        .auto_merge(false)
        .preallocate_bytes(0)
        .max_file_bytes(4096)
        .merge_bytes_per_sec(0)
        .fault_injector(fault.clone())
}

async fn model_contents(db: &Db) -> Model {
    let mut m = Model::new();
    for k in db.keys() {
        let v = db
            .get(&k)
            .await
            .expect("get")
            .expect("a listed key has a value");
        m.insert(k.to_vec(), v.to_vec());
    }
    m
}

/// Runs the operations encoded in `data` in a fresh store in `dir` against a `BTreeMap` model:
/// the first byte picks the sync policy, then 3 bytes per operation (at most 64): put, delete,
/// batch, get, TTL (expired and long), merge, reopen, and a power cut through a power-loss
/// injector (what was not synced is lost, the last unsynced write torn). After a cut the store
/// must hold the model's state after some operation since the last durable point (open,
/// close, a merge with inputs, and every write under `SyncPolicy::Always`).
pub fn model(dir: &Path, data: &[u8]) {
    let Some((&policy, data)) = data.split_first() else {
        return;
    };
    let policy = match policy % 3 {
        0 => SyncPolicy::Never,
        1 => SyncPolicy::Always,
        _ => SyncPolicy::IntervalMs(1),
    };
    futures::executor::block_on(async {
        let fault = FaultInjector::power_loss(dir, 1).expect("injector");
        let mut run = ModelRun {
            dir,
            db: Some(
                Db::open(dir, model_opts(policy, &fault))
                    .await
                    .expect("open"),
            ),
            policy,
            fault,
            model: Model::new(),
            since_durable: vec![Model::new()],
        };
        for op in data.chunks(3).take(64) {
            let (a, b) = (op[0], op.get(1).copied().unwrap_or(0));
            let k = vec![b'k', b % 12];
            let v = vec![a; usize::from(b) % 40];
            match a % 11 {
                5 => {
                    let got = run.db().get(&k).await.expect("get").map(|b| b.to_vec());
                    assert_eq!(got.as_ref(), run.model.get(&k));
                }
                7 => run.merge().await,
                8 => run.reopen().await,
                9 | 10 => run.cut(u64::from(u16::from_le_bytes([b, a]))).await,
                _ => {
                    let k2 = vec![b'k', op.get(2).copied().unwrap_or(0) % 12];
                    run.write(a % 11, b, k, v, k2).await;
                }
            }
        }
        run.db().close().await.expect("close");
    });
}

/// The state of one [`model`] run.
struct ModelRun<'d> {
    dir: &'d Path,
    /// `None` only while the power is cut.
    db: Option<Db>,
    policy: SyncPolicy,
    fault: Arc<FaultInjector>,
    model: Model,
    /// Model states since the last durable point: a power cut may go back to any of them.
    since_durable: Vec<Model>,
}

impl ModelRun<'_> {
    fn db(&self) -> &Db {
        self.db.as_ref().expect("the store is open")
    }

    fn durable_now(&mut self) {
        self.since_durable = vec![self.model.clone()];
    }

    /// A write: put (`kind` 0-2), delete (3), batch of a put of `k` and a delete of `k2` (4),
    /// or a put with a TTL, expired already when `b` is even (6).
    async fn write(&mut self, kind: u8, b: u8, k: Vec<u8>, v: Vec<u8>, k2: Vec<u8>) {
        let db = self.db.as_ref().expect("the store is open");
        let model = &mut self.model;
        match kind {
            3 => {
                db.delete(k.clone()).await.expect("delete");
                model.remove(&k);
            }
            4 => {
                db.write(
                    WriteBatch::new()
                        .put(k.clone(), v.clone())
                        .delete(k2.clone()),
                )
                .await
                .expect("batch");
                model.insert(k, v);
                model.remove(&k2);
            }
            6 => {
                let ttl = if b.is_multiple_of(2) {
                    Duration::ZERO
                } else {
                    Duration::from_secs(3600)
                };
                db.put_with_ttl(k.clone(), v.clone(), ttl)
                    .await
                    .expect("ttl");
                if ttl.is_zero() {
                    model.remove(&k);
                } else {
                    model.insert(k, v);
                }
            }
            _ => {
                db.put(k.clone(), v.clone()).await.expect("put");
                model.insert(k, v);
            }
        }
        if self.policy == SyncPolicy::Always {
            self.durable_now();
        } else {
            self.since_durable.push(self.model.clone());
        }
    }

    async fn merge(&mut self) {
        let r = self.db().merge().await.expect("merge");
        assert_eq!(model_contents(self.db()).await, self.model);
        // A merge with inputs syncs the writer first: what was written so far is durable.
        if !r.inputs.is_empty() {
            self.durable_now();
        }
    }

    async fn reopen(&mut self) {
        self.db().close().await.expect("close");
        drop(self.db.take());
        self.durable_now();
        let opts = model_opts(self.policy, &self.fault);
        self.db = Some(Db::open(self.dir, opts).await.expect("reopen"));
        assert_eq!(model_contents(self.db()).await, self.model);
    }

    /// The process dies after `at % 8` more IO operations, then the power is cut.
    async fn cut(&mut self, at: u64) {
        self.fault.crash_after(at % 8);
        // Wait for the engine to stop (a dropped handle closes in the background, and nothing
        // may reach the disk after the cut).
        if let Some(db) = self.db.take() {
            let _ = db.close().await;
        }
        self.fault.cut_power().expect("cut");
        self.fault.restart();
        let opts = model_opts(self.policy, &self.fault);
        self.db = Some(
            Db::open(self.dir, opts)
                .await
                .expect("open after a power cut"),
        );
        let got = model_contents(self.db()).await;
        assert!(
            self.since_durable.contains(&got),
            "recovered a state that no operation since the last durable point produced"
        );
        self.model = got;
        self.durable_now();
    }
}
