//! Backup copy: the data of a snapshot backup (EBS snapshots in the member account) copied into the
//! library as a backup of its own, which then no longer depends on the member account. Two ways:
//!
//! ```text
//! EBS direct (when the member account lets its role read the snapshots that way):
//!   member:  ListSnapshotBlocks, GetSnapshotBlock of each listed block; nothing is made or shared
//! volumes (otherwise, or asked for):
//!   member:  share the snapshots with the service account
//!   service: CreateVolume from each, AttachVolume to the access node, back all of them up as one backup,
//!            DetachVolume, DeleteVolume
//!   member:  take the share back
//! ```
//!
//! The snapshot backup is left as it was; either way the copy has the same chunks as a streaming backup
//! of the same instance at the same moment would.

use std::path::Path;
use std::sync::Arc;

use aws_sdk_ec2::types::OperationType;
use serde::{Deserialize, Serialize};

use super::ebs_backup::SnapshotDisk;
use super::ebs_snapshot::{SnapshotBlocks, DEFAULT_REQUEST_BUDGET};
use super::instance_config::{InstanceConfig, KIND_INSTANCE};
use super::journal::{Kind, Resource};
use super::workflow::{back_up_disks, share_snapshots, this_instance, Made, OpenDisk, Report, Workflow};
use super::{accounts::SERVICE, sdk, Cloud, CloudError};

/// How a copy reads the snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CopyVia {
    /// EBS direct when the member account lets its role read the snapshots that way, else volumes.
    #[default]
    Auto,
    /// EBS direct only: nothing is made or shared in either account.
    EbsDirect,
    /// Volumes made from the shared snapshots, attached to the access node.
    Volumes,
}

/// What `cloud backup-copy` asks for.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = BackupCopyRequest)]
pub struct Request {
    /// The snapshot backup (id, unique id prefix, or name).
    pub backup: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub access_node: Option<String>,
    #[serde(default)]
    pub via: CopyVia,
}

/// The snapshot backup's configuration; a clear error for a backup that is not one.
pub fn snapshot_backup_config(manifest: &dedup::Manifest) -> Result<InstanceConfig, CloudError> {
    match InstanceConfig::of(manifest) {
        Some(c) if c.is_snapshot_backup() => Ok(c),
        _ => Err(CloudError::BadRequest(format!(
            "backup {} is not a snapshot backup (`livemount cloud snap` makes them): its data is in the library already",
            manifest.id
        ))),
    }
}

/// Copies snapshot backup `snapshot_backup` into the library; gives the new backup's manifest.
pub async fn run(
    cloud: &Cloud,
    library: Arc<dedup::Library>,
    devices_dir: &Path,
    job_id: &str,
    snapshot_backup: &dedup::Manifest,
    req: &Request,
    report: Arc<dyn Report>,
) -> Result<dedup::Manifest, CloudError> {
    let config = snapshot_backup_config(snapshot_backup)?;
    let snapshots: Vec<String> = config.block_devices.iter().filter_map(|b| b.snapshot_id.clone()).collect();
    if snapshots.len() != config.block_devices.len() || snapshots.is_empty() {
        return Err(CloudError::BadRequest(format!(
            "snapshot backup {} does not name a snapshot for each of its disks",
            snapshot_backup.id
        )));
    }
    let name = req.name.clone().or_else(|| snapshot_backup.name.clone());
    let copied = copied_config(snapshot_backup, config.clone());
    if req.via != CopyVia::Volumes {
        report.step("listing the snapshots' blocks (EBS direct)");
        match open_snapshots(cloud, &config, &snapshots).await {
            Ok(blocks) => {
                report.step("reading the snapshots' blocks into the library (EBS direct)");
                let runtime = tokio::runtime::Handle::current();
                let opens: Vec<OpenDisk> = blocks
                    .into_iter()
                    .map(|b| -> OpenDisk {
                        let runtime = runtime.clone();
                        Box::new(move || Ok(Box::new(SnapshotDisk::new(b, runtime, None)) as _))
                    })
                    .collect();
                return back_up_disks(library, &copied, opens, name, report).await;
            }
            Err(e) if req.via == CopyVia::Auto && refused(&e) => {
                tracing::info!(job = job_id, "EBS direct cannot read the snapshots ({e}); copying through volumes");
                report.step("EBS direct refused: copying through volumes");
            }
            Err(e) => return Err(e),
        }
    }
    let job = Workflow::new(cloud, job_id, &config.account, Some(&config.region)).await?;
    let mut made = Made::default();
    let result =
        copy_through_volumes(&job, library, devices_dir, &copied, &snapshots, name, req, report.clone(), &mut made)
            .await;
    report.step("removing the volumes and taking the share back");
    job.finish(result, &made, &job.purpose, |m| format!("backup {} was made", m.id)).await
}

/// The copy is a backup of the instance as it was when the snapshots were taken.
fn copied_config(snapshot_backup: &dedup::Manifest, mut config: InstanceConfig) -> InstanceConfig {
    config.kind = KIND_INSTANCE.into();
    config.image_id = None;
    config.copy_of = Some(snapshot_backup.id.clone());
    for bd in &mut config.block_devices {
        bd.snapshot_id = None;
    }
    config
}

/// Each snapshot's block list, read in the member account through EBS direct.
async fn open_snapshots(
    cloud: &Cloud,
    config: &InstanceConfig,
    snapshots: &[String],
) -> Result<Vec<Arc<SnapshotBlocks>>, CloudError> {
    let ebs = sdk::ebs(&cloud.accounts.config(&config.account, &config.region, "backup-copy").await?);
    let mut blocks = Vec::new();
    for snap in snapshots {
        blocks.push(Arc::new(SnapshotBlocks::open(ebs.clone(), &config.account, snap, DEFAULT_REQUEST_BUDGET).await?));
    }
    Ok(blocks)
}

/// Whether EBS direct refused to read (no permission, as for a role without the `ebs:` actions or a key
/// it may not use): volumes may still work.
fn refused(e: &CloudError) -> bool {
    matches!(e.code(), Some("AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation"))
}

#[allow(clippy::too_many_arguments)]
async fn copy_through_volumes(
    job: &Workflow<'_>,
    library: Arc<dedup::Library>,
    devices_dir: &Path,
    config: &InstanceConfig,
    snapshots: &[String],
    name: Option<String>,
    req: &Request,
    report: Arc<dyn Report>,
    made: &mut Made,
) -> Result<dedup::Manifest, CloudError> {
    let access_node = match &req.access_node {
        Some(id) => id.clone(),
        None => this_instance().await?,
    };
    let zone = job.zone_of(&access_node).await?;
    let service_id = job.cloud.accounts.account_id(SERVICE, &job.region).await?;

    report.step("sharing the snapshots with the service account");
    // Each share is journaled like a resource: the job's undo, or after a `kill -9` the next start, takes
    // it back.
    for (n, snap) in snapshots.iter().enumerate() {
        let token = format!("{}-share-{n}", job.job_id);
        let share = Resource::planned(Kind::Share, &job.member_account, &job.region, &job.purpose, &token);
        job.cloud.journal.intent(&share)?;
        job.cloud.journal.made(&token, snap)?;
        made.add(Kind::Share, true, &token, snap);
        share_snapshots(&job.member, &job.member_account, std::slice::from_ref(snap), &service_id, OperationType::Add)
            .await?;
    }
    job.back_up_snapshots(library, devices_dir, &access_node, &zone, snapshots, config, name, report, made).await
}
