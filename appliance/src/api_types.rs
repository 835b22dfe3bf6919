//! The JSON bodies of the daemon's control API, shared by the daemon and the CLI, and how a pseudo-disk's
//! counters become the API's. (The daemon's own state becomes these types in `daemon/api_info.rs`, next
//! to that state, whose types are private to the daemon.)

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
    /// Prepare the guest and publish an iPXE script so that a VM boots from the mount.
    #[serde(default)]
    pub boot: Option<BootRequest>,
    /// With `backup` = `ebs:snap-…`: the cloud account that reads the snapshot.
    #[serde(default)]
    pub account: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct BootRequest {
    /// The MAC address of the machine that boots this mount (the entry script picks the mount by it).
    #[serde(default)]
    pub mac: Option<String>,
    /// The guest already boots from iSCSI (its initramfs logs in from the iBFT): publish the script
    /// without preparing it.
    #[serde(default)]
    pub skip_prepare: bool,
    /// Launch the VM in AWS from the iPXE image.
    #[serde(default)]
    pub cloud: Option<CloudRequest>,
}

/// Where and how `mount --boot --cloud` launches the VM.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CloudRequest {
    /// The account to launch in: a member account's name, or `service`.
    pub account: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub instance_type: Option<String>,
}

/// How to boot a mount.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BootInfo {
    /// The per-mount iPXE script (unguessable URL).
    pub script_url: String,
    /// The fixed entry script a boot image carries; it chains to the per-mount script.
    pub entry_url: String,
    /// iPXE's SAN URI of the boot disk.
    pub sanboot: String,
    pub initiator_iqn: String,
    pub mac: Option<String>,
    /// The prepared guest and what was changed in it.
    pub guest_os: String,
    pub changes: Vec<String>,
    /// A QEMU command line that boots the mount (user-mode networking: the host is 10.0.2.2).
    pub qemu_command: String,
}

/// Who may log in to a mount's iSCSI target.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
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

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
    /// Set for mounts made to boot a VM.
    #[serde(default)]
    pub boot: Option<BootInfo>,
    /// Set for mounts whose VM runs in AWS.
    #[serde(default)]
    pub cloud: Option<CloudInfo>,
}

/// The cloud part of a mount: the instance that boots it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CloudInfo {
    #[serde(flatten)]
    pub mount: crate::cloud::instances::CloudMount,
    /// How to read the instance's serial console.
    pub console: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DiskInfo {
    pub disk: usize,
    pub size: u64,
    /// The disk as a file of the FUSE view.
    pub fuse_path: String,
    /// The disk as an iSCSI LUN (iscsi://ADDR:PORT/IQN/LUN).
    pub iscsi_url: String,
    pub counters: DiskCounters,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
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

/// A pseudo-disk's counters as the API shows them. The snapshot does not know how many chunks the disk has:
/// `chunks_total` is left 0 for the caller to fill in from the disk.
impl From<blockdev::pseudo_disk::CounterSnapshot> for DiskCounters {
    fn from(c: blockdev::pseudo_disk::CounterSnapshot) -> Self {
        DiskCounters {
            bytes_read: c.bytes_read,
            bytes_written: c.bytes_written,
            bytes_recalled: c.bytes_recalled,
            chunks_recalled: c.chunks_recalled,
            read_bytes_private: c.read_bytes_private,
            read_bytes_recall: c.read_bytes_recall,
            flushes: c.flushes,
            private_blocks: c.private_blocks,
            recalled_chunks: c.recalled_chunks,
            chunks_total: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BrowseRequest {
    pub backup: String,
    /// With `backup` = `ebs:snap-…`: the cloud account that reads the snapshot.
    #[serde(default)]
    pub account: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BrowseInfo {
    pub loop_devices: Vec<String>,
    pub filesystems: Vec<BrowsedFs>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BrowsedFs {
    pub disk: usize,
    pub partition: u32,
    pub device: String,
    pub fstype: String,
    pub path: String,
}

/// The body of every error answer: what went wrong, with its cause.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// `cloud account add`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccountRequest {
    pub name: String,
    pub role_arn: String,
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
}

/// `cloud account check`: the account the credentials reached.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccountCheck {
    pub name: String,
    pub account_id: String,
    pub arn: String,
    pub region: String,
}

/// `cloud image ipxe`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct IpxeImageRequest {
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub share_with: Vec<String>,
}

/// `cloud image publish`: the access node's disk image (raw, on the appliance) as a machine image.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct AccessNodeImageRequest {
    /// The raw disk image's path on the appliance (`livemount image appliance` writes one).
    pub disk: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub share_with: Vec<String>,
}

/// `cloud cleanup`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CleanupRequest {
    #[serde(default)]
    pub dry_run: bool,
    /// Also remove the iPXE images (kept otherwise: every cloud mount launches from them).
    #[serde(default)]
    pub images: bool,
}

/// `POST /v1/mounts/{id}/commit`: the new backup's name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CommitRequest {
    #[serde(default)]
    pub name: Option<String>,
}

/// `token create`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenRequest {
    pub name: String,
}

/// A new token: the only time it is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub name: String,
    pub token: String,
}

/// `token list`: the tokens that work (never the tokens themselves).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub name: String,
    pub created: String,
}

/// `GET /v1/status`: the appliance at a glance (`livemount status`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusInfo {
    pub version: String,
    pub uptime_secs: u64,
    pub library: String,
    /// The portal's advertised address.
    pub portal: String,
    /// The remote API's address, when it is on.
    #[serde(default)]
    pub remote_api: Option<String>,
    pub mounts: usize,
    pub iscsi_sessions: usize,
    pub jobs_running: usize,
    /// The chunk cache of a library in S3.
    #[serde(default)]
    #[schema(value_type = Option<CacheStatsSchema>)]
    pub chunk_cache: Option<dedup::cache::CacheStats>,
}

/// `dedup::cache::CacheStats` as the OpenAPI document shows it: dedup does not depend on utoipa, so this
/// stand-in carries its fields (a test in `daemon/openapi.rs` checks that they are the same).
#[derive(ToSchema)]
#[schema(as = CacheStats)]
#[allow(dead_code)] // Only its schema is used.
pub struct CacheStatsSchema {
    hits: u64,
    /// Chunks fetched from the store (each at most once at a time, whoever asked).
    fetches: u64,
    /// Chunks evicted to keep within the capacity.
    evictions: u64,
    chunks: u64,
    bytes: u64,
    capacity: u64,
}

/// `GET /v1/health`: the daemon answers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `DELETE /v1/cloud/snapshot-backups/{id}`: the backup forgotten.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Forgotten {
    /// The backup's id.
    pub forgotten: String,
}

/// `DELETE /v1/tokens/{name}`: the token revoked.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Revoked {
    /// The token's name.
    pub revoked: String,
}
