use super::*;
use crate::test_rng::TestRng;
use std::collections::HashMap;

fn hash(k: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    // Fixed seed: failures reproduce.
    foldhash::fast::FixedState::with_seed(7).hash_one(k)
}

fn e(seq: u64) -> Entry {
    Entry {
        seq,
        expiry_ms: seq.wrapping_mul(3),
        file_id: (seq % 1000) as u32,
        offset: (seq * 7) as u32,
        len: 40 + (seq % 50) as u32,
        crc: seq as u32 ^ 0x5A5A,
    }
}

fn put(t: &mut Table, k: &[u8], en: Entry) {
    match t.find(k, hash(k)) {
        Some(i) => t.set_entry(i, &en),
        None => t.insert_new(k, hash(k), &en, &hash),
    }
}

fn del(t: &mut Table, k: &[u8]) -> Option<Entry> {
    t.find(k, hash(k)).map(|i| t.remove_at(i))
}

fn check(t: &Table, model: &HashMap<Vec<u8>, Entry>) {
    assert_eq!(t.len(), model.len());
    for (k, en) in model {
        let i = t.find(k, hash(k)).unwrap_or_else(|| panic!("lost {k:?}"));
        assert_eq!(t.entry(i), *en);
    }
    let mut n = 0;
    t.for_each(|k, en| {
        assert_eq!(model.get(k), Some(en));
        n += 1;
    });
    assert_eq!(n, model.len());
}

/// Random puts, overwrites, deletes and retains of short and long keys against a model,
/// through many rebuilds.
#[test]
fn behaves_like_a_map() {
    let mut t = Table::default();
    let mut model: HashMap<Vec<u8>, Entry> = HashMap::new();
    let mut rng = TestRng::new(0x9E37_79B9_7F4A_7C15);
    let mut next = || rng.next();
    for step in 0..60_000u64 {
        let x = next();
        let id = x % 3000;
        // Lengths 1..=40: inline, exactly 16, and arena keys.
        let len = 1 + (id % 40) as usize;
        let mut k = format!("{id:0>len$}").into_bytes();
        k.truncate(len.max(id.to_string().len()));
        match x >> 60 {
            0..=9 => {
                put(&mut t, &k, e(step));
                model.insert(k, e(step));
            }
            10..=14 => assert_eq!(del(&mut t, &k), model.remove(&k)),
            _ => {
                if step % 97 == 0 {
                    let cut = next() % 3000;
                    t.retain(|_, en| en.seq % 3000 != cut);
                    model.retain(|_, en| en.seq % 3000 != cut);
                }
            }
        }
        if step % 5000 == 0 {
            check(&t, &model);
        }
    }
    check(&t, &model);
    // Delete everything: the table is empty and still consistent.
    let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
    for k in keys {
        assert_eq!(del(&mut t, &k), model.remove(&k));
    }
    check(&t, &model);
    put(&mut t, b"again", e(1));
    assert_eq!(
        t.find(b"again", hash(b"again")).map(|i| t.entry(i)),
        Some(e(1))
    );
}

#[test]
fn every_key_length_round_trips() {
    let mut t = Table::with_capacity(10);
    let mut model = HashMap::new();
    for len in 1..=300usize {
        let k: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        put(&mut t, &k, e(len as u64));
        model.insert(k, e(len as u64));
    }
    check(&t, &model);
    // Freed arena indices are reused.
    let long: Vec<Vec<u8>> = model.keys().filter(|k| k.len() > 16).cloned().collect();
    for k in &long {
        del(&mut t, k);
        model.remove(k);
    }
    let before = t.long.len();
    for k in &long {
        put(&mut t, k, e(1));
        model.insert(k.clone(), e(1));
    }
    assert_eq!(t.long.len(), before);
    check(&t, &model);
}

#[test]
fn stays_dense() {
    let mut t = Table::default();
    for i in 0..100_000u64 {
        let k = format!("key{i:013}");
        put(&mut t, k.as_bytes(), e(i));
    }
    let per_key = t.heap_bytes() as f64 / t.len() as f64;
    assert!(per_key < 80.0, "{per_key:.1} bytes per key");
    let sized = Table::with_capacity(100_000);
    let per_key = sized.heap_bytes() as f64 / 100_000.0;
    // 49-byte slots (4 of them a value-apart CRC, since format v2) at 80 % load and a
    // control byte: 62.5.
    assert!(per_key < 64.0, "presized: {per_key:.1} bytes per key");
}

#[test]
fn removal_before_an_empty_slot_leaves_no_tombstone() {
    let mut t = Table::with_capacity(100);
    put(&mut t, b"a", e(1));
    del(&mut t, b"a");
    assert_eq!((t.live, t.deleted), (0, 0));
    // Churn on one key never fills the table with tombstones.
    for i in 0..10_000u64 {
        put(&mut t, b"k", e(i));
        del(&mut t, b"k");
    }
    assert!(t.deleted <= 1, "{} tombstones", t.deleted);
}
