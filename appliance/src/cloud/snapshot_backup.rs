//! Snapshot backup of an EC2 instance of a member account: an image of the instance (crash-consistent
//! snapshots of every attached volume) that stays in the member account, and a catalog entry in the
//! library that holds the instance's configuration and the snapshot ids. No data is copied; `cloud
//! backup-copy` copies it into the library later, and forgetting the backup deregisters the image and
//! deletes its snapshots.
//!
//! ```text
//! member:  CreateImage of the instance, tag its snapshots
//! library: a backup of kind `ec2-snapshots` without disks (its origin names the image and snapshots)
//! ```
//!
//! The backup's id is chosen first and the image and snapshots carry it (`livemount:backup`) from the
//! call that makes them: they are in use while the job runs or the library lists the backup, so that a
//! job cut off before the catalog entry was written leaves only resources that the next start (or `cloud
//! cleanup`) removes, and a finished one leaves exactly what the backup needs.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::instance_config::KIND_SNAPSHOTS;
use super::journal::Purpose;
use super::workflow::{Made, Report, Workflow};
use super::{Cloud, CloudError};

/// What `cloud snap` asks for.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = SnapshotBackupRequest)]
pub struct Request {
    pub instance: String,
    pub account: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub no_reboot: bool,
    #[serde(default)]
    pub region: Option<String>,
}

/// Runs a snapshot backup under the backup id `backup_id` (from `dedup::ingest::new_backup_id`, which the
/// job owns while it runs); gives the catalog entry.
pub async fn run(
    cloud: &Cloud,
    library: Arc<dedup::Library>,
    job_id: &str,
    backup_id: &str,
    req: &Request,
    report: Arc<dyn Report>,
) -> Result<dedup::Manifest, CloudError> {
    let job = Workflow::new(cloud, job_id, &req.account, req.region.as_deref()).await?;
    let kept = Purpose::Backup(backup_id.to_string());
    let mut made = Made::default();
    let result = snap(&job, library, backup_id, &kept, req, report.clone(), &mut made).await;
    // What a snapshot backup made is the backup: it is undone only when the backup was not made.
    let undo = if result.is_ok() { Made::default() } else { made };
    if result.is_err() {
        report.step("removing the image and its snapshots");
    }
    job.finish(result, &undo, &kept, |m| format!("snapshot backup {} was made", m.id)).await
}

async fn snap(
    job: &Workflow<'_>,
    library: Arc<dedup::Library>,
    backup_id: &str,
    kept: &Purpose,
    req: &Request,
    report: Arc<dyn Report>,
    made: &mut Made,
) -> Result<dedup::Manifest, CloudError> {
    report.step("looking at the instance");
    let mut config = job.instance_config(&req.instance).await?;

    report.step("creating an image of the instance in the member account");
    let image = job.create_image(&req.instance, req.no_reboot, kept, made).await?;
    let mut snapshots = job.wait_image(&image, kept, made).await?;

    report.step("writing the catalog entry");
    config.kind = KIND_SNAPSHOTS.into();
    config.image_id = Some(image);
    config.block_devices = Workflow::in_snapshot_order(&config, &mut snapshots);
    let name = req.name.clone().or_else(|| config.tags.get("Name").cloned());
    let origin = serde_json::to_value(&config).expect("plain data");
    let id = backup_id.to_string();
    tokio::task::spawn_blocking(move || dedup::ingest::create_catalog_entry(&library, &id, name, origin))
        .await
        .map_err(|e| CloudError::Conflict(format!("the catalog's worker stopped: {e}")))?
        .map_err(|e| CloudError::Conflict(format!("writing the snapshot backup's catalog entry failed: {e}")))
}

/// After a snapshot backup was forgotten in the library: removes its image and snapshots in the member
/// account. Should that fail, they are no longer in use and the next start or `cloud cleanup` removes them.
pub async fn remove_data(cloud: &Cloud, forgotten: &dedup::Manifest) -> Result<(), CloudError> {
    match super::cleanup::remove_purpose(cloud, &Purpose::Backup(forgotten.id.clone())).await {
        Ok(n) => {
            tracing::info!(backup = %forgotten.id, removed = n, "the snapshot backup's image and snapshots removed");
            Ok(())
        }
        Err(e) => Err(CloudError::Unfinished {
            outcome: format!("snapshot backup {} was forgotten", forgotten.id),
            undo: Box::new(e),
        }),
    }
}
