//! The pseudo-disk and its exports.
//!
//! A pseudo-disk (`pseudo_disk/`) serves a backed-up disk as a live, writable disk without restoring it.
//! Reads come from the private store (every write), else from the recall store (chunks recalled before),
//! else the chunk is recalled once from the `Source` into the recall store. Writes go to the private store
//! only: the source is never written. Store I/O runs on the block engine (`engine/`, io_uring).
//!
//! This crate knows nothing of the dedup library or the cloud: it reads through the `Source` trait
//! (`source.rs`), which the appliance implements for a library backup.

pub mod alloc_log;
pub mod bitmap;
pub mod engine;
pub mod error;
pub mod fuse;
pub mod iscsi;
pub mod pseudo_disk;
pub mod scsi;
pub mod source;

pub use error::{Error, Result};
pub use pseudo_disk::{Options, PseudoDisk};
pub use source::{BoxError, Source, SourceError};
