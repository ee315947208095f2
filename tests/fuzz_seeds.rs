//! Writes the seed corpora of the fuzz targets from a real store, into `fuzz/corpus/<target>/`.
//! Built only with the `fuzzing` feature; `.ci/run` runs it before the fuzz smoke run:
//!
//! ```text
//! cargo test --features fuzzing --test fuzz_seeds
//! ```
#![cfg(feature = "fuzzing")]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::run;
use ringcask::{fuzzing, Db, Options, SyncPolicy, WriteBatch};

fn corpus(target: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&p).expect("corpus dir");
    p
}

fn seed(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(corpus(target).join(format!("seed-{name}")), bytes).expect("write seed");
}

/// Seeds of a decoder target whose input starts with a flag byte (bit 0: fix the CRCs): the
/// bytes as they are, and with a CRC to fix (zeroed, so that only the fix makes them decode).
/// `decode` is the target's entry point: both seeds must decode.
fn flagged_seeds(
    target: &str,
    name: &str,
    bytes: &[u8],
    crc_at: std::ops::Range<usize>,
    decode: &dyn Fn(&[u8]) -> bool,
) {
    let mut plain = vec![0u8];
    plain.extend_from_slice(bytes);
    assert!(decode(&plain), "{target} {name}: the seed decodes");
    seed(target, &format!("{name}-plain"), &plain);
    let mut fixed = vec![1u8];
    fixed.extend_from_slice(bytes);
    fixed[crc_at.start + 1..crc_at.end + 1].fill(0);
    let mut unfixed = fixed.clone();
    unfixed[0] = 0;
    assert!(!decode(&unfixed), "{target} {name}: a zeroed CRC fails");
    assert!(decode(&fixed), "{target} {name}: the fixed CRC decodes");
    seed(target, &format!("{name}-fix"), &fixed);
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

#[test]
fn write_seed_corpora_from_a_real_store() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let opts = Options::default()
        .sync(SyncPolicy::Never)
        .max_file_bytes(4096)
        .preallocate_bytes(0)
        .auto_merge(false);
    run(async {
        let db = Db::open(dir, opts.clone()).await.expect("open");
        for i in 0..40u32 {
            db.put(format!("k{}", i % 12), vec![i as u8; (i % 50) as usize])
                .await
                .expect("put");
        }
        db.delete("k3").await.expect("delete");
        db.write(WriteBatch::new().put("b1", "x").put("b2", "y").delete("k4"))
            .await
            .expect("batch");
        db.put_with_ttl("t", "v", Duration::from_secs(3600))
            .await
            .expect("ttl");
        db.close().await.expect("close");
        // A merge output too (its own header magic).
        let db = Db::open(dir, opts.clone()).await.expect("reopen");
        db.merge().await.expect("merge");
        db.put("after", "merge").await.expect("put");
        db.close().await.expect("close");
    });
    // keydir_snapshot: the snapshot the last close saved, as is and with checksums to fix.
    let snap = std::fs::read(dir.join("KEYDIR")).expect("the close saved a keydir snapshot");
    for flag in [0u8, 1, 2] {
        let mut s = vec![flag];
        s.extend_from_slice(&snap);
        assert!(fuzzing::keydir_snapshot(&s), "a real snapshot decodes");
        seed("keydir_snapshot", &format!("close{flag}"), &s);
    }
    let datafiles = files(dir, "data");
    let hints = files(dir, "hint");
    assert!(datafiles.len() >= 2 && !hints.is_empty());
    let mut n = 0;
    for (fi, f) in datafiles.iter().enumerate() {
        let bytes = std::fs::read(f).expect("read");
        assert!(fuzzing::file_header(&bytes[..20]));
        flagged_seeds(
            "file_header",
            &format!("data{fi}"),
            &bytes[..20],
            16..20,
            &fuzzing::file_header_input,
        );
        let spans = fuzzing::record_spans(&bytes);
        assert!(!spans.is_empty());
        for (ri, (off, len)) in spans.iter().take(6).enumerate() {
            assert!(fuzzing::record(&bytes[*off..off + len]));
            flagged_seeds(
                "record",
                &format!("f{fi}r{ri}"),
                &bytes[*off..off + len],
                0..4,
                &fuzzing::record_input,
            );
        }
        let mut frame = vec![0u8];
        frame.extend_from_slice(&bytes[20..]);
        seed("batch_frame", &format!("f{fi}-plain"), &frame);
        frame[0] = 1;
        frame[1..5].fill(0);
        seed("batch_frame", &format!("f{fi}-fix"), &frame);
        n += 1;
    }
    for (hi, h) in hints.iter().enumerate() {
        let bytes = std::fs::read(h).expect("read");
        assert!(fuzzing::file_header(&bytes[..20]));
        flagged_seeds(
            "file_header",
            &format!("hint{hi}"),
            &bytes[..20],
            16..20,
            &fuzzing::file_header_input,
        );
        assert!(fuzzing::hint_record(&bytes[20..]));
        flagged_seeds(
            "hint_record",
            &format!("h{hi}"),
            &bytes[20..bytes.len().min(20 + 64)],
            0..4,
            &fuzzing::hint_record_input,
        );
        let data_len = std::fs::metadata(h.with_extension("data"))
            .map(|m| m.len())
            .unwrap_or(0);
        let mut hf = vec![0u8];
        hf.extend_from_slice(&(data_len as u32).to_le_bytes());
        hf.extend_from_slice(&bytes);
        seed("hint_file", &format!("h{hi}"), &hf);
        // The same with its header, first record and footer CRCs zeroed, and the flag that
        // recomputes them.
        hf[0] = 2;
        let n = hf.len();
        for r in [5 + 16..5 + 20, 5 + 20..5 + 24, n - 4..n] {
            hf[r].fill(0);
        }
        fuzzing::hint_file_input(&hf);
        seed("hint_file", &format!("h{hi}-fix"), &hf);
    }
    for (i, (inputs, outputs)) in [
        (vec![1, 2], vec![7]),
        (vec![3], vec![]),
        (vec![], vec![9, 10]),
    ]
    .iter()
    .enumerate()
    {
        let m = fuzzing::encoded_manifest(inputs, outputs);
        assert!(fuzzing::manifest(&m));
        let n = m.len();
        flagged_seeds(
            "manifest",
            &format!("m{i}"),
            &m,
            n - 4..n,
            &fuzzing::manifest_input,
        );
    }
    // open_dir: the store's files as (selector, u16 length, bytes) entries.
    let mut dirseed = Vec::new();
    for (i, f) in datafiles.iter().chain(hints.iter()).take(8).enumerate() {
        let bytes = std::fs::read(f).expect("read");
        let bytes = &bytes[..bytes.len().min(4095)];
        let id = (i % 4) as u8;
        let kind = if f.extension().is_some_and(|e| e == "hint") {
            3
        } else {
            0
        };
        dirseed.push((id << 4) | kind);
        dirseed.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        dirseed.extend_from_slice(bytes);
    }
    seed("open_dir", "store", &dirseed);
    // model: a policy byte (Never, Always, IntervalMs), then operations of 3 bytes each.
    let ops1 = [0, 1, 0, 1, 2, 0, 5, 1, 0, 3, 1, 0, 8, 0, 0, 5, 1, 0];
    let ops2 = [
        4, 3, 5, 0, 7, 0, 9, 200, 1, 5, 7, 0, 6, 2, 0, 6, 3, 0, 10, 9, 9,
    ];
    for (policy, name) in [(0u8, "never"), (1, "always"), (2, "interval")] {
        for (i, ops) in [&ops1[..], &ops2[..]].into_iter().enumerate() {
            let mut input = vec![policy];
            input.extend_from_slice(ops);
            seed("model", &format!("{name}-ops{}", i + 1), &input);
        }
    }
    assert!(n >= 2);
}

/// Seeds of format v2's values kept apart, from a store written by the direct-IO writer:
/// records with the `APART` flag, hint records carrying a value's location, a value file's
/// header.
#[test]
fn write_seeds_of_values_kept_apart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    common::needs_direct(dir);
    let opts = Options::default()
        .io_mode(ringcask::IoMode::Direct)
        .sync(SyncPolicy::Always)
        .max_file_bytes(32 * 1024)
        .auto_merge(false);
    run(async {
        let db = Db::open(dir, opts).await.expect("open");
        for i in 0..12u32 {
            db.put(format!("k{i}"), vec![i as u8; 4096])
                .await
                .expect("put");
        }
        db.write(WriteBatch::new().put("b1", vec![1u8; 4000]).put("b2", "y"))
            .await
            .expect("batch");
        db.close().await.expect("close");
    });
    let mut apart = 0;
    for (fi, f) in files(dir, "data").iter().enumerate() {
        let bytes = std::fs::read(f).expect("read");
        for (ri, (off, len)) in fuzzing::record_spans(&bytes).iter().enumerate() {
            // The flags byte: bit 3 is APART.
            if bytes[off + 28] & 8 == 0 {
                continue;
            }
            apart += 1;
            flagged_seeds(
                "record",
                &format!("apart-f{fi}r{ri}"),
                &bytes[*off..off + len],
                0..4,
                &fuzzing::record_input,
            );
        }
    }
    assert!(apart >= 4, "records keep their values apart: {apart}");
    for (hi, h) in files(dir, "hint").iter().enumerate() {
        let bytes = std::fs::read(h).expect("read");
        flagged_seeds(
            "hint_record",
            &format!("apart-h{hi}"),
            &bytes[20..bytes.len().min(20 + 80)],
            0..4,
            &fuzzing::hint_record_input,
        );
    }
    let vals = files(dir, "vals");
    assert!(!vals.is_empty());
    for (vi, v) in vals.iter().enumerate() {
        let bytes = std::fs::read(v).expect("read");
        flagged_seeds(
            "file_header",
            &format!("vals{vi}"),
            &bytes[..20],
            16..20,
            &fuzzing::file_header_input,
        );
    }
}
