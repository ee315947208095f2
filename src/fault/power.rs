//! The power-loss model: what a store directory holds after the power is cut.
//!
//! Beside the live files it keeps a *durable image*: per file, the contents as of its last
//! `fsync`/`fdatasync`, and for the directory, its entries (name → file) as of its last fsync.
//! Writes, truncations and preallocations are logged per file and become durable at that file's
//! sync; creations, renames and unlinks become durable at the directory's sync (the directory
//! is listed then). At a cut the directory is rewritten to the durable image, except that the
//! most recent write not yet synced may survive in part: any subset of its 512-byte sectors
//! (by file offset) reaches the disk, the rest does not.
//!
//! Files are told apart by inode while linked, and by an id of the model's own, so that an
//! inode the file system reuses after an unlink never mixes two files' contents.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Sector size of the torn write.
const SECTOR: u64 = 512;

/// A change to a file's contents not yet made durable.
#[derive(Debug, Clone)]
enum Pending {
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    SetLen(u64),
    /// `fallocate` mode 0: the size grows to at least this, with zeros.
    Extend(u64),
}

/// What a cut did, for a campaign's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PowerCut {
    /// The last unsynced write was torn (some of its sectors kept, some lost).
    pub torn_write: bool,
    /// That write was to a value file (`*.vals`, values kept apart).
    pub torn_in_value_file: bool,
    /// Directory entries created or renamed since the last directory sync, lost.
    pub entries_lost: u64,
    /// Files unlinked since the last directory sync, back.
    pub entries_back: u64,
    /// Files whose contents went back to their last sync.
    pub files_rolled_back: u64,
}

#[derive(Debug, Default)]
struct FileState {
    durable: Vec<u8>,
    pending: Vec<Pending>,
    /// Sequence number of its last pending write (the most recent one overall is torn).
    last_write: u64,
    /// A value file (`*.vals`).
    vals: bool,
}

/// Whether `path` names a value file.
fn is_vals(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "vals")
}

/// The durable image of one store directory.
#[derive(Debug)]
pub(crate) struct PowerModel {
    dir: PathBuf,
    rng: u64,
    next_id: u64,
    write_seq: u64,
    files: HashMap<u64, FileState>,
    /// Inode of a linked file → its id.
    by_inode: HashMap<u64, u64>,
    /// The directory's entries as the disk has them durably.
    durable_dir: BTreeMap<OsString, u64>,
}

impl PowerModel {
    /// Starts from the directory as it is, taken as durable (the store was closed cleanly, or
    /// is new).
    pub(crate) fn new(dir: &Path, seed: u64) -> io::Result<PowerModel> {
        let mut m = PowerModel {
            dir: dir.to_path_buf(),
            rng: seed | 1,
            next_id: 0,
            write_seq: 0,
            files: HashMap::new(),
            by_inode: HashMap::new(),
            durable_dir: BTreeMap::new(),
        };
        std::fs::create_dir_all(dir)?;
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let meta = e.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let id = m.new_id(meta.ino());
            if let Some(f) = m.files.get_mut(&id) {
                f.durable = std::fs::read(e.path())?;
                f.vals = is_vals(&e.path());
            }
            m.durable_dir.insert(e.file_name(), id);
        }
        Ok(m)
    }

    fn new_id(&mut self, ino: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.files.insert(id, FileState::default());
        self.by_inode.insert(ino, id);
        id
    }

    /// The model's file behind `file`, if it is one of the directory's.
    fn id_of(&self, file: &File) -> Option<u64> {
        let ino = file.metadata().ok()?.ino();
        self.by_inode.get(&ino).copied()
    }

    /// `path` was just created (empty, never synced).
    pub(crate) fn created(&mut self, path: &Path) {
        if path.parent() != Some(self.dir.as_path()) {
            return;
        }
        if let Ok(meta) = std::fs::metadata(path) {
            let id = self.new_id(meta.ino());
            if let Some(f) = self.files.get_mut(&id) {
                f.vals = is_vals(path);
            }
            trace(format_args!("create {} -> id {id}", path.display()));
        }
    }

    fn pending(&mut self, file: &File, p: Pending) {
        let Some(id) = self.id_of(file) else {
            trace(format_args!("untracked change {p:?}"));
            return;
        };
        match &p {
            Pending::Write { offset, data } => {
                trace(format_args!("id {id}: write {} at {offset}", data.len()))
            }
            other => trace(format_args!("id {id}: {other:?}")),
        }
        self.write_seq += 1;
        let seq = self.write_seq;
        if let Some(f) = self.files.get_mut(&id) {
            if matches!(p, Pending::Write { .. }) {
                f.last_write = seq;
            }
            f.pending.push(p);
        }
    }

    pub(crate) fn wrote(&mut self, file: &File, offset: u64, data: &[u8]) {
        self.pending(
            file,
            Pending::Write {
                offset,
                data: data.to_vec(),
            },
        );
    }

    pub(crate) fn set_len(&mut self, file: &File, len: u64) {
        self.pending(file, Pending::SetLen(len));
    }

    pub(crate) fn allocated(&mut self, file: &File, end: u64) {
        self.pending(file, Pending::Extend(end));
    }

    /// `file`'s contents and size are durable now.
    pub(crate) fn synced(&mut self, file: &File) {
        let Some(id) = self.id_of(file) else {
            trace(format_args!("untracked sync"));
            return;
        };
        trace(format_args!("id {id}: sync"));
        if let Some(f) = self.files.get_mut(&id) {
            for p in std::mem::take(&mut f.pending) {
                apply(&mut f.durable, &p);
            }
            f.last_write = 0;
        }
    }

    /// The directory's entries are durable now.
    pub(crate) fn dir_synced(&mut self, dir: &Path) {
        if dir != self.dir {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut now = BTreeMap::new();
        for e in rd.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let id = match self.by_inode.get(&meta.ino()) {
                Some(&id) => id,
                // Created outside the seam: its contents were never synced through it.
                None => self.new_id(meta.ino()),
            };
            now.insert(e.file_name(), id);
        }
        trace(format_args!("dir sync {now:?}"));
        self.durable_dir = now;
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Cuts the power: rewrites the directory to its durable image, with the most recent
    /// unsynced write torn to a random subset of its sectors.
    pub(crate) fn cut(&mut self) -> io::Result<PowerCut> {
        trace(format_args!("CUT durable dir {:?}", self.durable_dir));
        let torn = self.tear_last_write();
        let mut report = PowerCut {
            torn_write: torn.is_some(),
            torn_in_value_file: torn == Some(true),
            ..PowerCut::default()
        };
        self.restore_dir(&mut report)?;
        self.rebase();
        Ok(report)
    }

    /// Applies the surviving sectors of the most recent unsynced write to its file's durable
    /// contents; when any survived, `Some(whether the file is a value file)`.
    fn tear_last_write(&mut self) -> Option<bool> {
        let last = self
            .files
            .iter()
            .filter(|(_, f)| f.last_write != 0)
            .max_by_key(|(_, f)| f.last_write)
            .map(|(&id, _)| id);
        let write = last.and_then(|id| {
            self.files
                .get(&id)?
                .pending
                .iter()
                .rev()
                .find_map(|p| match p {
                    Pending::Write { offset, data } => Some((id, *offset, data.clone())),
                    _ => None,
                })
        });
        let (id, offset, data) = write?;
        let kept = self.tear(offset, &data);
        let f = self.files.get_mut(&id)?;
        for (at, bytes) in &kept {
            apply(
                &mut f.durable,
                &Pending::Write {
                    offset: *at,
                    data: bytes.clone(),
                },
            );
        }
        (!kept.is_empty()).then_some(f.vals)
    }

    /// Removes the entries the disk does not hold durably and writes every durable entry with
    /// its file's durable contents.
    fn restore_dir(&mut self, report: &mut PowerCut) -> io::Result<()> {
        let mut live: BTreeMap<OsString, u64> = BTreeMap::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_file() {
                live.insert(e.file_name(), meta.ino());
            }
        }
        for (name, ino) in &live {
            match self.durable_dir.get(name) {
                None => {
                    std::fs::remove_file(self.dir.join(name))?;
                    report.entries_lost += 1;
                }
                Some(id) if self.by_inode.get(ino) != Some(id) => report.entries_lost += 1,
                Some(_) => {}
            }
        }
        for (name, id) in &self.durable_dir {
            if !live.contains_key(name) {
                report.entries_back += 1;
            }
            let f = self.files.get(id);
            if f.is_some_and(|f| !f.pending.is_empty()) {
                report.files_rolled_back += 1;
            }
            let bytes = f.map(|f| f.durable.as_slice()).unwrap_or_default();
            let path = self.dir.join(name);
            // A fresh file: the name may be a hard link of another, or a file whose inode
            // another name now has.
            let _ = std::fs::remove_file(&path);
            std::fs::write(&path, bytes)?;
        }
        Ok(())
    }

    /// The directory as rewritten is the new durable state.
    fn rebase(&mut self) {
        let rewritten = self.durable_dir.clone();
        self.files
            .retain(|id, _| rewritten.values().any(|v| v == id));
        self.by_inode.clear();
        for (name, id) in &rewritten {
            if let Ok(meta) = std::fs::metadata(self.dir.join(name)) {
                self.by_inode.insert(meta.ino(), *id);
            }
            if let Some(f) = self.files.get_mut(id) {
                f.pending.clear();
                f.last_write = 0;
            }
        }
    }

    /// The parts of a write of `data` at `offset` that reach the disk: a random subset of its
    /// sectors.
    fn tear(&mut self, offset: u64, data: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let end = offset + data.len() as u64;
        let mut kept = Vec::new();
        let mut s = offset / SECTOR * SECTOR;
        while s < end {
            let (from, to) = (s.max(offset), (s + SECTOR).min(end));
            if self.next_random() & 1 == 1 {
                let slice = data
                    .get((from - offset) as usize..(to - offset) as usize)
                    .unwrap_or_default();
                kept.push((from, slice.to_vec()));
            }
            s += SECTOR;
        }
        kept
    }
}

/// What the model saw, for a failing test's log (`RUST_LOG`-style filters on target
/// `ringcask::power` with a subscriber installed).
fn trace(what: std::fmt::Arguments<'_>) {
    tracing::trace!(target: "ringcask::power", "{what}");
}

/// Applies one change to a file's contents.
fn apply(contents: &mut Vec<u8>, p: &Pending) {
    match p {
        Pending::Write { offset, data } => {
            let at = *offset as usize;
            let end = at + data.len();
            if contents.len() < end {
                contents.resize(end, 0);
            }
            if let Some(dst) = contents.get_mut(at..end) {
                dst.copy_from_slice(data);
            }
        }
        Pending::SetLen(len) => contents.resize(*len as usize, 0),
        Pending::Extend(end) => {
            if contents.len() < *end as usize {
                contents.resize(*end as usize, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests;
