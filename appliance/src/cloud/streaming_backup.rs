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
//! Every resource is journaled for this job before the call that makes it and tagged with the job, and
//! the undo runs whatever happened (the volumes, then the image and its snapshots), so that a failure
//! leaves nothing behind, and after a `kill -9` the daemon's next start removes what the dead job made.
//! The manifest keeps what a restore needs to launch the instance again (`InstanceConfig`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::{
    LaunchPermission, LaunchPermissionModifications, OperationType, ResourceType, SnapshotAttributeName,
    TagSpecification, VolumeAttachmentState, VolumeState,
};
use serde::{Deserialize, Serialize};

use super::journal::{Kind, Purpose, Resource};
use super::poll::Poll;
use super::{accounts::SERVICE, ec2_tags, filter, sdk, Cloud, CloudError};

/// How long an image, a volume or a device may take to become ready.
const WAIT: Duration = Duration::from_secs(600);

/// What `cloud backup` asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// What a restore needs to launch the instance again, kept in the backup's manifest.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InstanceConfig {
    pub kind: String,
    pub account: String,
    pub region: String,
    pub instance_id: String,
    pub instance_type: Option<String>,
    pub architecture: Option<String>,
    pub boot_mode: Option<String>,
    pub ena_support: Option<bool>,
    pub root_device_name: Option<String>,
    pub subnet_id: Option<String>,
    pub availability_zone: Option<String>,
    pub security_group_ids: Vec<String>,
    pub tags: BTreeMap<String, String>,
    /// One entry per backed-up disk, in the backup's disk order.
    pub block_devices: Vec<BlockDevice>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BlockDevice {
    pub device_name: String,
    pub volume_id: String,
    pub size_gib: i32,
    pub volume_type: Option<String>,
    pub delete_on_termination: Option<bool>,
}

/// Where the job is, for the progress its caller shows.
pub trait Report: Send + Sync {
    fn step(&self, what: &str);
    fn bytes(&self, done: u64, total: u64);
}

/// The resources the job made, for its undo.
#[derive(Default)]
struct Made {
    image: Option<(String, String)>, // (token, image id)
    snapshots: Vec<(String, String)>,
    volumes: Vec<(String, String)>,
}

/// The AWS clients and names of one job.
struct Job<'a> {
    cloud: &'a Cloud,
    job_id: String,
    purpose: Purpose,
    region: String,
    member_account: String,
    member: aws_sdk_ec2::Client,
    service: aws_sdk_ec2::Client,
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
    let region = cloud.accounts.region_of(&req.account, req.region.as_deref()).await?;
    let member = sdk::ec2(&cloud.accounts.config(&req.account, &region, "backup").await?);
    let service = sdk::ec2(&cloud.accounts.config(SERVICE, &region, "backup").await?);
    let job = Job {
        cloud,
        job_id: job_id.to_string(),
        purpose: Purpose::Job(job_id.to_string()),
        region,
        member_account: req.account.clone(),
        member,
        service,
    };
    let mut made = Made::default();
    let result = job.back_up(library, devices_dir, req, report.clone(), &mut made).await;
    report.step("removing the volumes, the image and its snapshots");
    let mut undone = job.undo(&made).await;
    if result.is_err() && undone.is_ok() {
        // A call that seemed to fail may have made its resource: look for the job's tag as well.
        undone = super::cleanup::remove_job(cloud, job_id).await.map(|n| {
            if n > 0 {
                tracing::info!(job = %job_id, removed = n, "removed what calls that seemed to fail had made");
            }
        });
    }
    match (result, undone) {
        (Ok(m), Ok(())) => Ok(m),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(undo)) => Err(CloudError::Unfinished { outcome: e.to_string(), undo: Box::new(undo) }),
        (Ok(m), Err(undo)) => {
            Err(CloudError::Unfinished { outcome: format!("backup {} was made", m.id), undo: Box::new(undo) })
        }
    }
}

impl Job<'_> {
    async fn back_up(
        &self,
        library: Arc<dedup::Library>,
        devices_dir: &Path,
        req: &Request,
        report: Arc<dyn Report>,
        made: &mut Made,
    ) -> Result<dedup::Manifest, CloudError> {
        report.step("looking at the instance");
        let mut config = self.instance_config(&req.instance).await?;
        let access_node = match &req.access_node {
            Some(id) => id.clone(),
            None => this_instance().await?,
        };
        let zone = self.zone_of(&access_node).await?;
        let service_id = self.cloud.accounts.account_id(SERVICE, &self.region).await?;

        report.step("creating an image of the instance in the member account");
        let image = self.create_image(&req.instance, req.no_reboot, made).await?;
        let snapshots = self.wait_image(&image, made).await?;

        report.step("sharing the image and its snapshots with the service account");
        self.share(&image, &snapshots, &service_id).await?;

        report.step("creating and attaching volumes to the access node");
        let mut devices = Vec::new();
        let mut snapshots = snapshots;
        let rank = |name: &str| config.block_devices.iter().position(|b| b.device_name == name).unwrap_or(usize::MAX);
        snapshots.sort_by_key(|(name, _)| (rank(name), name.clone()));
        for (n, (device_name, snapshot)) in snapshots.iter().enumerate() {
            let volume = self.create_volume(snapshot, &zone, n, made).await?;
            let device = self.attach(&volume, &access_node, n, devices_dir).await?;
            devices.push((device_name.clone(), volume, device));
        }
        // The backup's disks in the instance's device order, each described as the instance has it.
        let mut block_devices = Vec::new();
        for (device_name, _, _) in &devices {
            let bd = config.block_devices.iter().find(|b| &b.device_name == device_name).cloned();
            block_devices
                .push(bd.unwrap_or_else(|| BlockDevice { device_name: device_name.clone(), ..Default::default() }));
        }
        config.block_devices = block_devices;

        report.step("backing up the volumes");
        let paths: Vec<(String, PathBuf)> = config
            .block_devices
            .iter()
            .zip(&devices)
            .map(|(bd, (name, _, dev))| {
                (format!("ebs:{} ({name} of {} in {})", bd.volume_id, req.instance, req.account), dev.clone())
            })
            .collect();
        let name = req.name.clone().or_else(|| config.tags.get("Name").cloned());
        let origin = serde_json::to_value(&config).expect("plain data");
        let progress = report.clone();
        let manifest = tokio::task::spawn_blocking(move || {
            let mut disks = Vec::new();
            for (label, path) in paths {
                let mut source = dedup::source::open(&path)?;
                let partition_table = crate::partitions::summarize(&mut *source).ok().flatten();
                disks.push(dedup::ingest::DiskInput { label, source, partition_table });
            }
            dedup::ingest::create_backup_from(&library, name, Some(origin), disks, &|p| progress.bytes(p.done, p.total))
        })
        .await
        .map_err(|e| CloudError::Conflict(format!("the backup's worker stopped: {e}")))?
        .map_err(|e| CloudError::Conflict(format!("backing up the volumes failed: {e}")))?;
        Ok(manifest)
    }

    /// The instance's configuration; refuses an instance whose root is not on EBS.
    async fn instance_config(&self, id: &str) -> Result<InstanceConfig, CloudError> {
        let account = &self.member_account;
        let out = self.member.describe_instances().instance_ids(id).send().await.map_err(|e| {
            let err = CloudError::aws(account, "DescribeInstances")(e);
            match err.code() {
                Some("InvalidInstanceID.NotFound") | Some("InvalidInstanceID.Malformed") => {
                    CloudError::Missing(format!(
                        "no instance {id} in account {account} ({}): check the id and the account's Region",
                        self.region
                    ))
                }
                _ => err,
            }
        })?;
        let Some(inst) = out.reservations().iter().flat_map(|r| r.instances()).next() else {
            return Err(CloudError::Missing(format!("no instance {id} in account {account} ({})", self.region)));
        };
        if inst.root_device_type().map(|t| t.as_str()) == Some("instance-store") {
            return Err(CloudError::BadRequest(format!(
                "instance {id} has an instance-store root: only EBS-backed instances can be imaged and backed up"
            )));
        }
        let mut block_devices = Vec::new();
        for m in inst.block_device_mappings() {
            let Some(ebs) = m.ebs() else { continue };
            let volume_id = ebs.volume_id().unwrap_or_default().to_string();
            let vol = self.member.describe_volumes().volume_ids(&volume_id).send().await;
            let vol = vol.map_err(CloudError::aws(account, "DescribeVolumes"))?;
            let v = vol.volumes().first();
            block_devices.push(BlockDevice {
                device_name: m.device_name().unwrap_or_default().to_string(),
                volume_id,
                size_gib: v.and_then(|v| v.size()).unwrap_or(0),
                volume_type: v.and_then(|v| v.volume_type()).map(|t| t.as_str().to_string()),
                delete_on_termination: ebs.delete_on_termination(),
            });
        }
        if block_devices.is_empty() {
            return Err(CloudError::BadRequest(format!("instance {id} has no EBS volume to back up")));
        }
        // The root device first (a restore boots disk 0), then the others in device-name order.
        let root = inst.root_device_name().unwrap_or_default();
        block_devices
            .sort_by(|a, b| (a.device_name != root, &a.device_name).cmp(&(b.device_name != root, &b.device_name)));
        // An instance shows its boot mode and ENA support only when its AMI named them; the AMI, while it
        // still exists, says what the instance was launched with.
        let mut boot_mode = inst.boot_mode().map(|b| b.as_str().to_string());
        let mut ena_support = inst.ena_support();
        if boot_mode.is_none() || ena_support.is_none() {
            if let Some(image) = self.source_image(inst.image_id()).await {
                boot_mode = boot_mode.or(image.boot_mode().map(|b| b.as_str().to_string()));
                ena_support = ena_support.or(image.ena_support());
            }
        }
        Ok(InstanceConfig {
            kind: "ec2-instance".into(),
            account: account.clone(),
            region: self.region.clone(),
            instance_id: id.to_string(),
            instance_type: inst.instance_type().map(|t| t.as_str().to_string()),
            architecture: inst.architecture().map(|a| a.as_str().to_string()),
            boot_mode,
            ena_support,
            root_device_name: inst.root_device_name().map(str::to_string),
            subnet_id: inst.subnet_id().map(str::to_string),
            availability_zone: inst.placement().and_then(|p| p.availability_zone()).map(str::to_string),
            security_group_ids: inst
                .security_groups()
                .iter()
                .filter_map(|g| g.group_id())
                .map(str::to_string)
                .collect(),
            tags: inst.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string()))).collect(),
            block_devices,
        })
    }

    /// The image the instance was launched from, if it can still be described.
    async fn source_image(&self, image_id: Option<&str>) -> Option<aws_sdk_ec2::types::Image> {
        let out = self.member.describe_images().image_ids(image_id?).send().await.ok()?;
        out.images().first().cloned()
    }

    async fn zone_of(&self, instance: &str) -> Result<String, CloudError> {
        let out = self.service.describe_instances().instance_ids(instance).send().await.map_err(|e| {
            let err = CloudError::aws(SERVICE, "DescribeInstances")(e);
            match err.code() {
                Some("InvalidInstanceID.NotFound") => CloudError::Missing(format!(
                    "the access node {instance} is not an instance of the service account in {}",
                    self.region
                )),
                _ => err,
            }
        })?;
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| i.placement().and_then(|p| p.availability_zone()).map(str::to_string))
            .ok_or_else(|| CloudError::Missing(format!("the access node {instance} has no availability zone")))
    }

    fn tags(&self) -> Vec<aws_sdk_ec2::types::Tag> {
        ec2_tags(&self.cloud.tags(&self.purpose))
    }

    /// CreateImage has no client token: its name, unique per account and Region, makes it idempotent.
    async fn create_image(&self, instance: &str, no_reboot: bool, made: &mut Made) -> Result<String, CloudError> {
        let account = &self.member_account;
        let token = format!("{}-image", self.job_id);
        let name = format!("livemount-backup-{}", self.job_id);
        self.cloud.journal.intent(&Resource::planned(Kind::Image, account, &self.region, &self.purpose, &token))?;
        let made_now = self
            .member
            .create_image()
            .instance_id(instance)
            .name(&name)
            .description(format!("livemount streaming backup of {instance}"))
            .no_reboot(no_reboot)
            .tag_specifications(
                TagSpecification::builder().resource_type(ResourceType::Image).set_tags(Some(self.tags())).build(),
            )
            .send()
            .await;
        let image = match made_now {
            Ok(out) => out.image_id().unwrap_or_default().to_string(),
            Err(e) => {
                let err = CloudError::aws(account, "CreateImage")(e);
                if err.code() != Some("InvalidAMIName.Duplicate") {
                    self.cloud.journal.gone(&token)?;
                    return Err(err);
                }
                // A retry of a call that had worked: the image of that name is this job's.
                self.image_named(&name).await?.ok_or(err)?
            }
        };
        self.cloud.journal.made(&token, &image)?;
        made.image = Some((token, image.clone()));
        Ok(image)
    }

    async fn image_named(&self, name: &str) -> Result<Option<String>, CloudError> {
        let out = self
            .member
            .describe_images()
            .owners("self")
            .filters(filter("name", &[name]))
            .send()
            .await
            .map_err(CloudError::aws(&self.member_account, "DescribeImages"))?;
        Ok(out.images().first().and_then(|i| i.image_id()).map(str::to_string))
    }

    /// Waits for the image; journals and tags its snapshots. Gives (device name, snapshot id) of each.
    async fn wait_image(&self, image: &str, made: &mut Made) -> Result<Vec<(String, String)>, CloudError> {
        let account = &self.member_account;
        let mut poll = Poll::new(format!("image {image}"), "available", WAIT, Duration::from_millis(200));
        loop {
            let out = self
                .member
                .describe_images()
                .image_ids(image)
                .send()
                .await
                .map_err(CloudError::aws(account, "DescribeImages"))?;
            let img = out.images().first();
            let state = img.and_then(|i| i.state()).map(|s| s.as_str().to_string()).unwrap_or_default();
            if state == "available" {
                let img = img.expect("an image was described");
                let mut snaps = Vec::new();
                for m in img.block_device_mappings() {
                    if let Some(snap) = m.ebs().and_then(|e| e.snapshot_id()) {
                        snaps.push((m.device_name().unwrap_or_default().to_string(), snap.to_string()));
                    }
                }
                for (n, (_, snap)) in snaps.iter().enumerate() {
                    let token = format!("{}-snapshot-{n}", self.job_id);
                    let r = Resource::planned(Kind::Snapshot, account, &self.region, &self.purpose, &token);
                    self.cloud.journal.intent(&r)?;
                    self.cloud.journal.made(&token, snap)?;
                    made.snapshots.push((token, snap.clone()));
                }
                let ids: Vec<String> = snaps.iter().map(|(_, s)| s.clone()).collect();
                self.member
                    .create_tags()
                    .set_resources(Some(ids))
                    .set_tags(Some(self.tags()))
                    .send()
                    .await
                    .map_err(CloudError::aws(account, "CreateTags"))?;
                if snaps.is_empty() {
                    return Err(CloudError::Conflict(format!("image {image} of the instance has no EBS snapshot")));
                }
                return Ok(snaps);
            }
            if state == "failed" || state == "error" || state == "invalid" {
                return Err(CloudError::Conflict(format!("image {image} became {state} in account {account}")));
            }
            poll.pause(state).await?;
        }
    }

    async fn share(&self, image: &str, snapshots: &[(String, String)], service_id: &str) -> Result<(), CloudError> {
        let account = &self.member_account;
        self.member
            .modify_image_attribute()
            .image_id(image)
            .launch_permission(
                LaunchPermissionModifications::builder()
                    .add(LaunchPermission::builder().user_id(service_id).build())
                    .build(),
            )
            .send()
            .await
            .map_err(CloudError::aws(account, "ModifyImageAttribute"))?;
        // The flat form (Attribute, OperationType, UserIds) of ModifySnapshotAttribute: AWS takes it as it
        // takes CreateVolumePermission.Add, and moto 5.2.1 reads only this one.
        for (_, snap) in snapshots {
            self.member
                .modify_snapshot_attribute()
                .snapshot_id(snap)
                .attribute(SnapshotAttributeName::CreateVolumePermission)
                .operation_type(OperationType::Add)
                .user_ids(service_id)
                .send()
                .await
                .map_err(CloudError::aws(account, "ModifySnapshotAttribute"))?;
        }
        Ok(())
    }

    async fn create_volume(&self, snapshot: &str, zone: &str, n: usize, made: &mut Made) -> Result<String, CloudError> {
        let token = format!("{}-volume-{n}", self.job_id);
        self.cloud.journal.intent(&Resource::planned(Kind::Volume, SERVICE, &self.region, &self.purpose, &token))?;
        let out = self
            .service
            .create_volume()
            .snapshot_id(snapshot)
            .availability_zone(zone)
            .client_token(&token)
            .tag_specifications(
                TagSpecification::builder().resource_type(ResourceType::Volume).set_tags(Some(self.tags())).build(),
            )
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                // Had AWS made it after all, the volume carries the job's tag, by which `cloud cleanup`
                // and the next start find it; the journal keeps only what is known to exist.
                self.cloud.journal.gone(&token)?;
                return Err(CloudError::aws(SERVICE, "CreateVolume")(e));
            }
        };
        let volume = out.volume_id().unwrap_or_default().to_string();
        self.cloud.journal.made(&token, &volume)?;
        made.volumes.push((token, volume.clone()));
        self.wait_volume(&volume, |v| v.state() == Some(&VolumeState::Available), "available").await?;
        Ok(volume)
    }

    /// Attaches the volume at the `n`th free device name and waits for its device to appear.
    async fn attach(&self, volume: &str, instance: &str, n: usize, devices_dir: &Path) -> Result<PathBuf, CloudError> {
        // /dev/sdf to /dev/sdp are the names AWS recommends for EBS volumes (Linux device naming).
        let letter = (b'f' + (n as u8 % 11)) as char;
        self.service
            .attach_volume()
            .volume_id(volume)
            .instance_id(instance)
            .device(format!("/dev/sd{letter}"))
            .send()
            .await
            .map_err(CloudError::aws(SERVICE, "AttachVolume"))?;
        let attached = |v: &aws_sdk_ec2::types::Volume| {
            v.attachments().iter().any(|a| a.state() == Some(&VolumeAttachmentState::Attached))
        };
        self.wait_volume(volume, attached, "attached").await?;
        // On Nitro instances the volume is an NVMe device whose serial is its id without the dash.
        let device = devices_dir.join(format!("nvme-Amazon_Elastic_Block_Store_{}", volume.replace('-', "")));
        let what = format!("the device of volume {volume}");
        let present = format!("present as {}", device.display());
        let mut poll = Poll::steady(what, present, Duration::from_secs(60), Duration::from_millis(100));
        while !device.exists() {
            poll.pause("absent").await?;
        }
        Ok(device)
    }

    async fn wait_volume(
        &self,
        volume: &str,
        ready: impl Fn(&aws_sdk_ec2::types::Volume) -> bool,
        state: &str,
    ) -> Result<(), CloudError> {
        let mut poll = Poll::new(format!("volume {volume}"), state, WAIT, Duration::from_millis(100));
        loop {
            let out = self
                .service
                .describe_volumes()
                .volume_ids(volume)
                .send()
                .await
                .map_err(CloudError::aws(SERVICE, "DescribeVolumes"))?;
            let v = out.volumes().first();
            if v.is_some_and(&ready) {
                return Ok(());
            }
            poll.pause(format!("{:?}", v.and_then(|v| v.state()))).await?;
        }
    }

    /// Removes what the job made, last made first: volumes (detached), then the image and its snapshots.
    /// Every step is tried; the first failure is returned.
    async fn undo(&self, made: &Made) -> Result<(), CloudError> {
        let mut first_error = None;
        for (token, volume) in made.volumes.iter().rev() {
            let r = super::cleanup::delete_volume(&self.service, SERVICE, volume).await;
            match r.and_then(|()| self.cloud.journal.gone(token)) {
                Ok(()) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some((token, image)) = &made.image {
            let r = super::cleanup::deregister_image(&self.member, &self.member_account, image).await;
            if let Err(e) = r.and_then(|_| self.cloud.journal.gone(token)) {
                first_error.get_or_insert(e);
            }
        }
        for (token, snap) in &made.snapshots {
            let r = super::cleanup::delete_snapshot(&self.member, &self.member_account, snap).await;
            if let Err(e) = r.and_then(|()| self.cloud.journal.gone(token)) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// This instance's id, from its instance metadata (IMDSv2).
async fn this_instance() -> Result<String, CloudError> {
    let provider = aws_config::provider_config::ProviderConfig::without_region().with_http_client(sdk::http_client());
    let imds = aws_config::imds::Client::builder().configure(&provider).build();
    match tokio::time::timeout(Duration::from_secs(5), imds.get("/latest/meta-data/instance-id")).await {
        Ok(Ok(id)) => Ok(id.as_ref().to_string()),
        Ok(Err(e)) => Err(CloudError::BadRequest(format!(
            "cannot read this instance's id from its metadata ({e}): on an appliance that is not an EC2 instance, name the access node with --access-node"
        ))),
        Err(_) => Err(CloudError::BadRequest(
            "the instance metadata service did not answer: on an appliance that is not an EC2 instance, name the access node with --access-node".into(),
        )),
    }
}
