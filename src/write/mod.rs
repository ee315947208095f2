//! The write path: appends to the active datafile, group commit of syncs, rotation and sealing.
//!
//! Appends are positioned `pwrite`s made under one mutex ([`Appender`]) by whoever submits the
//! write: normally the caller's own thread (an *inline* append: no hop to another thread), or the
//! writer thread for requests that come over its channel (inline writes turned off, a request
//! over [`INLINE_MAX`], or an active file that is full and must be rotated first). In the same
//! critical section, right after the bytes are written (or, under the direct-IO writer, copied
//! into the tail readers see), the keydir is updated, so the keydir never points at bytes a
//! reader cannot find and a cancelled caller cannot leave the two apart.
//!
//! The writer thread (an io thread with its own io_uring) does everything else that waits on
//! the disk: `fdatasync` groups (every durable writer whose append landed before a sync starts
//! shares it), the interval sync, rotation and sealing (trim, sync, hint file), and close.
//! Under the direct-IO writer on a shared ring, a lone durable caller makes its group write
//! itself instead (see [`group`]).
//!
//! Why not append through io_uring: on ext4 a buffered io_uring write is punted to an io-wq
//! worker (measured ~50 µs per append, against ~1 µs for `pwrite`; `RWF_NOWAIT` writes are
//! refused), and a hop to the writer thread costs more than the write itself. Under
//! `IoMode::Direct` with `SyncPolicy::Always` the ring does carry the writes: appends only copy
//! records into the active file's in-memory [`tail`], and each group is written as one
//! `O_DIRECT | O_DSYNC` write (see [`tail`], `direct` and [`group`]).

mod appender;
pub(crate) mod batch;
mod direct;
mod group;
mod lead;
mod own;
mod request;
pub(crate) mod tail;
mod writer;

pub(crate) use appender::Appender;
pub use batch::WriteBatch;
pub(crate) use request::{
    request_sync, request_writeback, Appended, BatchIf, Cond, Op, ReqRef, Request, WriteMsg,
    INLINE_MAX,
};
pub(crate) use writer::Writer;
