//! One shard of the keydir: an open-addressing hash table of packed 49-byte slots.
//!
//! Why not a general-purpose map: `DashMap<SmallVec<[u8; 16]>, Entry>` spends 57 bytes per
//! bucket (24-byte key, 32-byte entry, 1 control byte) and, like every power-of-two table, runs
//! between 44 % and 87.5 % full: at 1M keys it held 2M buckets, 114 MB. Here a slot packs the
//! entry into 32 bytes (the last 4, a kept-apart value's CRC, since format v2) and keys of up to 16 bytes inline (longer ones in a side arena), and the
//! capacity is any number, so the table stays 60–85 % full: ~50 bytes per slot, ~68 bytes per
//! key on average (~63 before the CRC).
//!
//! Layout: `ctrl[i]` is [`EMPTY`], [`DELETED`] or `0x80 | 7 fingerprint bits`; `slots[i]` is
//! `key_len or LONG (1) | key inline or arena index (16) | seq (8) | expiry_ms (8) | file_id (4)
//! | offset (4) | len (4) | value crc (4)`. Linear probing from `home(hash)`; a fingerprint match is confirmed
//! by comparing the key. Removing marks a slot [`DELETED`] unless the next slot is empty (then
//! no probe runs past it, and it becomes [`EMPTY`]); tombstones count toward the load and are
//! dropped when the table is rebuilt.
//!
//! A `Table` is not synchronised: [`super::KeyDir`] puts each in its own lock.

use super::Entry;

/// The little-endian `u32` at `b[at..at + 4]` (slots are a fixed in-memory layout).
fn rd32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// The little-endian `u64` at `b[at..at + 8]`.
fn rd64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

const EMPTY: u8 = 0;
const DELETED: u8 = 1;
/// Keys up to this length live in the slot.
const INLINE: usize = 16;
/// Slot key-length byte of a key kept in the arena.
const LONG: u8 = 0xFF;

const KEY_AT: usize = 1;
const SEQ_AT: usize = KEY_AT + INLINE;
const EXPIRY_AT: usize = SEQ_AT + 8;
const FILE_AT: usize = EXPIRY_AT + 8;
const OFFSET_AT: usize = FILE_AT + 4;
const LEN_AT: usize = OFFSET_AT + 4;
const CRC_AT: usize = LEN_AT + 4;
/// Bytes per slot.
pub(crate) const SLOT: usize = CRC_AT + 4;

/// Rebuild when live + deleted slots would exceed this share of the capacity (in percent).
const MAX_LOAD_PCT: usize = 85;
/// A rebuild sizes the table to this share of live keys (in percent): growth by ~1.4×.
const REBUILD_LOAD_PCT: usize = 60;
/// Smallest non-zero capacity.
const MIN_CAP: usize = 16;

/// One shard's table.
#[derive(Debug, Default, Clone)]
pub(crate) struct Table {
    ctrl: Vec<u8>,
    slots: Vec<u8>,
    live: usize,
    deleted: usize,
    /// Keys longer than [`INLINE`], by the index stored in their slot.
    long: Vec<Box<[u8]>>,
    /// Free indices of `long`.
    free_long: Vec<u32>,
}

/// Where the probe for `hash` starts in a table of `cap` slots (`cap` > 0).
fn home(hash: u64, cap: usize) -> usize {
    // Multiply-shift range reduction of the low 32 bits: any capacity, no division.
    (((hash & 0xFFFF_FFFF) * cap as u64) >> 32) as usize
}

/// Control byte of a full slot for `hash` (bits 32..39; the shard uses the top bits).
fn fingerprint(hash: u64) -> u8 {
    0x80 | ((hash >> 32) as u8 & 0x7F)
}

fn write_entry(slot: &mut [u8], e: &Entry) {
    slot[SEQ_AT..SEQ_AT + 8].copy_from_slice(&e.seq.to_le_bytes());
    slot[EXPIRY_AT..EXPIRY_AT + 8].copy_from_slice(&e.expiry_ms.to_le_bytes());
    slot[FILE_AT..FILE_AT + 4].copy_from_slice(&e.file_id.to_le_bytes());
    slot[OFFSET_AT..OFFSET_AT + 4].copy_from_slice(&e.offset.to_le_bytes());
    slot[LEN_AT..LEN_AT + 4].copy_from_slice(&e.len.to_le_bytes());
    slot[CRC_AT..CRC_AT + 4].copy_from_slice(&e.crc.to_le_bytes());
}

fn read_entry(slot: &[u8]) -> Entry {
    Entry {
        seq: rd64(slot, SEQ_AT),
        expiry_ms: rd64(slot, EXPIRY_AT),
        file_id: rd32(slot, FILE_AT),
        offset: rd32(slot, OFFSET_AT),
        len: rd32(slot, LEN_AT),
        crc: rd32(slot, CRC_AT),
    }
}

impl Table {
    /// A table with room for `n` keys before it needs a rebuild.
    pub(crate) fn with_capacity(n: usize) -> Table {
        let mut t = Table::default();
        if n > 0 {
            t.resize(Self::cap_for(n, MAX_LOAD_PCT - 5));
        }
        t
    }

    /// Capacity that holds `n` keys at `load_pct` percent.
    fn cap_for(n: usize, load_pct: usize) -> usize {
        (n.saturating_mul(100) / load_pct + 1).max(MIN_CAP)
    }

    /// Live keys.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Bytes the table holds (slots, control bytes, long keys), for tests and estimates.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.ctrl.capacity()
            + self.slots.capacity()
            + self.long.iter().map(|k| k.len()).sum::<usize>()
    }

    fn slot(&self, i: usize) -> &[u8] {
        &self.slots[i * SLOT..(i + 1) * SLOT]
    }

    fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.slots[i * SLOT..(i + 1) * SLOT]
    }

    /// The key stored in full slot `i`.
    fn key_at(&self, i: usize) -> &[u8] {
        let s = self.slot(i);
        if s[0] == LONG {
            &self.long[rd32(s, KEY_AT) as usize]
        } else {
            &s[KEY_AT..KEY_AT + s[0] as usize]
        }
    }

    /// The slot holding `key`, if any.
    pub(crate) fn find(&self, key: &[u8], hash: u64) -> Option<usize> {
        let cap = self.ctrl.len();
        if cap == 0 {
            return None;
        }
        let fp = fingerprint(hash);
        let mut i = home(hash, cap);
        // Ends: live + deleted < cap, so an EMPTY slot exists.
        loop {
            let c = self.ctrl[i];
            if c == EMPTY {
                return None;
            }
            if c == fp && self.key_at(i) == key {
                return Some(i);
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
    }

    /// The entry in full slot `i`.
    pub(crate) fn entry(&self, i: usize) -> Entry {
        read_entry(self.slot(i))
    }

    /// Overwrites the entry in full slot `i`.
    pub(crate) fn set_entry(&mut self, i: usize, e: &Entry) {
        write_entry(self.slot_mut(i), e);
    }

    /// Inserts `key`, which the table does not hold, with `e`. `rehash` gives the hash of a
    /// stored key, for a rebuild.
    pub(crate) fn insert_new(
        &mut self,
        key: &[u8],
        hash: u64,
        e: &Entry,
        rehash: &impl Fn(&[u8]) -> u64,
    ) {
        let cap = self.ctrl.len();
        if (self.live + self.deleted + 1) * 100 > cap * MAX_LOAD_PCT {
            self.rebuild(Self::cap_for(self.live + 1, REBUILD_LOAD_PCT), rehash);
        }
        let cap = self.ctrl.len();
        let mut i = home(hash, cap);
        while self.ctrl[i] >= 0x80 {
            i += 1;
            if i == cap {
                i = 0;
            }
        }
        if self.ctrl[i] == DELETED {
            self.deleted -= 1;
        }
        self.ctrl[i] = fingerprint(hash);
        let key_field = if key.len() <= INLINE {
            None
        } else {
            let boxed: Box<[u8]> = key.into();
            Some(match self.free_long.pop() {
                Some(idx) => {
                    self.long[idx as usize] = boxed;
                    idx
                }
                None => {
                    self.long.push(boxed);
                    // More than 4G long keys in one shard cannot be held in memory anyway.
                    (self.long.len() - 1) as u32
                }
            })
        };
        let slot = self.slot_mut(i);
        match key_field {
            None => {
                slot[0] = key.len() as u8;
                slot[KEY_AT..KEY_AT + key.len()].copy_from_slice(key);
                slot[KEY_AT + key.len()..SEQ_AT].fill(0);
            }
            Some(idx) => {
                slot[0] = LONG;
                slot[KEY_AT..KEY_AT + 4].copy_from_slice(&idx.to_le_bytes());
                slot[KEY_AT + 4..SEQ_AT].fill(0);
            }
        }
        write_entry(slot, e);
        self.live += 1;
    }

    /// Removes the key in full slot `i`; returns its entry.
    pub(crate) fn remove_at(&mut self, i: usize) -> Entry {
        let e = self.entry(i);
        let s = self.slot(i);
        if s[0] == LONG {
            let idx = rd32(s, KEY_AT);
            self.long[idx as usize] = Box::default();
            self.free_long.push(idx);
        }
        let cap = self.ctrl.len();
        let next = if i + 1 == cap { 0 } else { i + 1 };
        if self.ctrl[next] == EMPTY {
            self.ctrl[i] = EMPTY;
        } else {
            self.ctrl[i] = DELETED;
            self.deleted += 1;
        }
        self.live -= 1;
        e
    }

    /// Calls `f` for every key and entry.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&[u8], &Entry)) {
        for i in 0..self.ctrl.len() {
            if self.ctrl[i] >= 0x80 {
                f(self.key_at(i), &self.entry(i));
            }
        }
    }

    /// Calls `f` for every key and entry in slots `start..`, in slot order, until `f` returns
    /// `false`; returns the slot after the last one visited (the capacity once all are).
    pub(crate) fn visit_from(
        &self,
        start: usize,
        mut f: impl FnMut(&[u8], &Entry) -> bool,
    ) -> usize {
        for i in start..self.ctrl.len() {
            if self.ctrl[i] >= 0x80 && !f(self.key_at(i), &self.entry(i)) {
                return i + 1;
            }
        }
        self.ctrl.len()
    }

    /// Calls `f` for every key whose hash has its low 32 bits in `lo..hi` (`hi` ≤ 2³²);
    /// returns how many. Such a key's probe starts in `home(lo)..=home(hi - 1)` and it sits
    /// before the first empty slot at or after its start, so only that stretch is read.
    pub(crate) fn scan_range(
        &self,
        lo: u64,
        hi: u64,
        rehash: &impl Fn(&[u8]) -> u64,
        mut f: impl FnMut(&[u8], &Entry),
    ) -> usize {
        let cap = self.ctrl.len();
        if cap == 0 || lo >= hi || self.live == 0 {
            return 0;
        }
        let (first, last) = (home(lo, cap), home(hi - 1, cap));
        let mut found = 0;
        for v in first..first + cap {
            let i = v % cap;
            let c = self.ctrl[i];
            if c == EMPTY && v > last {
                break;
            }
            if c < 0x80 {
                continue;
            }
            let key = self.key_at(i);
            let low = rehash(key) & 0xFFFF_FFFF;
            if (lo..hi).contains(&low) {
                f(key, &self.entry(i));
                found += 1;
            }
        }
        found
    }

    /// Slots (full, deleted or empty).
    pub(crate) fn capacity(&self) -> usize {
        self.ctrl.len()
    }

    /// Keeps only the entries for which `keep` is true.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&[u8], &Entry) -> bool) {
        // Back to front, so that an EMPTY written by `remove_at` can let the slot before it
        // become EMPTY too.
        for i in (0..self.ctrl.len()).rev() {
            if self.ctrl[i] >= 0x80 && !keep(self.key_at(i), &self.entry(i)) {
                self.remove_at(i);
            }
        }
    }

    /// Moves every live key into a fresh table of `cap` slots, dropping tombstones.
    fn rebuild(&mut self, cap: usize, rehash: &impl Fn(&[u8]) -> u64) {
        let old_ctrl = std::mem::replace(&mut self.ctrl, vec![EMPTY; cap]);
        let old_slots = std::mem::replace(&mut self.slots, vec![0u8; cap * SLOT]);
        self.deleted = 0;
        for (j, &c) in old_ctrl.iter().enumerate() {
            if c < 0x80 {
                continue;
            }
            let src = &old_slots[j * SLOT..(j + 1) * SLOT];
            let hash = if src[0] == LONG {
                rehash(&self.long[rd32(src, KEY_AT) as usize])
            } else {
                rehash(&src[KEY_AT..KEY_AT + src[0] as usize])
            };
            let mut i = home(hash, cap);
            while self.ctrl[i] != EMPTY {
                i += 1;
                if i == cap {
                    i = 0;
                }
            }
            self.ctrl[i] = c;
            self.slots[i * SLOT..(i + 1) * SLOT].copy_from_slice(src);
        }
    }

    /// Sets the capacity of an empty table.
    fn resize(&mut self, cap: usize) {
        debug_assert_eq!(self.live + self.deleted, 0);
        self.ctrl = vec![EMPTY; cap];
        self.slots = vec![0u8; cap * SLOT];
    }
}

#[cfg(test)]
mod tests;
