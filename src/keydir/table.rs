//! One shard of the keydir: an open-addressing hash table of packed 45-byte slots.
//!
//! Why not a general-purpose map: `DashMap<SmallVec<[u8; 16]>, Entry>` spends 57 bytes per
//! bucket (24-byte key, 32-byte entry, 1 control byte) and, like every power-of-two table, runs
//! between 44 % and 87.5 % full: at 1M keys it held 2M buckets, 114 MB. Here a slot packs the
//! entry into 28 bytes and keys of up to 16 bytes inline (longer ones in a side arena), and the
//! capacity is any number, so the table stays 60–85 % full: ~46 bytes per slot, ~63 bytes per
//! key on average.
//!
//! Layout: `ctrl[i]` is [`EMPTY`], [`DELETED`] or `0x80 | 7 fingerprint bits`; `slots[i]` is
//! `key_len or LONG (1) | key inline or arena index (16) | seq (8) | expiry_ms (8) | file_id (4)
//! | offset (4) | len (4)`. Linear probing from `home(hash)`; a fingerprint match is confirmed
//! by comparing the key. Removing marks a slot [`DELETED`] unless the next slot is empty (then
//! no probe runs past it, and it becomes [`EMPTY`]); tombstones count toward the load and are
//! dropped when the table is rebuilt.
//!
//! A `Table` is not synchronised: [`super::KeyDir`] puts each in its own lock.

use super::Entry;
use crate::format::{u32_at as rd32, u64_at as rd64};

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
/// Bytes per slot.
pub(crate) const SLOT: usize = LEN_AT + 4;

/// Rebuild when live + deleted slots would exceed this share of the capacity (in percent).
const MAX_LOAD_PCT: usize = 85;
/// A rebuild sizes the table to this share of live keys (in percent): growth by ~1.4×.
const REBUILD_LOAD_PCT: usize = 60;
/// Smallest non-zero capacity.
const MIN_CAP: usize = 16;

/// One shard's table.
#[derive(Debug, Default)]
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
}

fn read_entry(slot: &[u8]) -> Entry {
    Entry {
        seq: rd64(slot, SEQ_AT),
        expiry_ms: rd64(slot, EXPIRY_AT),
        file_id: rd32(slot, FILE_AT),
        offset: rd32(slot, OFFSET_AT),
        len: rd32(slot, LEN_AT),
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

    /// [`Table::key_at`] for a slot not yet validated: `None` where `key_at` would panic.
    fn key_checked(&self, i: usize) -> Option<&[u8]> {
        let s = self.slot(i);
        if s[0] == LONG {
            self.long.get(rd32(s, KEY_AT) as usize).map(|k| &**k)
        } else {
            s.get(KEY_AT..KEY_AT + s[0] as usize)
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

/// Bytes before a table's control bytes in its snapshot body: capacity, live, deleted, long
/// key count and long key bytes, each a u64.
pub(crate) const SNAPSHOT_HEAD: usize = 40;

impl Table {
    /// Number of bytes [`Table::write_snapshot`] writes.
    pub(crate) fn snapshot_len(&self) -> u64 {
        let (_, long_bytes) = self.long_keys();
        (SNAPSHOT_HEAD + self.ctrl.len() * (1 + SLOT)) as u64 + long_bytes
    }

    /// Count and encoded size (4-byte length + key) of the long keys of full slots.
    fn long_keys(&self) -> (u64, u64) {
        let (mut n, mut bytes) = (0u64, 0u64);
        for i in 0..self.ctrl.len() {
            if self.ctrl[i] >= 0x80 && self.slot(i)[0] == LONG {
                n += 1;
                bytes += 4 + self.key_at(i).len() as u64;
            }
        }
        (n, bytes)
    }

    /// Writes the table as one shard body of a keydir snapshot: `cap | live | deleted |
    /// long count | long bytes` (u64 each), the control bytes, the slots (slots that are not
    /// full zeroed; a long key's arena index renumbered to its rank among long keys in slot
    /// order), then each long key as `len u32 | bytes`, in slot order.
    pub(crate) fn write_snapshot(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let cap = self.ctrl.len();
        let (long_n, long_bytes) = self.long_keys();
        let mut head = [0u8; SNAPSHOT_HEAD];
        for (i, v) in [
            cap as u64,
            self.live as u64,
            self.deleted as u64,
            long_n,
            long_bytes,
        ]
        .into_iter()
        .enumerate()
        {
            head[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        out.write_all(&head)?;
        out.write_all(&self.ctrl)?;
        const CHUNK: usize = 1024;
        let mut buf = Vec::with_capacity(CHUNK * SLOT);
        let mut rank = 0u32;
        for first in (0..cap).step_by(CHUNK) {
            let end = (first + CHUNK).min(cap);
            buf.clear();
            buf.extend_from_slice(&self.slots[first * SLOT..end * SLOT]);
            for (j, s) in buf.chunks_exact_mut(SLOT).enumerate() {
                if self.ctrl[first + j] < 0x80 {
                    s.fill(0);
                } else if s[0] == LONG {
                    s[KEY_AT..KEY_AT + 4].copy_from_slice(&rank.to_le_bytes());
                    rank += 1;
                }
            }
            out.write_all(&buf)?;
        }
        for i in 0..cap {
            if self.ctrl[i] >= 0x80 && self.slot(i)[0] == LONG {
                let k = self.key_at(i);
                out.write_all(&(k.len() as u32).to_le_bytes())?;
                out.write_all(k)?;
            }
        }
        Ok(())
    }

    /// Reads a shard body written by [`Table::write_snapshot`] of exactly `body_len` bytes
    /// through `read` (which fills the buffer it is given from the next bytes of the body),
    /// and checks every slot: `hash` must send each key to this shard (`None` otherwise), its
    /// control byte must be its fingerprint, no empty slot may lie on its probe path, and no
    /// key may appear twice. A table that passes can be probed and grown like any other.
    pub(crate) fn read_snapshot(
        body_len: u64,
        read: &mut dyn FnMut(&mut [u8]) -> std::io::Result<()>,
        hash: &dyn Fn(&[u8]) -> Option<u64>,
    ) -> Result<Table, SnapshotFault> {
        use SnapshotFault::Invalid;
        let mut head = [0u8; SNAPSHOT_HEAD];
        read(&mut head)?;
        let [cap, live, deleted, long_n, long_bytes] = std::array::from_fn(|i| rd64(&head, i * 8));
        let table_bytes = cap
            .checked_mul(1 + SLOT as u64)
            .and_then(|b| b.checked_add(SNAPSHOT_HEAD as u64))
            .and_then(|b| b.checked_add(long_bytes));
        if table_bytes != Some(body_len) {
            return Err(Invalid("shard body length does not match its header"));
        }
        // `cap` is now bounded by the body length, which the caller checked against the file.
        let cap = cap as usize;
        if cap != 0 && cap < MIN_CAP {
            return Err(Invalid("capacity below the minimum"));
        }
        if live.saturating_add(deleted).saturating_mul(100) > (cap * MAX_LOAD_PCT) as u64 {
            return Err(Invalid("table fuller than its load limit"));
        }
        if long_n.saturating_mul(4 + INLINE as u64 + 1) > long_bytes {
            return Err(Invalid("long key count does not fit its bytes"));
        }
        let mut t = Table::default();
        if cap > 0 {
            t.resize(cap);
        }
        read(&mut t.ctrl)?;
        read(&mut t.slots)?;
        let mut long = vec![0u8; long_bytes as usize];
        read(&mut long)?;
        t.long = read_long_keys(&long, long_n)?;
        t.check_slots(hash, long_n)?;
        if t.live as u64 != live || t.deleted as u64 != deleted {
            return Err(Invalid("slot counts do not match the header"));
        }
        Ok(t)
    }

    /// Checks every slot of a table read from a snapshot (see [`Table::read_snapshot`]) and
    /// counts the live and deleted ones.
    fn check_slots(
        &mut self,
        hash: &dyn Fn(&[u8]) -> Option<u64>,
        long_n: u64,
    ) -> Result<(), SnapshotFault> {
        use SnapshotFault::Invalid;
        let cap = self.ctrl.len();
        let mut rank = 0u32;
        for i in 0..cap {
            match self.ctrl[i] {
                EMPTY => {}
                DELETED => self.deleted += 1,
                c if c >= 0x80 => {
                    let s = self.slot(i);
                    if s[0] == LONG {
                        if rd32(s, KEY_AT) != rank {
                            return Err(Invalid("long key index out of order"));
                        }
                        rank += 1;
                    } else if s[0] as usize > INLINE {
                        return Err(Invalid("inline key length out of range"));
                    }
                    if u64::from(rank) > long_n {
                        return Err(Invalid("more long keys than stored"));
                    }
                    let key = self.key_at(i);
                    let h = hash(key).ok_or(Invalid("key in the wrong shard"))?;
                    if fingerprint(h) != c {
                        return Err(Invalid("control byte is not the key's fingerprint"));
                    }
                    self.check_probe_path(i, key, h, c)?;
                    self.live += 1;
                }
                _ => return Err(Invalid("unknown control byte")),
            }
        }
        if u64::from(rank) != long_n {
            return Err(Invalid("long keys without a slot"));
        }
        Ok(())
    }

    /// Walks the probe path from the home of `key` (hash `h`, control byte `c`, found at slot
    /// `i`): no empty slot (a lookup would stop there) and no earlier copy of the key.
    fn check_probe_path(&self, i: usize, key: &[u8], h: u64, c: u8) -> Result<(), SnapshotFault> {
        use SnapshotFault::Invalid;
        let cap = self.ctrl.len();
        let mut j = home(h, cap);
        while j != i {
            match self.ctrl[j] {
                EMPTY => return Err(Invalid("key unreachable from its home slot")),
                cj if cj == c && self.key_checked(j) == Some(key) => {
                    return Err(Invalid("key stored twice"))
                }
                _ => {}
            }
            j = if j + 1 == cap { 0 } else { j + 1 };
        }
        Ok(())
    }
}

/// The long-key section of a snapshot shard body: `long_n` keys of `len u32 | bytes`.
fn read_long_keys(long: &[u8], long_n: u64) -> Result<Vec<Box<[u8]>>, SnapshotFault> {
    use SnapshotFault::Invalid;
    let mut keys = Vec::with_capacity(long_n as usize);
    let mut at = 0usize;
    while at < long.len() {
        let len = long
            .get(at..at + 4)
            .map(|b| rd32(b, 0) as usize)
            .ok_or(Invalid("stray bytes after the long keys"))?;
        let key = long
            .get(at + 4..)
            .and_then(|r| r.get(..len))
            .ok_or(Invalid("long key runs past its section"))?;
        if key.len() <= INLINE {
            return Err(Invalid("long key short enough to be inline"));
        }
        keys.push(key.into());
        at += 4 + len;
    }
    if keys.len() as u64 != long_n {
        return Err(Invalid("long key count does not match its keys"));
    }
    Ok(keys)
}

/// Why a snapshot shard body could not be loaded.
#[derive(Debug)]
pub(crate) enum SnapshotFault {
    /// Reading the body failed.
    Io(std::io::Error),
    /// The body is not a valid table.
    Invalid(&'static str),
}

impl From<std::io::Error> for SnapshotFault {
    fn from(e: std::io::Error) -> Self {
        SnapshotFault::Io(e)
    }
}

#[cfg(test)]
mod tests;
