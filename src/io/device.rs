//! What a store's block device does with a write cache flush: whether the direct-IO writer
//! can make a group's two writes durable with one flush (see [`crate::GroupFlush`]).

use std::path::Path;

/// `statfs` magic of ext4 (and ext2/ext3, which share it).
const EXT4_SUPER_MAGIC: u64 = 0xEF53;
/// `statfs` magic of XFS.
const XFS_SUPER_MAGIC: u64 = 0x5846_5342;

/// Whether [`crate::GroupFlush::Auto`] chooses one flush a group for a store in `dir`: its
/// file system issues a device flush on every `fdatasync` (ext4, XFS), and its block device
/// has a volatile write cache without FUA, so that each `O_DSYNC` write costs a flush of its
/// own. Anything unknown (no `/sys`, a device without a queue, overlay file systems) answers
/// no.
pub(crate) fn one_flush_fits(dir: &Path) -> bool {
    let fs = rustix::fs::statfs(dir).ok().map(|s| s.f_type as u64);
    let dev = rustix::fs::stat(dir)
        .ok()
        .map(|s| (rustix::fs::major(s.st_dev), rustix::fs::minor(s.st_dev)));
    let attr = |name| dev.and_then(|(maj, min)| queue_attr(maj, min, name));
    let (cache, fua) = (attr("write_cache"), attr("fua"));
    let fits = decide(fs, cache.as_deref(), fua.as_deref());
    tracing::debug!(
        dir = %dir.display(),
        fs = ?fs.map(|t| format!("{t:#x}")),
        ?cache,
        ?fua,
        fits,
        "one flush for a group's datafile and value-file writes"
    );
    fits
}

/// `/sys/dev/block/MAJ:MIN/queue/<name>`, trimmed; a partition's queue is its disk's.
fn queue_attr(maj: u32, min: u32, name: &str) -> Option<String> {
    ["queue", "../queue"].into_iter().find_map(|q| {
        let path = format!("/sys/dev/block/{maj}:{min}/{q}/{name}");
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_owned())
    })
}

fn decide(fs_type: Option<u64>, write_cache: Option<&str>, fua: Option<&str>) -> bool {
    matches!(fs_type, Some(EXT4_SUPER_MAGIC | XFS_SUPER_MAGIC))
        && write_cache == Some("write back")
        && fua == Some("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_flush_only_on_ext4_or_xfs_over_a_write_back_cache_without_fua() {
        let wb = Some("write back");
        assert!(decide(Some(EXT4_SUPER_MAGIC), wb, Some("0")));
        assert!(decide(Some(XFS_SUPER_MAGIC), wb, Some("0")));
        // FUA: each O_DSYNC write is a FUA write, no flush to save.
        assert!(!decide(Some(EXT4_SUPER_MAGIC), wb, Some("1")));
        // No volatile cache: nothing to flush.
        assert!(!decide(
            Some(EXT4_SUPER_MAGIC),
            Some("write through"),
            Some("0")
        ));
        // Other file systems (btrfs, tmpfs, overlay) or nothing known.
        assert!(!decide(Some(0x9123_683E), wb, Some("0")));
        assert!(!decide(None, wb, Some("0")));
        assert!(!decide(Some(EXT4_SUPER_MAGIC), None, None));
    }

    #[test]
    fn the_answer_for_a_real_directory_matches_its_sysfs_entries() {
        let dir = std::env::temp_dir();
        let fits = one_flush_fits(&dir);
        let st = rustix::fs::stat(&dir).expect("stat");
        let (maj, min) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
        let fs = rustix::fs::statfs(&dir).expect("statfs").f_type as u64;
        let cache = queue_attr(maj, min, "write_cache");
        let fua = queue_attr(maj, min, "fua");
        assert_eq!(fits, decide(Some(fs), cache.as_deref(), fua.as_deref()));
    }
}
