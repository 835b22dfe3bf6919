//! The livemount dedup library: disks backed up into a content-addressed store, read back at random.
//!
//! # Design
//! - **Content addressing.** A disk is cut into fixed-size chunks aligned to the disk (O(1) lookup of the
//!   chunk of any offset; file systems keep their blocks aligned, so equal data dedups). A chunk's id is the
//!   BLAKE3 hash of its plain bytes; it is stored zstd-compressed behind a small self-describing header
//!   (`chunk.rs`). All-zero chunks are not stored.
//! - **Backups.** A backup is a folder holding `manifest.json` (`manifest.rs`) and one binary index of chunk
//!   ids per disk (`index.rs`). It appears in one rename once every chunk it names is durable.
//! - **Durability.** Every file that says something is written through `durable.rs`: temporary file, fsync,
//!   rename, fsync of the folder. Chunks are appended to pack files (`store/pack.rs`), each fdatasynced before
//!   its index is written that way. A crash leaves only temporary files and packs without an index, which `gc`
//!   removes (`library repair` rebuilds an index from its pack).
//! - **Concurrency.** Any number of backups and readers may run at once. Garbage collection is mark and sweep
//!   by time, made safe against backups in progress by a registry and one lock (`gc.rs`).
//!
//! Where things are: `ingest.rs` (backing up), `source/` (what is backed up: raw files, block devices, qemu
//! image formats), `reader.rs` (random-access reads), `restore.rs`, `verify.rs`, `gc.rs`, `stats.rs`,
//! `store/` (chunk stores), `library.rs` (the folder layout).

pub mod aligned;
pub mod cache;
pub mod chunk;
pub mod durable;
pub mod error;
pub mod formats;
pub mod gc;
pub mod index;
pub mod ingest;
pub mod library;
mod lock;
pub mod manifest;
pub mod reader;
pub mod record_file;
pub mod restore;
pub mod s3;
pub mod source;
pub mod stats;
pub mod store;
pub mod verify;
mod workers;

pub use chunk::ChunkId;
pub use error::{Error, Result};
pub use library::Library;
pub use manifest::Manifest;
pub use reader::BackupDisk;
