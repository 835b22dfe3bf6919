//! Backing disks up into the library.
//!
//! One disk is ingested as a pipeline that keeps every core busy (`pipeline.rs`): a reader thread reads the
//! chunks that hold data (`read.rs`: holes and unallocated ranges are never read), worker threads hash each
//! chunk, reuse it when the library has it already and otherwise compress and store it (`store.rs`; all-zero
//! chunks are never stored), and the calling thread puts the ids in disk order. When every chunk is durable the
//! backup's folder appears in one rename.

mod pipeline;
mod read;
mod store;
#[cfg(test)]
mod tests;

pub use pipeline::ingest_disk;

use std::path::Path;
use std::time::Instant;

use crate::durable;
use crate::error::Result;
use crate::gc::RunningBackup;
use crate::index::DiskIndex;
use crate::library::{now_rfc3339, Library};
use crate::manifest::{DiskManifest, IngestStats, Manifest, PartitionSummary};
use crate::source::DiskSource;

/// One disk to back up.
pub struct DiskInput {
    /// How the user named the source (recorded in the manifest).
    pub label: String,
    pub source: Box<dyn DiskSource>,
    pub partition_table: Option<PartitionSummary>,
    /// The same disk in an earlier backup: where the source says a chunk is unchanged since then
    /// (`DiskSource::unchanged`), its id is taken from this index and nothing is read. Used only when its
    /// chunk and disk sizes are this backup's.
    pub parent: Option<DiskIndex>,
}

/// Progress of a backup: bytes of disk covered so far out of the total.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// Backs up `disks` as one backup and returns its manifest.
pub fn create_backup(
    lib: &Library,
    name: Option<String>,
    disks: Vec<DiskInput>,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Manifest> {
    create_backup_from(lib, name, None, disks, progress)
}

/// Backs up `disks` as one backup whose manifest records `origin` (see `Manifest::origin`).
pub fn create_backup_from(
    lib: &Library,
    name: Option<String>,
    origin: Option<serde_json::Value>,
    disks: Vec<DiskInput>,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Manifest> {
    let started = Instant::now();
    let id = new_backup_id();
    let running = RunningBackup::register(lib, &id)?;
    lib.store().start_marking();
    // The disk indexes are written as the disks are read, into a folder of their own until published.
    let tmp = lib.backend().start_backup(&id)?;
    let result = (|| {
        let total: u64 = disks.iter().map(|d| d.source.size()).sum();
        let mut done_before = 0u64;
        let mut stats = IngestStats::default();
        let mut disk_manifests = Vec::new();
        for (n, mut disk) in disks.into_iter().enumerate() {
            let size = disk.source.size();
            let report = |done: u64| progress(Progress { done: done_before + done, total });
            let index_file = format!("disk{n}.index");
            let parent = disk.parent.as_ref().filter(|p| p.chunk_size == lib.chunk_size() && p.disk_size == size);
            let (checksum, disk_stats) = ingest_disk(lib, &mut *disk.source, parent, &tmp.join(&index_file), &report)?;
            done_before += size;
            stats.add(&disk_stats);
            disk_manifests.push(DiskManifest {
                source: disk.label,
                format: disk.source.format().to_string(),
                size,
                chunk_size: lib.chunk_size(),
                chunk_count: DiskIndex::chunk_count(size, lib.chunk_size()),
                zero_chunks: disk_stats.chunks_zero,
                index_file,
                index_blake3: checksum,
                partition_table: disk.partition_table,
            });
        }
        let syncing = Instant::now();
        lib.store().sync()?;
        stats.time.sync = syncing.elapsed().as_secs_f64();
        stats.seconds = started.elapsed().as_secs_f64();
        let manifest = Manifest {
            format_version: crate::formats::LIBRARY_FORMAT_VERSION,
            id: id.clone(),
            name,
            created: now_rfc3339(),
            disks: disk_manifests,
            stats,
            origin,
        };
        running.check(&id)?;
        commit_backup(lib, &manifest, &tmp)?;
        Ok(manifest)
    })();
    if result.is_err() {
        lib.backend().discard(&tmp);
    }
    result
}

/// Makes the backup visible: chunk names durable first, then the disk indexes and the manifest, which
/// appears last (see `Backend::publish`).
fn commit_backup(lib: &Library, manifest: &Manifest, tmp: &Path) -> Result<()> {
    lib.store().sync()?;
    let json = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
    let index_files: Vec<String> = manifest.disks.iter().map(|d| d.index_file.clone()).collect();
    lib.backend().publish(&manifest.id, &json, tmp, &index_files)
}

/// Writes a backup that holds no disk of the library: a catalog entry for data kept elsewhere (a snapshot
/// backup's EBS snapshots, which `origin` names), under `id` (from `new_backup_id`, chosen before the data
/// was made so that what holds it can carry the id). Atomic like every backup.
pub fn create_catalog_entry(
    lib: &Library,
    id: &str,
    name: Option<String>,
    origin: serde_json::Value,
) -> Result<Manifest> {
    let tmp = lib.backend().start_backup(id)?;
    let manifest = Manifest {
        format_version: crate::formats::LIBRARY_FORMAT_VERSION,
        id: id.to_string(),
        name,
        created: now_rfc3339(),
        disks: Vec::new(),
        stats: IngestStats::default(),
        origin: Some(origin),
    };
    let result = commit_backup(lib, &manifest, &tmp);
    if result.is_err() {
        lib.backend().discard(&tmp);
    }
    result.map(|()| manifest)
}

/// A new backup id: the UTC time (sortable and readable) and a random part (unique).
pub fn new_backup_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    format!("{}-{}", now.format(fmt).expect("time formats"), &durable::random_suffix()[..6])
}
