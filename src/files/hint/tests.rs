#![allow(clippy::indexing_slicing)]
use super::*;
use crate::test_rng::TestRng;

#[test]
fn finished_hint_loads() {
    let mut b = HintBuilder::default();
    for i in 0..100u64 {
        let key = format!("key{i:04}");
        let tombstone = i % 7 == 0;
        let value_len = if tombstone { 0 } else { 10 };
        b.push(&HintRecord {
            seq: i + 1,
            expiry_ms: 0,
            offset: 20 + i * 50,
            record_len: format::record_len(key.len(), value_len) as u32,
            tombstone,
            key: key.as_bytes(),
            apart: None,
        });
    }
    let moved = b.finish(9, 5020);
    let (loaded, parts) =
        load_bytes(&moved, 9, 5020, How::default(), || 0, |n, _| *n += 1).expect("valid hint file");
    assert_eq!((loaded, parts), (100, vec![100]));
}

/// What a test looks at in a loaded record: key, seq, offset, tombstone.
type Seen = (Vec<u8>, u64, u64, bool);

/// A hint file of `n` records with keys of 1..=300 bytes, and the records.
fn sample(n: u64) -> (Vec<u8>, Vec<Seen>) {
    let mut b = HintBuilder::default();
    let mut recs = Vec::new();
    for i in 0..n {
        let key = vec![b'a' + (i % 26) as u8; 1 + (i as usize * 37) % 300];
        let tombstone = i % 5 == 0;
        let value_len = if tombstone { 0 } else { 10 };
        let h = HintRecord {
            seq: i + 1,
            expiry_ms: i * 3,
            offset: 20 + i * 400,
            record_len: format::record_len(key.len(), value_len) as u32,
            tombstone,
            key: &key,
            apart: None,
        };
        b.push(&h);
        recs.push((key.clone(), h.seq, h.offset, tombstone));
    }
    (b.finish(3, 20 + n * 400), recs)
}

fn seen(v: &mut Vec<Seen>, h: &HintRecord<'_>) {
    v.push((h.key.to_vec(), h.seq, h.offset, h.tombstone));
}

fn how(chunk: usize, parts: usize) -> How {
    How {
        chunk,
        parts,
        min_part_bytes: 1,
    }
}

/// Loads `bytes`; returns the records in file order and how many parts were used.
fn collect(bytes: &[u8], how: How) -> Result<(Vec<Seen>, usize), LoadError> {
    let data_len = 20 + 80 * 400;
    let (n, parts) = load_bytes(bytes, 3, data_len, how, Vec::new, seen)?;
    let used = parts.len();
    let got: Vec<Seen> = parts.into_iter().flatten().collect();
    assert_eq!(n as usize, got.len());
    Ok((got, used))
}

#[test]
fn chunked_load_sees_every_record_whatever_the_chunk() {
    let (file, recs) = sample(80);
    for chunk in [1, 2, 7, 52, 53, 54, 300, 301, 4096, 1 << 20] {
        for parts in [1, 2, 3, 7, 80, 500] {
            let (got, used) = collect(&file, how(chunk, parts)).expect("loads");
            assert_eq!(got, recs, "chunk {chunk}, parts {parts}");
            // Ranges split at byte offsets: a long record can swallow a split point.
            let expect = if parts <= 7 { parts..=parts } else { 7..=80 };
            assert!(
                expect.contains(&used),
                "chunk {chunk}, parts {parts}: {used}"
            );
        }
    }
    // A small hint is not split unless asked to.
    let (_, used) = collect(
        &file,
        How {
            parts: 4,
            ..How::default()
        },
    )
    .expect("loads");
    assert_eq!(used, 1);
    // The file-backed loader reads the same records.
    let dir = std::env::temp_dir().join(format!("ringcask-hint-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("h");
    std::fs::write(&path, &file).expect("write");
    let (n, parts) = load(&path, 3, 20 + 80 * 400, 2, None, Vec::new, seen).expect("loads");
    assert_eq!(n, 80);
    assert_eq!(parts.concat(), recs);
    assert!(matches!(
        load(&dir.join("missing"), 3, 0, 1, None, || (), |_, _| {}),
        Err(LoadError::Unusable(_))
    ));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn chunked_load_rejects_damage_and_applies_nothing() {
    let (file, _) = sample(80);
    let mut rng = TestRng::new(0x2545_f491_4f6c_dd1d);
    for round in 0..300 {
        let r = rng.next();
        let chunk = [1, 5, 53, 200, 1 << 20][round % 5];
        let mut bad = file.clone();
        if round % 3 == 0 {
            bad.truncate((r as usize) % file.len());
        } else {
            let at = (r as usize) % file.len();
            bad[at] ^= 1 << (r % 8);
        }
        let applied = std::sync::atomic::AtomicU64::new(0);
        let res = load_bytes(
            &bad,
            3,
            20 + 80 * 400,
            how(chunk, 1 + round % 3),
            || (),
            |_, _| {
                applied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            },
        );
        assert!(
            matches!(res, Err(LoadError::Unusable(_))),
            "round {round}: damage not seen"
        );
        assert_eq!(
            applied.into_inner(),
            0,
            "round {round}: applied records of a bad file"
        );
    }
}
