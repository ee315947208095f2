//! The write path: requests and batches, the appender that writes on callers' threads, group
//! commit and the writer thread that owns rotation, syncs and sealing.

pub(crate) mod batch;
pub(crate) mod writer;

pub use batch::WriteBatch;
