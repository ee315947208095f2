//! What recovery applies to the keydir: records installed in groups, one shard lock per shard
//! and group, with a tally of what each did to every file's live bytes.

use std::collections::BTreeMap;

use crate::format::HintRecord;
use crate::keydir::{Entry, Installed, KeyDir};

/// What the records one file load applied did to the keydir: live bytes gained or lost per
/// file, so that recovery needs no pass over the whole keydir afterwards.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// Live bytes added to the file being loaded.
    pub(super) own: i64,
    /// Live bytes taken from other files, by entries this load replaced.
    pub(super) others: BTreeMap<u32, i64>,
    /// Recovery markers installed: the keydir needs a sweep.
    pub(super) markers: u64,
    /// A live entry with an expiry was installed.
    pub(super) ttl: bool,
}

impl Tally {
    /// Adds what another load of records (of the same file) did.
    pub(super) fn absorb(&mut self, other: Tally) {
        self.own += other.own;
        for (id, d) in other.others {
            *self.others.entry(id).or_default() += d;
        }
        self.markers += other.markers;
        self.ttl |= other.ttl;
    }
}

/// What applying a run of records of one file did: the tally and the seq range seen.
#[derive(Debug)]
pub(super) struct Applied {
    pub(super) tally: Tally,
    pub(super) min_seq: u64,
    pub(super) max_seq: u64,
}

impl Default for Applied {
    fn default() -> Applied {
        Applied {
            tally: Tally::default(),
            min_seq: u64::MAX,
            max_seq: 0,
        }
    }
}

impl Applied {
    pub(super) fn absorb(&mut self, other: Applied) {
        self.tally.absorb(other.tally);
        self.min_seq = self.min_seq.min(other.min_seq);
        self.max_seq = self.max_seq.max(other.max_seq);
    }
}

/// The keydir entry for one record of datafile `file_id`: a marker for a tombstone or an
/// already expired record.
pub(super) fn entry_for(file_id: u32, h: &HintRecord<'_>, now: u64) -> Entry {
    if h.tombstone || (h.expiry_ms != 0 && h.expiry_ms <= now) {
        Entry::marker(h.seq)
    } else {
        // Record offsets fit: `load_file` rejects datafiles of 4 GiB or more, and hint offsets
        // are checked against the datafile length.
        let record = (h.offset, h.record_len);
        Entry::located(h.seq, h.expiry_ms, file_id, record, h.apart)
    }
}

/// Tallies what installing `entry` (of datafile `file_id`, its key `key_len` bytes) did.
pub(super) fn tally(
    seen: &mut Applied,
    file_id: u32,
    key_len: usize,
    entry: &Entry,
    outcome: Installed,
) {
    seen.min_seq = seen.min_seq.min(entry.seq);
    seen.max_seq = seen.max_seq.max(entry.seq);
    let tally = &mut seen.tally;
    let old = match outcome {
        Installed::Stale => return,
        Installed::New => None,
        Installed::Replaced(old) => Some(old),
    };
    if entry.is_marker() {
        tally.markers += 1;
    } else {
        tally.own += entry.footprint(key_len) as i64;
        tally.ttl |= entry.expiry_ms != 0;
    }
    if let Some(old) = old.filter(|o| !o.is_marker()) {
        let bytes = old.footprint(key_len) as i64;
        if old.data_id() == file_id {
            tally.own -= bytes;
        } else {
            *tally.others.entry(old.data_id()).or_default() -= bytes;
        }
    }
}

/// Records of a hint or a scan collected for [`KeyDir::apply_many`]: one shard lock per shard and group
/// instead of one per record.
#[derive(Default)]
pub(super) struct Group {
    pub(super) keys: Vec<u8>,
    /// (end of the key in `keys`, entry)
    pub(super) entries: Vec<(usize, Entry)>,
    pub(super) applied: Applied,
}

/// Records per [`Group`].
pub(super) const GROUP: usize = 4096;

impl Group {
    pub(super) fn push(&mut self, keydir: &KeyDir, file_id: u32, h: &HintRecord<'_>, now: u64) {
        self.keys.extend_from_slice(h.key);
        self.entries
            .push((self.keys.len(), entry_for(file_id, h, now)));
        if self.entries.len() == GROUP {
            self.flush(keydir, file_id);
        }
    }

    pub(super) fn flush(&mut self, keydir: &KeyDir, file_id: u32) {
        let Group {
            keys,
            entries,
            applied,
        } = self;
        let mut start = 0;
        let writes = entries.iter().map(|&(end, e)| {
            let key = &keys[start..end];
            start = end;
            (key, e, false)
        });
        keydir.apply_many(writes, |i, outcome| {
            let start = i.checked_sub(1).map_or(0, |p| entries[p].0);
            let key_len = entries[i].0 - start;
            tally(applied, file_id, key_len, &entries[i].1, outcome)
        });
        keys.clear();
        entries.clear();
    }
}
