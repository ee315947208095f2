//! How the direct-IO writer makes a group durable when it writes two files.

use super::Options;

/// How the direct-IO writer makes a group durable when the group writes both the active
/// datafile and its value file (values kept apart, see [`Options::values_apart`]): see
/// [`Options::group_flush`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum GroupFlush {
    /// [`GroupFlush::Once`] where it is known to be safe and faster — the directory is on
    /// ext4 or XFS, and its block device has a volatile write cache but no FUA (read from
    /// `/sys/dev/block/MAJ:MIN/queue/{write_cache,fua}`) — else [`GroupFlush::EachWrite`]
    /// (default).
    #[default]
    Auto,
    /// Each file's write is an `O_DIRECT | O_DSYNC` write: durable on its own. Where the
    /// device has no FUA, the kernel follows each with a flush of the device's cache: two
    /// flushes a group.
    EachWrite,
    /// Both writes are plain `O_DIRECT` writes in flight together, then one `fdatasync` of
    /// the datafile once both completed. That `fdatasync` flushes the device's whole write
    /// cache, so it makes the value file's write durable too: ext4 and XFS issue the flush
    /// for every `fdatasync` of a file written to, whether or not it has metadata to commit.
    /// The value file's write needs no metadata of its own: it rewrites blocks the writer
    /// wrote with zeroes ahead of it (a value-file write that reaches past them gets an
    /// `fdatasync` of its own). Only as safe as that flush: do not force it on a file system
    /// that may skip it.
    Once,
}

impl Options {
    /// How the direct-IO writer makes a group durable when it writes both the active datafile
    /// and its value file (see [`GroupFlush`]). Default: [`GroupFlush::Auto`].
    ///
    /// On a device without FUA (this project's virtio disk) each `O_DSYNC` write costs a
    /// cache flush of its own. Measured on it with a scratch loop (a 16 KiB and a 4 KiB
    /// `O_DIRECT` write in flight together over written blocks, 2 rounds of 3 s): both
    /// `O_DSYNC`, 4.3k / 5.2k groups a second; both plain and one `fdatasync` after, 6.8k /
    /// 7.4k; one `O_DSYNC` write alone, 8.2k / 8.4k.
    pub fn group_flush(mut self, how: GroupFlush) -> Self {
        self.group_flush = how;
        self
    }
}
