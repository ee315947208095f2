//! loom models of ringcask's keydir protocol — writer put vs merge repoint vs delete vs expiry
//! vs batches vs recovery loads — over every interleaving loom explores. They drive the
//! engine's own keydir (`ringcask::loom_api`: the sharded table and its compare-and-swap rules,
//! built with loom's shard locks), not a stand-in.
//!
//! ```text
//! RUSTFLAGS="--cfg ringcask_loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p ringcask-loom --release
//! ```
//!
//! Without that cfg the crate is empty.

#[cfg(all(test, ringcask_loom))]
mod protocol;
