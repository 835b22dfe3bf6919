//! Streaming backup of an EC2 instance of a member account, with as little as possible happening there:
//!
//! ```text
//! member:  CreateImage of the instance (crash-consistent snapshots of every attached volume),
//!          share the image and its snapshots with the service account
//! service: CreateVolume from each shared snapshot in the access node's zone, AttachVolume to the access
//!          node, find each device, back all of them up as one backup, DetachVolume, DeleteVolume
//! member:  DeregisterImage, DeleteSnapshot
//! ```
//!
//! The undo runs whatever happened (the volumes, then the image and its snapshots). The manifest keeps
//! what a restore needs to launch the instance again (`InstanceConfig`).

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::workflow::{this_instance, Made, Report, Workflow};
use super::{accounts::SERVICE, Cloud, CloudError};

/// What `cloud backup` asks for.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = StreamingBackupRequest)]
pub struct Request {
    pub instance: String,
    pub account: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub no_reboot: bool,
    /// The instance the volumes are attached to; by default this one (instance metadata, IMDSv2).
    #[serde(default)]
    pub access_node: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
}

/// Runs a streaming backup; gives the new backup's manifest.
pub async fn run(
    cloud: &Cloud,
    library: Arc<dedup::Library>,
    devices_dir: &Path,
    job_id: &str,
    req: &Request,
    report: Arc<dyn Report>,
) -> Result<dedup::Manifest, CloudError> {
    let job = Workflow::new(cloud, job_id, &req.account, req.region.as_deref()).await?;
    let mut made = Made::default();
    let result = back_up(&job, library, devices_dir, req, report.clone(), &mut made).await;
    report.step("removing the volumes, the image and its snapshots");
    job.finish(result, &made, &job.purpose, |m| format!("backup {} was made", m.id)).await
}

async fn back_up(
    job: &Workflow<'_>,
    library: Arc<dedup::Library>,
    devices_dir: &Path,
    req: &Request,
    report: Arc<dyn Report>,
    made: &mut Made,
) -> Result<dedup::Manifest, CloudError> {
    report.step("looking at the instance");
    let mut config = job.instance_config(&req.instance).await?;
    let access_node = match &req.access_node {
        Some(id) => id.clone(),
        None => this_instance().await?,
    };
    let zone = job.zone_of(&access_node).await?;
    let service_id = job.cloud.accounts.account_id(SERVICE, &job.region).await?;

    report.step("creating an image of the instance in the member account");
    let image = job.create_image(&req.instance, req.no_reboot, &job.purpose, made).await?;
    let mut snapshots = job.wait_image(&image, &job.purpose, made).await?;

    report.step("sharing the image and its snapshots with the service account");
    job.share(&image, &snapshots, &service_id).await?;

    // The backup's disks in the instance's device order, each described as the instance has it (the
    // snapshot it was read from is gone after the job, so the manifest does not name it).
    config.block_devices = Workflow::in_snapshot_order(&config, &mut snapshots)
        .into_iter()
        .map(|bd| super::instance_config::BlockDevice { snapshot_id: None, ..bd })
        .collect();
    let ids: Vec<String> = snapshots.into_iter().map(|(_, s)| s).collect();
    let name = req.name.clone().or_else(|| config.tags.get("Name").cloned());
    job.back_up_snapshots(library, devices_dir, &access_node, &zone, &ids, &config, name, report, made).await
}
