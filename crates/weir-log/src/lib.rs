//! weir's append-only task log (under construction): so far the file layer it runs on,
//! `Storage`, on the real file system and simulated with power loss and faults.

#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod storage;

pub use storage::{RealStorage, Storage, StorageFile};
