//! Files of a store directory other than the active datafile's appends: the sequential scan of
//! datafiles, hint files, the merge manifest and the keydir snapshot.

pub(crate) mod datafile;
pub(crate) mod hint;
pub(crate) mod manifest;
pub(crate) mod snapshot;
