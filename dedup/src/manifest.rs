//! The backup manifest (`backups/<id>/manifest.json`): what a backup is. The chunk ids of each disk are in
//! the disk's index file beside it; the manifest names that file and its checksum.
//!
//! Fields added later get `#[serde(default)]` so that older manifests stay readable.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// RFC 3339 time at which the backup was taken.
    pub created: String,
    pub disks: Vec<DiskManifest>,
    #[serde(default)]
    pub stats: IngestStats,
    /// Where the disks came from beyond their paths, as the program that made the backup records it (a
    /// cloud backup: the instance's configuration, what a restore needs to launch it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskManifest {
    /// Where the disk came from (a path as given to `backup create`).
    pub source: String,
    /// The source's format: raw, a block device, or an image format read through qemu (qcow2, vmdk, ...).
    pub format: String,
    pub size: u64,
    pub chunk_size: u32,
    pub chunk_count: u64,
    /// Chunks that are all zeros (not stored).
    pub zero_chunks: u64,
    /// File name of the disk's index, beside the manifest.
    pub index_file: String,
    /// BLAKE3 of the index file.
    pub index_blake3: String,
    #[serde(default)]
    pub partition_table: Option<PartitionSummary>,
}

/// A summary of the partition table found at the start of a disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSummary {
    /// "gpt" or "mbr".
    pub scheme: String,
    pub partitions: Vec<PartitionEntry>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionEntry {
    pub number: u32,
    /// Byte offset of the partition on the disk.
    pub start: u64,
    pub size: u64,
    /// The type as found in the table: an MBR type byte ("0x83") or a GPT type GUID.
    pub type_id: String,
    /// A readable name of the type ("Linux filesystem", "EFI System", ...).
    pub type_name: String,
}

/// What a backup did; printed by `backup create --json` and kept in the manifest.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IngestStats {
    /// Bytes of the disks (their full sizes).
    pub disk_bytes: u64,
    /// Bytes read from the sources (allocated data only; holes and unallocated space are skipped).
    pub bytes_read: u64,
    /// Bytes written to the library for new chunks (compressed, with headers).
    pub new_bytes_stored: u64,
    /// Plain bytes of the new chunks.
    pub new_bytes_plain: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
    pub chunks_zero: u64,
    pub seconds: f64,
    /// Where the time went.
    #[serde(default)]
    pub time: IngestTimes,
}

/// Where a backup's time went, in seconds summed over the threads that spent it (a pipeline's stages overlap,
/// so these add up to more than the wall time when the cores are busy).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IngestTimes {
    /// The reader reading the sources.
    pub read: f64,
    /// The reader waiting for a worker to take what it read (the workers were busy).
    pub read_waiting: f64,
    /// Workers hashing chunks (and telling zero chunks).
    pub hash: f64,
    /// Workers compressing new chunks.
    pub compress: f64,
    /// Workers looking chunks up and writing new ones to the store.
    pub store: f64,
    /// Workers waiting for the reader.
    pub workers_waiting: f64,
    /// Making the stored chunks durable at the end (what was not done while the workers worked).
    pub sync: f64,
}

impl IngestTimes {
    pub fn add(&mut self, other: &IngestTimes) {
        self.read += other.read;
        self.read_waiting += other.read_waiting;
        self.hash += other.hash;
        self.compress += other.compress;
        self.store += other.store;
        self.workers_waiting += other.workers_waiting;
        self.sync += other.sync;
    }
}

impl IngestStats {
    pub fn add(&mut self, other: &IngestStats) {
        self.disk_bytes += other.disk_bytes;
        self.bytes_read += other.bytes_read;
        self.new_bytes_stored += other.new_bytes_stored;
        self.new_bytes_plain += other.new_bytes_plain;
        self.chunks_new += other.chunks_new;
        self.chunks_reused += other.chunks_reused;
        self.chunks_zero += other.chunks_zero;
        self.time.add(&other.time);
    }
}
