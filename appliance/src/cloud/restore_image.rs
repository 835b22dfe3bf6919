//! Restore to an image: each disk of a backup written straight into a new EBS snapshot of the service
//! account through the EBS direct APIs (only the allocated blocks: a zero chunk is known without a read
//! and never sent), the snapshots registered as an image with the instance's saved configuration, and
//! the image shared with the member account, which can launch from it (`--launch` does).
//!
//! ```text
//! service: StartSnapshot, PutSnapshotBlock..., CompleteSnapshot per disk; RegisterImage;
//!          ModifyImageAttribute (launch permission), ModifySnapshotAttribute (create volume permission)
//! member:  RunInstances of the image (with --launch)
//! ```
//!
//! No volume, no access node and no VM Import: the image is ready when its snapshots are complete. What
//! the job made is its own (tagged with the job, journaled, undone on failure) until it succeeds; then it
//! is handed over to the user.

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_ec2::types::OperationType;

use super::ebs_upload::BackupBlocks;
use super::instance_config::InstanceConfig;
use super::restore::{launch, register, restore_tags, share_image, Request, Restored};
use super::workflow::{share_snapshots, Made, NewSnapshot, Report, Workflow};
use super::{accounts::SERVICE, sdk, CloudError};

/// The restore's own steps (`restore::run` prepares and ends the job).
pub(super) async fn restore(
    job: &Workflow<'_>,
    library: Arc<dedup::Library>,
    backup: &dedup::Manifest,
    config: &InstanceConfig,
    req: &Request,
    report: Arc<dyn Report>,
    made: &mut Made,
) -> Result<Restored, CloudError> {
    let started = Instant::now();
    let member_id = job.cloud.accounts.account_id(&job.member_account, &job.region).await?;
    let ebs = sdk::ebs(&job.cloud.accounts.config(SERVICE, &job.region, "restore").await?);
    let name_tag = super::restore::name_tags(backup);
    let total: u64 = backup.disks.iter().map(|d| d.size).sum();

    let mut snapshots = Vec::new();
    let mut written = 0u64;
    let mut done_before = 0u64;
    for (n, bd) in config.block_devices.iter().enumerate() {
        report.step(&format!("writing disk {n} into a snapshot through the EBS direct APIs"));
        let disk = {
            let (lib, m) = (library.clone(), backup.clone());
            tokio::task::spawn_blocking(move || dedup::BackupDisk::open(lib, &m, n))
                .await
                .map_err(|e| CloudError::Conflict(format!("opening disk {n}: {e}")))?
                .map_err(|e| CloudError::Conflict(format!("opening disk {n} of backup {}: {e}", backup.id)))?
        };
        let size = disk.size();
        let tags: Vec<(String, String)> = restore_tags(job, &name_tag)
            .iter()
            .map(|t| (t.key().unwrap_or_default().into(), t.value().unwrap_or_default().into()))
            .collect();
        let progress = |done: u64, _| report.bytes(done_before + done, total);
        let new = NewSnapshot {
            disk: n,
            in_member: false,
            source: Arc::new(BackupBlocks(Arc::new(disk))),
            size_gib: Some(bd.size_gib.max(1) as u64),
            parent: None,
            description: format!("livemount restore of disk {n} of backup {}", backup.id),
            tags,
        };
        let uploaded = job.write_snapshot(&ebs, new, &progress, made).await;
        let uploaded = uploaded?;
        written += uploaded.bytes_written;
        done_before += size;
        snapshots.push(uploaded.snapshot_id);
    }
    report.step("waiting for the snapshots to complete");
    for snap in &snapshots {
        super::images::wait_snapshot(&job.service, snap).await?;
    }

    report.step("registering the image and sharing it with the member account");
    let image = register(job, config, &snapshots, &name_tag, made).await?;
    share_image(job, &image, &member_id).await?;
    share_snapshots(&job.service, SERVICE, &snapshots, &member_id, OperationType::Add).await?;

    let instance_id = if req.launch {
        report.step("launching the instance in the member account");
        Some(launch(job, &image, config, req, made).await?)
    } else {
        None
    };
    Ok(Restored {
        backup: backup.id.clone(),
        account: job.member_account.clone(),
        region: job.region.clone(),
        image_id: Some(image),
        snapshots,
        volumes: Vec::new(),
        instance_id,
        bytes_written: written,
        seconds: started.elapsed().as_secs_f64(),
    })
}
