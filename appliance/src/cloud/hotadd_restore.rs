//! HotAdd restore: a backup written onto new EBS volumes attached to the access node, which become the
//! member account's volumes (or, with `--launch`, its instance) by way of snapshots shared with it.
//!
//! ```text
//! service: CreateVolume (empty, the disk's size) per disk, AttachVolume to the access node, write the
//!          backup's allocated chunks onto the device (a new volume reads as zeros: zero chunks are not
//!          written), DetachVolume, CreateSnapshot, DeleteVolume, share the snapshots with the member
//! member:  CreateVolume from each snapshot (or, with --launch, RunInstances of an image of them)
//! service: the snapshots (and the image) deleted once the member's volumes exist
//! ```
//!
//! Everything the job makes is tagged with it and journaled; the member's volumes or instance are
//! handed over to the user when the job succeeds, and the service account keeps nothing.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_ec2::types::{OperationType, ResourceType, TagSpecification, VolumeState};

use super::instance_config::InstanceConfig;
use super::journal::{Kind, Resource};
use super::restore::{launch, name_tags, register, restore_tags, share_image, Request, Restored};
use super::workflow::{share_snapshots, this_instance, Made, Report, Workflow};
use super::{accounts::SERVICE, CloudError};

/// The restore's own steps (`restore::run` prepares and ends the job).
#[allow(clippy::too_many_arguments)]
pub(super) async fn restore(
    job: &Workflow<'_>,
    library: Arc<dedup::Library>,
    devices_dir: &Path,
    backup: &dedup::Manifest,
    config: &InstanceConfig,
    req: &Request,
    report: Arc<dyn Report>,
    made: &mut Made,
) -> Result<Restored, CloudError> {
    let started = Instant::now();
    let access_node = match &req.access_node {
        Some(id) => id.clone(),
        None => this_instance().await?,
    };
    let zone = job.zone_of(&access_node).await?;
    let member_id = job.cloud.accounts.account_id(&job.member_account, &job.region).await?;

    report.step("creating and attaching empty volumes to the access node");
    let mut volumes = Vec::new();
    for (n, bd) in config.block_devices.iter().enumerate() {
        let volume = job.create_volume(None, Some(bd.size_gib.max(1)), &zone, n, made).await?;
        let device = job.attach(&volume, &access_node, n, devices_dir).await?;
        volumes.push((volume, device));
    }

    report.step("writing the backup onto the volumes");
    let devices: Vec<PathBuf> = volumes.iter().map(|(_, d)| d.clone()).collect();
    let (lib, m, progress) = (library.clone(), backup.clone(), report.clone());
    let written = tokio::task::spawn_blocking(move || write_disks(lib, &m, &devices, &*progress))
        .await
        .map_err(|e| CloudError::Conflict(format!("the restore's worker stopped: {e}")))??;

    report.step("snapshotting the volumes");
    let tags = restore_tags(job, &name_tags(backup));
    let mut snapshots = Vec::new();
    for (n, (volume, _)) in volumes.iter().enumerate() {
        detach(job, volume).await?;
        snapshots.push(snapshot(job, volume, n, &tags, made).await?);
    }
    for snap in &snapshots {
        super::images::wait_snapshot(&job.service, snap).await?;
    }
    for (volume, _) in &volumes {
        super::cleanup::delete_volume(&job.service, SERVICE, volume).await?;
        made.forget(volume, job.cloud)?;
    }

    report.step("sharing the snapshots with the member account");
    share_snapshots(&job.service, SERVICE, &snapshots, &member_id, OperationType::Add).await?;
    let mut restored = Restored {
        backup: backup.id.clone(),
        account: job.member_account.clone(),
        region: job.region.clone(),
        bytes_written: written,
        ..Default::default()
    };
    if req.launch {
        report.step("launching the instance in the member account");
        let image = register(job, config, &snapshots, &name_tags(backup), made).await?;
        share_image(job, &image, &member_id).await?;
        restored.instance_id = Some(launch(job, &image, config, req, made).await?);
        // The instance has its volumes: the image and the snapshots it was launched from are not kept.
        super::cleanup::deregister_image(&job.service, SERVICE, &image).await?;
        made.forget(&image, job.cloud)?;
    } else {
        report.step("creating the volumes in the member account");
        let member_zone = config.availability_zone.clone().unwrap_or(zone);
        for (n, snap) in snapshots.iter().enumerate() {
            restored.volumes.push(member_volume(job, snap, &member_zone, n, config, made).await?);
        }
    }
    for snap in &snapshots {
        super::cleanup::delete_snapshot(&job.service, SERVICE, snap).await?;
        made.forget(snap, job.cloud)?;
    }
    restored.seconds = started.elapsed().as_secs_f64();
    Ok(restored)
}

/// Writes every disk of the backup onto its device: only the chunks that are not zero chunks (a new EBS
/// volume reads as zeros), then a flush of the device. Gives the bytes written.
fn write_disks(
    library: Arc<dedup::Library>,
    backup: &dedup::Manifest,
    devices: &[PathBuf],
    report: &dyn Report,
) -> Result<u64, CloudError> {
    let total: u64 = backup.disks.iter().map(|d| d.size).sum();
    let (mut done, mut written) = (0u64, 0u64);
    let failed = |what: String| CloudError::Conflict(format!("restoring backup {}: {what}", backup.id));
    for (n, device) in devices.iter().enumerate() {
        let disk = dedup::BackupDisk::open(library.clone(), backup, n).map_err(|e| failed(e.to_string()))?;
        let out = std::fs::OpenOptions::new().write(true).open(device).map_err(CloudError::io("open", device))?;
        let cs = u64::from(disk.chunk_size());
        let mut buf = Vec::new();
        for chunk in 0..disk.size().div_ceil(cs) {
            if !disk.chunk_id(chunk).map_err(|e| failed(e.to_string()))?.is_zero() {
                disk.read_chunk(chunk, &mut buf).map_err(|e| failed(format!("disk {n}: {e}")))?;
                out.write_all_at(&buf, chunk * cs).map_err(CloudError::io("write", device))?;
                written += buf.len() as u64;
            }
            report.bytes(done + ((chunk + 1) * cs).min(disk.size()), total);
        }
        out.sync_all().map_err(CloudError::io("flush", device))?;
        done += disk.size();
    }
    Ok(written)
}

/// DetachVolume, waited for until the volume is available again.
async fn detach(job: &Workflow<'_>, volume: &str) -> Result<(), CloudError> {
    job.service.detach_volume().volume_id(volume).send().await.map_err(CloudError::aws(SERVICE, "DetachVolume"))?;
    job.wait_volume(false, volume, |v| v.state() == Some(&VolumeState::Available), "available (detached)").await
}

/// CreateSnapshot of a written volume. CreateSnapshot has no client token: should its answer be lost,
/// the snapshot carries the job's tag, by which the job's sweep finds it.
async fn snapshot(
    job: &Workflow<'_>,
    volume: &str,
    n: usize,
    tags: &[aws_sdk_ec2::types::Tag],
    made: &mut Made,
) -> Result<String, CloudError> {
    let token = format!("{}-snapshot-{n}", job.job_id);
    job.cloud.journal.intent(&Resource::planned(Kind::Snapshot, SERVICE, &job.region, &job.purpose, &token))?;
    let out = job
        .service
        .create_snapshot()
        .volume_id(volume)
        .description(format!("livemount HotAdd restore, disk {n} ({})", job.job_id))
        .tag_specifications(
            TagSpecification::builder().resource_type(ResourceType::Snapshot).set_tags(Some(tags.to_vec())).build(),
        )
        .send()
        .await;
    let id = match out {
        Ok(o) => o.snapshot_id().unwrap_or_default().to_string(),
        Err(e) => {
            job.cloud.journal.gone(&token)?;
            return Err(CloudError::aws(SERVICE, "CreateSnapshot")(e));
        }
    };
    job.cloud.journal.made(&token, &id)?;
    made.add(Kind::Snapshot, false, &token, &id);
    Ok(id)
}

/// The member's volume of disk `n`, from the shared snapshot, tagged as the backed-up volume was.
async fn member_volume(
    job: &Workflow<'_>,
    snapshot: &str,
    zone: &str,
    n: usize,
    config: &InstanceConfig,
    made: &mut Made,
) -> Result<String, CloudError> {
    let account = job.member_account.as_str();
    let token = format!("{}-member-volume-{n}", job.job_id);
    job.cloud.journal.intent(&Resource::planned(Kind::Volume, account, &job.region, &job.purpose, &token))?;
    let bd = &config.block_devices[n];
    let out = job
        .member
        .create_volume()
        .snapshot_id(snapshot)
        .availability_zone(zone)
        .set_volume_type(bd.volume_type.as_deref().map(aws_sdk_ec2::types::VolumeType::from))
        .client_token(&token)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Volume)
                .set_tags(Some(restore_tags(job, &config.tags)))
                .build(),
        )
        .send()
        .await;
    let volume = match out {
        Ok(o) => o.volume_id().unwrap_or_default().to_string(),
        Err(e) => {
            job.cloud.journal.gone(&token)?;
            return Err(CloudError::aws(account, "CreateVolume")(e));
        }
    };
    job.cloud.journal.made(&token, &volume)?;
    made.add(Kind::Volume, true, &token, &volume);
    job.wait_volume(true, &volume, |v| v.state() == Some(&VolumeState::Available), "available").await?;
    Ok(volume)
}
