#![allow(clippy::indexing_slicing)]
use super::*;

#[test]
fn layout_constants_match_the_drawing() {
    assert_eq!(FILE_HEADER_LEN, 20);
    assert_eq!(RECORD_HEADER_LEN, 29);
    assert_eq!(HINT_RECORD_HEADER_LEN, 37);
    assert_eq!(HINT_FOOTER_LEN, 28);
}

#[test]
fn file_header_round_trip_and_rejections() {
    let mut b = Vec::new();
    encode_file_header(&mut b, FileKind::Data, 42);
    assert_eq!(decode_file_header(&b, FileKind::Data), Ok(42));
    assert_eq!(
        decode_file_header(&b, FileKind::Hint),
        Err(DecodeError::BadMagic)
    );
    assert!(matches!(
        decode_file_header(&b[..10], FileKind::Data),
        Err(DecodeError::Truncated { .. })
    ));
    let mut flipped = b.clone();
    flipped[13] ^= 1;
    assert_eq!(
        decode_file_header(&flipped, FileKind::Data),
        Err(DecodeError::BadCrc)
    );
    // A header of a future version is reported as such, not as corruption.
    let mut v3 = b.clone();
    v3[FH_VERSION_OFFSET..FH_FILE_ID_OFFSET].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(
        decode_file_header(&v3, FileKind::Data),
        Err(DecodeError::UnsupportedVersion(3))
    );
}

#[test]
fn record_round_trip() {
    let mut b = Vec::new();
    encode_record(&mut b, 7, 1234, FLAG_BATCH, b"key", b"value");
    encode_record(&mut b, 8, 0, FLAG_TOMBSTONE, b"k2", b"");
    let r = decode_record(&b).expect("first");
    assert_eq!(r.header.seq, 7);
    assert_eq!(r.header.expiry_ms, 1234);
    assert_eq!(r.header.flags, FLAG_BATCH);
    assert_eq!(r.key, b"key");
    assert_eq!(r.value, b"value");
    let n = r.header.record_len() as usize;
    assert_eq!(n, record_len(3, 5));
    let r2 = decode_record(&b[n..]).expect("second");
    assert!(r2.header.is_tombstone());
    assert_eq!(r2.key, b"k2");
    assert!(r2.value.is_empty());
}

#[test]
fn all_zero_record_fails() {
    let zeros = vec![0u8; 64];
    assert!(decode_record(&zeros).is_err());
    // Even with a plausible key length the CRC must reject zeros.
    let mut z = vec![0u8; 64];
    z[REC_KEY_LEN_OFFSET] = 1;
    assert_eq!(decode_record(&z).map(|_| ()), Err(DecodeError::BadCrc));
    assert!(decode_hint(&zeros).is_err());
    assert!(decode_hint_footer(&zeros).is_err());
    assert!(decode_file_header(&zeros, FileKind::Data).is_err());
}

#[test]
fn every_single_bit_flip_is_detected() {
    let mut b = Vec::new();
    encode_record(&mut b, 99, 0, 0, b"abc", b"hello world");
    for i in 0..b.len() * 8 {
        let mut c = b.clone();
        c[i / 8] ^= 1 << (i % 8);
        assert!(decode_record(&c).is_err(), "flip of bit {i} went unnoticed");
    }
}

#[test]
fn huge_lengths_are_rejected_without_allocating() {
    let mut b = Vec::new();
    encode_record(&mut b, 1, 0, 0, b"k", b"v");
    b[REC_VALUE_LEN_OFFSET..REC_VALUE_LEN_OFFSET + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        decode_record(&b).map(|_| ()),
        Err(DecodeError::Invalid("value length over the format limit"))
    );
    b[REC_KEY_LEN_OFFSET..REC_KEY_LEN_OFFSET + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(decode_record(&b).is_err());
}

#[test]
fn truncated_record_is_reported_as_truncated() {
    let mut b = Vec::new();
    encode_record(&mut b, 1, 0, 0, b"key", b"value");
    for cut in 0..b.len() {
        assert!(
            matches!(decode_record(&b[..cut]), Err(DecodeError::Truncated { .. })),
            "cut at {cut}"
        );
    }
}

#[test]
fn bad_flags_are_rejected() {
    for flags in [0x08u8, FLAG_BATCH_END] {
        let mut b = Vec::new();
        encode_record(&mut b, 1, 0, 0, b"k", b"");
        b[REC_FLAGS_OFFSET] = flags;
        assert!(matches!(
            decode_record_header(&b),
            Err(DecodeError::Invalid(_))
        ));
    }
}

#[test]
fn hint_round_trip_and_footer() {
    let mut b = Vec::new();
    let h = HintRecord {
        seq: 5,
        expiry_ms: 9,
        offset: 20,
        record_len: record_len(3, 10) as u32,
        tombstone: false,
        key: b"abc",
        apart: None,
    };
    encode_hint(&mut b, &h);
    let (d, n) = decode_hint(&b).expect("hint");
    assert_eq!(d, h);
    assert_eq!(n, b.len());
    let f = HintFooter {
        record_count: 1,
        data_len: 77,
    };
    encode_hint_footer(&mut b, &f);
    assert_eq!(decode_hint_footer(&b[n..]), Ok(f));
    let mut bad = b.clone();
    bad[2] ^= 0x10;
    assert!(decode_hint(&bad).is_err());
}

#[test]
fn merged_datafile_header_is_a_datafile() {
    let mut b = Vec::new();
    encode_file_header(&mut b, FileKind::Merged, 9);
    assert_eq!(decode_any_file_header(&b), Ok((9, FileKind::Merged)));
    assert_eq!(decode_file_header(&b, FileKind::Data), Ok(9));
    assert_eq!(
        decode_file_header(&b, FileKind::Hint),
        Err(DecodeError::BadMagic)
    );
}

#[test]
fn manifest_round_trip_and_damage() {
    let m = Manifest {
        inputs: vec![1, 2, 5],
        outputs: vec![9],
    };
    let b = encode_manifest(&m);
    assert_eq!(decode_manifest(&b), Ok(m.clone()));
    let empty = Manifest::default();
    assert_eq!(decode_manifest(&encode_manifest(&empty)), Ok(empty));
    for cut in 0..b.len() {
        assert!(decode_manifest(&b[..cut]).is_err(), "cut {cut}");
    }
    for i in 0..b.len() * 8 {
        let mut c = b.clone();
        c[i / 8] ^= 1 << (i % 8);
        assert!(decode_manifest(&c).is_err(), "flip {i}");
    }
    // A count that points past the end is an error, not an allocation.
    let mut huge = b.clone();
    huge[MAN_INPUTS_OFFSET..MAN_INPUTS_OFFSET + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(decode_manifest(&huge).is_err());
}

#[test]
fn hint_with_impossible_length_is_rejected() {
    let mut b = Vec::new();
    encode_hint(
        &mut b,
        &HintRecord {
            seq: 1,
            expiry_ms: 0,
            offset: 20,
            record_len: 3, // shorter than a record header
            tombstone: false,
            key: b"abc",
            apart: None,
        },
    );
    assert!(matches!(decode_hint(&b), Err(DecodeError::Invalid(_))));
}

#[test]
fn snapshot_entries_round_trip_and_refuse_truncation() {
    use super::snapshot::*;
    let long = [b'L'; 128];
    let max_short = [b's'; 127];
    let cases = [
        (&b"k"[..], 0u64),
        (&b"sixteen-byte-key"[..], 0),
        (&b"with-expiry"[..], 1_700_000_000_000),
        (&max_short[..], 0),
        (&long[..], 42),
    ];
    for (key, expiry_ms) in cases {
        let e = SnapshotEntry {
            key,
            seq: 7,
            expiry_ms,
            file_id: 3,
            offset: 20,
            len: 29 + key.len() as u32,
            crc: 0,
        };
        let mut out = Vec::new();
        encode_snapshot_entry(&mut out, &e);
        assert_eq!(out.len(), snapshot_entry_len(&e));
        assert_eq!(decode_snapshot_entry(&out).expect("decode"), (e, out.len()));
        for cut in 0..out.len() {
            assert!(decode_snapshot_entry(&out[..cut]).is_err(), "cut at {cut}");
        }
    }
    // A 16-byte key costs 37 bytes; an expiry 8 more; a long key 4 more.
    let e = |key: &'static [u8], expiry_ms| SnapshotEntry {
        key,
        seq: 1,
        expiry_ms,
        file_id: 1,
        offset: 20,
        len: 60,
        crc: 0,
    };
    assert_eq!(snapshot_entry_len(&e(b"sixteen-byte-key", 0)), 37);
    assert_eq!(snapshot_entry_len(&e(b"sixteen-byte-key", 5)), 45);
    // An entry of a value kept apart carries its CRC: 4 bytes more, and they round-trip.
    let apart = SnapshotEntry {
        file_id: 1 | (1 << 31),
        offset: 4096,
        crc: 0xDEAD_BEEF,
        ..e(b"sixteen-byte-key", 0)
    };
    assert_eq!(snapshot_entry_len(&apart), 41);
    let mut out = Vec::new();
    encode_snapshot_entry(&mut out, &apart);
    assert_eq!(decode_snapshot_entry(&out).expect("decode"), (apart, 41));
    assert!(decode_snapshot_entry(&out[..40]).is_err());
    // A long key written as if short (length field 0 then a length under 128) is refused.
    let mut bad = vec![0u8];
    bad.extend_from_slice(&5u32.to_le_bytes());
    bad.extend_from_slice(&[0u8; 40]);
    assert!(decode_snapshot_entry(&bad).is_err());
}

#[test]
fn snapshot_header_round_trip_and_damage() {
    use super::snapshot::*;
    let h = SnapshotHeader {
        fixed: SnapshotFixed {
            shards: 2,
            seed: 9,
            probe: 10,
            next_seq: 11,
            files: 1,
        },
        files: vec![Listed {
            id: 1,
            len: 100,
            min_seq: 1,
            ctime_ns: 5,
        }],
        index: vec![
            ShardIndex {
                offset: 200,
                len: 0,
                entries: 0,
                crc: 1,
            },
            ShardIndex {
                offset: 200,
                len: 37,
                entries: 1,
                crc: 2,
            },
        ],
    };
    let b = encode_snapshot_header(&h);
    assert_eq!(b.len(), snapshot_header_len(1, 2));
    assert_eq!(decode_snapshot_header(&b).expect("decode"), h);
    for i in 0..b.len() {
        let mut bad = b.clone();
        bad[i] ^= 0x10;
        assert!(decode_snapshot_header(&bad).is_err(), "flip at {i}");
    }
    let zero = vec![0u8; b.len()];
    assert!(decode_snapshot_header(&zero).is_err());
    let mut v1 = b.clone();
    v1[8..12].copy_from_slice(&1u32.to_le_bytes());
    assert!(matches!(
        decode_snapshot_fixed(&v1),
        Err(DecodeError::UnsupportedVersion(1))
    ));
}

#[test]
fn a_record_head_plus_its_value_is_the_whole_record() {
    for (key, value) in [
        (&b"k"[..], &b""[..]),
        (b"key", b"value"),
        (b"big", &[7u8; 70_000][..]),
    ] {
        for flags in [0, FLAG_BATCH] {
            let mut whole = Vec::new();
            encode_record(&mut whole, 42, 1234, flags, key, value);
            let mut split = Vec::new();
            encode_record_head(&mut split, 42, 1234, flags, key, value);
            split.extend_from_slice(value);
            assert_eq!(split, whole);
            let rec = decode_record(&split).expect("decodes");
            assert_eq!((rec.key, rec.value), (key, value));
        }
    }
}

#[test]
fn a_record_with_its_value_apart_round_trips_and_checks_its_fields() {
    let value = vec![7u8; 4096];
    let at = Apart {
        offset: 8192,
        len: 4096,
        crc: value_crc(&value),
    };
    let mut b = Vec::new();
    encode_record_apart(&mut b, 9, 0, FLAG_BATCH, b"key", at);
    assert_eq!(b.len(), record_len(3, VALUE_REF_LEN));
    let r = decode_record(&b).expect("decodes");
    assert_eq!(r.apart, Some(at));
    assert_eq!(
        (r.key, r.value, r.header.value_len),
        (&b"key"[..], &[][..], 4096)
    );
    assert_eq!(r.header.record_len(), b.len() as u64);
    // The CRC covers the reference: a flipped offset byte fails it.
    let mut bad = b.clone();
    let n = bad.len();
    bad[n - 12] ^= 1;
    assert_eq!(decode_record(&bad).err(), Some(DecodeError::BadCrc));
    // An unaligned reference is refused even with a valid CRC.
    let mut odd = Vec::new();
    encode_record_apart(&mut odd, 9, 0, 0, b"key", at);
    odd[RECORD_HEADER_LEN + 3] = 1; // offset 8193
    fix_crc(&mut odd);
    assert!(matches!(decode_record(&odd), Err(DecodeError::Invalid(_))));
    // A tombstone cannot keep a value apart.
    let mut t = b.clone();
    t[RECORD_HEADER_LEN - 1] |= FLAG_TOMBSTONE;
    assert!(matches!(
        decode_record_header(&t),
        Err(DecodeError::Invalid(_))
    ));
}

/// Recomputes a record's CRC after a test changed its bytes.
fn fix_crc(rec: &mut [u8]) {
    let c = crc32fast::hash(&rec[4..]) ^ CRC_MASK;
    rec[..4].copy_from_slice(&c.to_le_bytes());
}

#[test]
fn which_values_go_apart() {
    for (len, apart) in [
        (0, false),
        (100, false),
        (3640, false),
        (3641, true),
        (4096, true),
        (4097, false),
        (7282, true),
        (8192, true),
        (33_000, true),
        (VALUE_LEN_LIMIT as usize + 1, false),
    ] {
        assert_eq!(goes_apart(len), apart, "{len}");
    }
}

#[test]
fn a_hint_of_a_value_apart_round_trips_and_is_checked() {
    let h = HintRecord {
        seq: 5,
        expiry_ms: 0,
        offset: 20,
        record_len: record_len(3, VALUE_REF_LEN) as u32,
        tombstone: false,
        key: b"abc",
        apart: Some(Apart {
            offset: 4096,
            len: 4000,
            crc: 77,
        }),
    };
    let mut b = Vec::new();
    encode_hint(&mut b, &h);
    assert_eq!(b.len(), HINT_RECORD_HEADER_LEN + 3 + HINT_APART_LEN);
    assert_eq!(decode_hint(&b).expect("hint"), (h, b.len()));
    for cut in 0..b.len() {
        assert!(decode_hint(&b[..cut]).is_err(), "cut at {cut}");
    }
    // Its record length must be that of a record with a reference.
    let mut wrong = Vec::new();
    encode_hint(
        &mut wrong,
        &HintRecord {
            record_len: record_len(3, 4000) as u32,
            ..h
        },
    );
    assert!(matches!(decode_hint(&wrong), Err(DecodeError::Invalid(_))));
}

#[test]
fn version_1_files_are_read_and_later_ones_refused() {
    let mut b = Vec::new();
    encode_file_header(&mut b, FileKind::Vals, 4);
    assert_eq!(decode_any_file_header(&b), Ok((4, FileKind::Vals)));
    for (version, ok) in [(0u32, false), (1, true), (2, true), (3, false)] {
        let mut h = b.clone();
        h[8..12].copy_from_slice(&version.to_le_bytes());
        let c = crc32fast::hash(&h[..16]) ^ CRC_MASK;
        h[16..20].copy_from_slice(&c.to_le_bytes());
        assert_eq!(decode_any_file_header(&h).is_ok(), ok, "version {version}");
    }
}
