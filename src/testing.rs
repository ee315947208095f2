//! Tools for testing applications (and ringcask itself) against failures: a fault-injecting IO
//! layer that crashes the store after the N-th operation, tears writes, fails reads, stalls the
//! disk, or models a power cut. Pass one to [`crate::Options::fault_injector`].
//!
//! ```
//! # fn main() -> Result<(), ringcask::Error> {
//! # let tmp = tempfile::tempdir()?;
//! use ringcask::testing::FaultInjector;
//! use ringcask::{Db, Options};
//!
//! futures::executor::block_on(async {
//!     let fault = FaultInjector::new();
//!     let db = Db::open(tmp.path(), Options::default().fault_injector(fault.clone())).await?;
//!     db.put("k", "v").await?;
//!     fault.crash_after(0); // the next write, sync or rename fails, as if the process died
//!     assert!(db.put("k", "w").await.is_err());
//!     drop(db);
//!     let db = Db::open(tmp.path(), Options::default()).await?;
//!     assert_eq!(db.get("k").await?.as_deref(), Some(&b"v"[..]));
//!     db.close().await
//! })
//! # }
//! ```

pub use crate::fault::{FaultInjector, PowerCut};
