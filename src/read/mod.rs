//! The read path: the table of open datafiles, the io threads that serve cache misses, and the
//! optional value cache.

pub(crate) mod cache;
pub(crate) mod filetable;
pub(crate) mod reader;
pub(crate) mod regime;
pub(crate) mod ring;
