//! The JSON bodies of the daemon's control API, shared by the daemon and the CLI.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountRequest {
    /// Backup id, unique id prefix, or name.
    pub backup: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub read_only: bool,
    /// iSCSI access rules of the mount's target.
    #[serde(default)]
    pub access: TargetAccess,
}

/// Who may log in to a mount's iSCSI target.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetAccess {
    /// CHAP user and secret initiators must prove.
    #[serde(default)]
    pub chap: Option<(String, String)>,
    /// Mutual CHAP: the target's user and secret.
    #[serde(default)]
    pub mutual_chap: Option<(String, String)>,
    /// Initiator IQNs allowed to log in (empty: all).
    #[serde(default)]
    pub allowed_initiators: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountInfo {
    pub id: String,
    pub name: Option<String>,
    pub backup: String,
    pub read_only: bool,
    pub created: String,
    /// The mount's iSCSI target name.
    pub iqn: String,
    pub disks: Vec<DiskInfo>,
    /// Set while the mount is browsed (its file systems mounted for file recovery).
    #[serde(default)]
    pub browse: Option<BrowseInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskInfo {
    pub disk: usize,
    pub size: u64,
    /// The disk as a file of the FUSE view.
    pub fuse_path: String,
    /// The disk as an iSCSI LUN (iscsi://ADDR:PORT/IQN/LUN).
    pub iscsi_url: String,
    pub counters: DiskCounters,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiskCounters {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub bytes_recalled: u64,
    pub chunks_recalled: u64,
    pub read_bytes_private: u64,
    pub read_bytes_recall: u64,
    pub flushes: u64,
    pub private_blocks: u64,
    pub recalled_chunks: u64,
    /// Chunks of the disk in all.
    pub chunks_total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrowseRequest {
    pub backup: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrowseInfo {
    pub loop_devices: Vec<String>,
    pub filesystems: Vec<BrowsedFs>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrowsedFs {
    pub disk: usize,
    pub partition: u32,
    pub device: String,
    pub fstype: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
