//! Backup copy: the data of a snapshot backup (EBS snapshots in the member account) copied into the
//! library as a backup of its own, which then no longer depends on the member account.
//!
//! ```text
//! member:  share the snapshots with the service account
//! service: CreateVolume from each, AttachVolume to the access node, back all of them up as one backup,
//!          DetachVolume, DeleteVolume
//! member:  take the share back
//! ```
//!
//! The snapshot backup is left as it was; the copy has the same chunks as a streaming backup of the same
//! instance at the same moment would.

use std::path::Path;
use std::sync::Arc;

use aws_sdk_ec2::types::OperationType;
use serde::{Deserialize, Serialize};

use super::instance_config::{InstanceConfig, KIND_INSTANCE};
use super::journal::{Kind, Resource};
use super::workflow::{share_snapshots, this_instance, Made, Report, Workflow};
use super::{accounts::SERVICE, Cloud, CloudError};

/// What `cloud backup-copy` asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The snapshot backup (id, unique id prefix, or name).
    pub backup: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub access_node: Option<String>,
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
    let job = Workflow::new(cloud, job_id, &config.account, Some(&config.region)).await?;
    let snapshots: Vec<String> = config.block_devices.iter().filter_map(|b| b.snapshot_id.clone()).collect();
    let mut made = Made::default();
    let result =
        copy(&job, library, devices_dir, snapshot_backup, config, &snapshots, req, report.clone(), &mut made).await;
    report.step("removing the volumes and taking the share back");
    job.finish(result, &made, &job.purpose, |m| format!("backup {} was made", m.id)).await
}

#[allow(clippy::too_many_arguments)]
async fn copy(
    job: &Workflow<'_>,
    library: Arc<dedup::Library>,
    devices_dir: &Path,
    snapshot_backup: &dedup::Manifest,
    mut config: InstanceConfig,
    snapshots: &[String],
    req: &Request,
    report: Arc<dyn Report>,
    made: &mut Made,
) -> Result<dedup::Manifest, CloudError> {
    if snapshots.len() != config.block_devices.len() || snapshots.is_empty() {
        return Err(CloudError::BadRequest(format!(
            "snapshot backup {} does not name a snapshot for each of its disks",
            snapshot_backup.id
        )));
    }
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

    // The copy is a backup of the instance as it was when the snapshots were taken.
    config.kind = KIND_INSTANCE.into();
    config.image_id = None;
    config.copy_of = Some(snapshot_backup.id.clone());
    for bd in &mut config.block_devices {
        bd.snapshot_id = None;
    }
    let name = req.name.clone().or_else(|| snapshot_backup.name.clone());
    job.back_up_snapshots(library, devices_dir, &access_node, &zone, snapshots, &config, name, report, made).await
}
