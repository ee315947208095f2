//! The keydir's compare-and-swap rules, as plain functions over one entry.
//!
//! The concurrent map applies each rule under its shard lock. The loom models in
//! `loom-models/` drive the keydir itself (`crate::loom_api`, built with loom's shard locks
//! under `--cfg ringcask_loom`), so the protocol they check is the one the engine runs.

/// Location and metadata of a key's newest record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Sequence number of the record.
    pub seq: u64,
    /// Absolute expiry in Unix milliseconds; 0 = never.
    pub expiry_ms: u64,
    /// Datafile holding the record; or, with [`crate::layout::VALS_BIT`] set, the value file
    /// holding its value kept apart (see [`Entry::is_apart`]).
    pub file_id: u32,
    /// Offset of the record (its header) in that file; of the value in a value file.
    pub offset: u32,
    /// Length of the whole record; of the value in a value file. 0 marks a recovery-time
    /// tombstone (see [`Entry::marker`]).
    pub len: u32,
    /// The value's CRC ([`crate::format::value_crc`]) when it is kept apart, else 0.
    pub crc: u32,
}

impl Entry {
    /// A placeholder that recovery installs for a tombstone or an expired record, so that it
    /// still wins over older records of its key whatever order files load in. Swept before the
    /// store opens.
    pub(crate) fn marker(seq: u64) -> Entry {
        Entry {
            seq,
            expiry_ms: 0,
            file_id: 0,
            offset: 0,
            len: 0,
            crc: 0,
        }
    }

    /// Whether the entry points at a value kept apart, in a value file (a read of it returns
    /// the value alone, checked against `crc`).
    pub(crate) fn is_apart(&self) -> bool {
        self.file_id & crate::layout::VALS_BIT != 0
    }

    /// Bytes the entry's record takes on disk, its key `key_len` bytes long: the record, and
    /// for a value kept apart also the value's blocks in the value file.
    pub(crate) fn footprint(&self, key_len: usize) -> u64 {
        if self.is_apart() {
            let head = crate::format::RECORD_HEADER_LEN + key_len + crate::format::VALUE_REF_LEN;
            head as u64 + crate::format::vals_span(u64::from(self.len))
        } else {
            u64::from(self.len)
        }
    }

    /// The datafile the entry's record belongs to (the value file's datafile for a value kept
    /// apart): the file whose space accounting it counts in.
    pub(crate) fn data_id(&self) -> u32 {
        crate::layout::data_id(self.file_id)
    }

    /// The entry of a live record of `len` bytes at `offset` of datafile `file_id`; when its
    /// value is kept apart (`apart`), the entry points at the value in the value file.
    /// Offsets fit in `u32`: a datafile and its value file together stay under
    /// `max_file_bytes` (< 4 GiB); an offset past that (only from damaged input) saturates and
    /// fails the read that uses it.
    pub(crate) fn located(
        seq: u64,
        expiry_ms: u64,
        file_id: u32,
        (offset, len): (u64, u32),
        apart: Option<crate::format::Apart>,
    ) -> Entry {
        let at = |o: u64| u32::try_from(o).unwrap_or(u32::MAX);
        match apart {
            Some(a) => Entry {
                seq,
                expiry_ms,
                file_id: file_id | crate::layout::VALS_BIT,
                offset: at(a.offset),
                len: a.len,
                crc: a.crc,
            },
            None => Entry {
                seq,
                expiry_ms,
                file_id,
                offset: at(offset),
                len,
                crc: 0,
            },
        }
    }

    /// Whether this is a recovery-time marker rather than a live value.
    pub(crate) fn is_marker(&self) -> bool {
        self.len == 0
    }

    /// Whether the entry has expired at `now_ms`.
    pub(crate) fn is_expired(&self, now_ms: u64) -> bool {
        self.expiry_ms != 0 && now_ms >= self.expiry_ms
    }
}

/// What an [`KeyDir::install`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Installed {
    /// The key was absent.
    New,
    /// An older entry was replaced; it is returned.
    Replaced(Entry),
    /// The map already held an entry with an equal or larger seq; nothing changed.
    Stale,
}

/// Installs `new` over `cur` if it is newer (larger seq).
pub(crate) fn install_over(cur: &mut Entry, new: Entry) -> Installed {
    if cur.seq >= new.seq {
        return Installed::Stale;
    }
    Installed::Replaced(std::mem::replace(cur, new))
}

/// Whether a delete with `seq` removes `cur` (only an older entry).
pub(crate) fn delete_removes(cur: &Entry, seq: u64) -> bool {
    cur.seq < seq
}

/// Whether a merge that copied the record with `seq` from `from_file` may repoint `cur` to the
/// copy: only if nothing newer was installed meanwhile and the entry still lives there.
pub(crate) fn repoint_allowed(cur: &Entry, seq: u64, from_file: u32) -> bool {
    cur.seq == seq && cur.file_id == from_file
}

/// Whether a merge that turned the expired record with `seq` into a tombstone removes `cur`.
pub(crate) fn expire_removes(cur: &Entry, seq: u64) -> bool {
    cur.seq == seq
}
