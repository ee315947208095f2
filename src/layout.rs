//! File names and paths of a store directory.
//!
//! A store directory holds `LOCK`, datafiles `NNNNNNNNNN.data`, their hint files
//! `NNNNNNNNNN.hint`, the value files `NNNNNNNNNN.vals` of datafiles that keep values apart, at most one merge manifest `MERGE`, at most one keydir snapshot `KEYDIR`,
//! markers `NNNNNNNNNN.retired` of merged-away datafiles a snapshot still reads, and, after a
//! crash, files under a temporary name (`*.tmp`) that open removes.

use std::path::{Path, PathBuf};

/// Name of the lock file in a store directory.
pub(crate) const LOCK_NAME: &str = "LOCK";
/// Name of the merge manifest in a store directory.
pub(crate) const MANIFEST_NAME: &str = "MERGE";
/// File name of the keydir snapshot in the store directory.
pub(crate) const SNAPSHOT_NAME: &str = "KEYDIR";

/// Path of datafile `id` in `dir`.
pub(crate) fn data_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}.data"))
}

/// Datafile ids stay below this bit. The read path (keydir entries, file table, tails) names
/// the value file of datafile `N` by the id `N | VALS_BIT`.
pub(crate) const VALS_BIT: u32 = 1 << 31;

/// Path of the value file of datafile `id` in `dir` (`id` without [`VALS_BIT`]).
pub(crate) fn vals_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{:010}.vals", id & !VALS_BIT))
}

/// Length of the value file of datafile `id` in `dir` (0 when it has none).
pub(crate) fn vals_len(dir: &Path, id: u32) -> u64 {
    std::fs::metadata(vals_path(dir, id)).map_or(0, |m| m.len())
}

/// Path of the file the read path names `fid`: a value file when it has [`VALS_BIT`], else a
/// datafile.
pub(crate) fn read_path(dir: &Path, fid: u32) -> PathBuf {
    if fid & VALS_BIT != 0 {
        vals_path(dir, fid)
    } else {
        data_path(dir, fid)
    }
}

/// The datafile a read-path id belongs to (itself, or the datafile of a value file).
pub(crate) fn data_id(fid: u32) -> u32 {
    fid & !VALS_BIT
}

/// Path of the hint file of datafile `id` in `dir`.
pub(crate) fn hint_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}.hint"))
}

/// Path of the marker saying that datafile `id` is merged away but still read by a snapshot:
/// open deletes the datafile (and the marker) whatever else it finds.
pub(crate) fn retired_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}.retired"))
}

/// Suffix of every file written under a temporary name.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";

/// `path` with [`TEMP_SUFFIX`] appended.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(TEMP_SUFFIX);
    PathBuf::from(p)
}

/// The kinds of file a store directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirEntry {
    Data(u32),
    Hint(u32),
    Vals(u32),
    Retired(u32),
    Temp,
}

/// Classifies a file name of a store directory; `None` for names ringcask does not own.
pub(crate) fn parse_name(name: &str) -> Option<DirEntry> {
    if name.ends_with(TEMP_SUFFIX) {
        return Some(DirEntry::Temp);
    }
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 10 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: u32 = stem.parse().ok().filter(|id| id & VALS_BIT == 0)?;
    match ext {
        "data" => Some(DirEntry::Data(id)),
        "hint" => Some(DirEntry::Hint(id)),
        "vals" => Some(DirEntry::Vals(id)),
        "retired" => Some(DirEntry::Retired(id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let d = Path::new("/x");
        assert_eq!(data_path(d, 7), Path::new("/x/0000000007.data"));
        assert_eq!(parse_name("0000000007.data"), Some(DirEntry::Data(7)));
        assert_eq!(parse_name("0000000007.hint"), Some(DirEntry::Hint(7)));
        assert_eq!(parse_name("0000000007.hint.tmp"), Some(DirEntry::Temp));
        assert_eq!(parse_name("0000000007.retired"), Some(DirEntry::Retired(7)));
        assert_eq!(retired_path(d, 7), Path::new("/x/0000000007.retired"));
        assert_eq!(parse_name("7.data"), None);
        assert_eq!(parse_name("LOCK"), None);
        assert_eq!(parse_name("00000000x7.data"), None);
        assert_eq!(parse_name("9999999999.data"), None); // over u32
        assert_eq!(parse_name("2147483648.data"), None); // the value-file bit
        assert_eq!(parse_name("0000000007.vals"), Some(DirEntry::Vals(7)));
        assert_eq!(vals_path(d, 7 | VALS_BIT), Path::new("/x/0000000007.vals"));
        assert_eq!(read_path(d, 7 | VALS_BIT), vals_path(d, 7));
        assert_eq!(read_path(d, 7), data_path(d, 7));
        assert_eq!(data_id(7 | VALS_BIT), 7);
    }
}
