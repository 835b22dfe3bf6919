//! What the account workflows share: one job's AWS clients (member and service account), the steps they
//! are made of (an image of the member's instance, sharing, volumes attached to the access node, the
//! devices backed up), the undo of what a job made, and how a job ends (its undo, then a sweep by its tag
//! for what calls whose answer was lost had made).
//!
//! Every resource is journaled for the job before the call that makes it and tagged with what it is for,
//! so that a failure leaves nothing behind, and after a `kill -9` the daemon's next start removes what the
//! dead job made.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::{
    LaunchPermission, LaunchPermissionModifications, OperationType, ResourceType, SnapshotAttributeName,
    TagSpecification, VolumeAttachmentState, VolumeState,
};

use super::ebs_upload::{BlockSource, Upload, Uploaded};
use super::instance_config::{BlockDevice, InstanceConfig};
use super::journal::{Kind, Purpose, Resource};
use super::poll::Poll;
use super::{accounts::SERVICE, ec2_tags, filter, sdk, Cloud, CloudError};

/// How long an image, a volume or a device may take to become ready.
const WAIT: Duration = Duration::from_secs(600);

/// Where the job is, for the progress its caller shows.
pub trait Report: Send + Sync {
    fn step(&self, what: &str);
    fn bytes(&self, done: u64, total: u64);
}

/// A snapshot a job writes through EBS direct (`Workflow::write_snapshot`).
pub struct NewSnapshot<'a> {
    /// The job's disk number (its client token).
    pub disk: usize,
    /// Made in the member account, else in the service account.
    pub in_member: bool,
    pub source: Arc<dyn BlockSource>,
    pub size_gib: Option<u64>,
    /// A child of this snapshot.
    pub parent: Option<&'a str>,
    pub description: String,
    pub tags: Vec<(String, String)>,
}

/// The resources a job made that its undo removes.
#[derive(Default)]
pub struct Made {
    held: Vec<Held>,
}

/// One resource a job made: in the member account or the service account.
struct Held {
    kind: Kind,
    in_member: bool,
    token: String,
    id: String,
}

impl Made {
    pub fn add(&mut self, kind: Kind, in_member: bool, token: &str, id: &str) {
        self.held.push(Held { kind, in_member, token: token.to_string(), id: id.to_string() });
    }

    /// `id` was removed by the job itself: neither its undo nor the journal hold it any longer.
    pub fn forget(&mut self, id: &str, cloud: &Cloud) -> Result<(), CloudError> {
        for h in self.held.iter().filter(|h| h.id == id) {
            cloud.journal.gone(&h.token)?;
        }
        self.held.retain(|h| h.id != id);
        Ok(())
    }
}

/// Opens one disk of a backup, on the blocking thread that reads it.
pub type OpenDisk = Box<dyn FnOnce() -> dedup::Result<Box<dyn dedup::source::DiskSource>> + Send>;

/// Backs up the disks of an instance (one per block device of `config`, in its order) as one backup whose
/// origin is `config`; each disk is labelled with the volume and device it was of.
pub async fn back_up_disks(
    library: Arc<dedup::Library>,
    config: &InstanceConfig,
    disks: Vec<OpenDisk>,
    name: Option<String>,
    report: Arc<dyn Report>,
) -> Result<dedup::Manifest, CloudError> {
    let labels: Vec<String> = config
        .block_devices
        .iter()
        .map(|bd| format!("ebs:{} ({} of {} in {})", bd.volume_id, bd.device_name, config.instance_id, config.account))
        .collect();
    let origin = serde_json::to_value(config).expect("plain data");
    tokio::task::spawn_blocking(move || {
        let mut inputs = Vec::new();
        for (label, open) in labels.into_iter().zip(disks) {
            let mut source = open()?;
            let partition_table = crate::partitions::summarize(&mut *source).ok().flatten();
            inputs.push(dedup::ingest::DiskInput { label, source, partition_table, parent: None });
        }
        dedup::ingest::create_backup_from(&library, name, Some(origin), inputs, &|p| report.bytes(p.done, p.total))
    })
    .await
    .map_err(|e| CloudError::Conflict(format!("the backup's worker stopped: {e}")))?
    .map_err(|e| CloudError::Conflict(format!("backing up the disks failed: {e}")))
}

/// The AWS clients and names of one job.
pub struct Workflow<'a> {
    pub cloud: &'a Cloud,
    pub job_id: String,
    /// What the job's passing resources are for (`Purpose::Job`).
    pub purpose: Purpose,
    pub region: String,
    pub member_account: String,
    pub member: aws_sdk_ec2::Client,
    pub service: aws_sdk_ec2::Client,
}

impl<'a> Workflow<'a> {
    /// The clients of a job working in `account` (the member) and the service account.
    pub async fn new(
        cloud: &'a Cloud,
        job_id: &str,
        account: &str,
        region: Option<&str>,
    ) -> Result<Workflow<'a>, CloudError> {
        let region = cloud.accounts.region_of(account, region).await?;
        let member = sdk::ec2(&cloud.accounts.config(account, &region, "job").await?);
        let service = sdk::ec2(&cloud.accounts.config(SERVICE, &region, "job").await?);
        Ok(Workflow {
            cloud,
            job_id: job_id.to_string(),
            purpose: Purpose::Job(job_id.to_string()),
            region,
            member_account: account.to_string(),
            member,
            service,
        })
    }

    /// The instance's configuration, as a backup keeps it.
    pub async fn instance_config(&self, instance: &str) -> Result<InstanceConfig, CloudError> {
        super::instance_config::describe(&self.member, &self.member_account, &self.region, instance).await
    }

    /// Ends the job: undoes `made` (also when the work succeeded: what a job keeps is not in `made`), and
    /// after a failure removes whatever made for `swept` is still found by journal or tag (a call that
    /// seemed to fail may have made its resource). An undo that fails turns the outcome into `Unfinished`.
    pub async fn finish<T>(
        &self,
        result: Result<T, CloudError>,
        made: &Made,
        swept: &Purpose,
        describe: impl FnOnce(&T) -> String,
    ) -> Result<T, CloudError> {
        let mut undone = self.undo(made).await;
        if result.is_err() && undone.is_ok() {
            undone = super::cleanup::remove_purpose(self.cloud, swept).await.map(|n| {
                if n > 0 {
                    tracing::info!(job = %self.job_id, removed = n, "removed what calls that seemed to fail had made");
                }
            });
        }
        match (result, undone) {
            (Ok(v), Ok(())) => Ok(v),
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(undo)) => Err(CloudError::Unfinished { outcome: e.to_string(), undo: Box::new(undo) }),
            (Ok(v), Err(undo)) => Err(CloudError::Unfinished { outcome: describe(&v), undo: Box::new(undo) }),
        }
    }

    /// Makes a volume of each snapshot (already shared with the service account) in `zone`, attaches it to
    /// the access node, and backs all of them up as one backup, disk `n` from `snapshots[n]`. `config`
    /// describes the disks (its block devices in the same order) and goes into the manifest.
    #[allow(clippy::too_many_arguments)]
    pub async fn back_up_snapshots(
        &self,
        library: Arc<dedup::Library>,
        devices_dir: &Path,
        access_node: &str,
        zone: &str,
        snapshots: &[String],
        config: &InstanceConfig,
        name: Option<String>,
        report: Arc<dyn Report>,
        made: &mut Made,
    ) -> Result<dedup::Manifest, CloudError> {
        report.step("creating and attaching volumes to the access node");
        let mut devices = Vec::new();
        for (n, snapshot) in snapshots.iter().enumerate() {
            let volume = self.create_volume(Some(snapshot), None, zone, n, made).await?;
            devices.push(self.attach(&volume, access_node, n, devices_dir).await?);
        }
        report.step("backing up the volumes");
        let opens: Vec<OpenDisk> =
            devices.into_iter().map(|dev| -> OpenDisk { Box::new(move || dedup::source::open(&dev)) }).collect();
        back_up_disks(library, config, opens, name, report).await
    }

    /// The instance's block devices in the order of `snapshots` (device name, snapshot id), each
    /// described as the instance has it, with its snapshot.
    pub fn in_snapshot_order(config: &InstanceConfig, snapshots: &mut [(String, String)]) -> Vec<BlockDevice> {
        let rank = |name: &str| config.block_devices.iter().position(|b| b.device_name == name).unwrap_or(usize::MAX);
        snapshots.sort_by_key(|(name, _)| (rank(name), name.clone()));
        snapshots
            .iter()
            .map(|(device_name, snap)| {
                let bd = config.block_devices.iter().find(|b| &b.device_name == device_name).cloned();
                let bd = bd.unwrap_or_else(|| BlockDevice { device_name: device_name.clone(), ..Default::default() });
                BlockDevice { snapshot_id: Some(snap.clone()), ..bd }
            })
            .collect()
    }

    pub async fn zone_of(&self, instance: &str) -> Result<String, CloudError> {
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

    pub fn tags(&self) -> Vec<aws_sdk_ec2::types::Tag> {
        ec2_tags(&self.cloud.tags(&self.purpose))
    }

    /// CreateImage of the member's instance, journaled and tagged for `purpose`. CreateImage has no client
    /// token: its name, unique per account and Region, makes it idempotent.
    pub async fn create_image(
        &self,
        instance: &str,
        no_reboot: bool,
        purpose: &Purpose,
        made: &mut Made,
    ) -> Result<String, CloudError> {
        let account = &self.member_account;
        let token = format!("{}-image", self.job_id);
        let name = format!("livemount-backup-{}", self.job_id);
        self.cloud.journal.intent(&Resource::planned(Kind::Image, account, &self.region, purpose, &token))?;
        let made_now = self
            .member
            .create_image()
            .instance_id(instance)
            .name(&name)
            .description(format!("livemount backup of {instance}"))
            .no_reboot(no_reboot)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Image)
                    .set_tags(Some(ec2_tags(&self.cloud.tags(purpose))))
                    .build(),
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
                image_named(&self.member, account, &name).await?.ok_or(err)?
            }
        };
        self.cloud.journal.made(&token, &image)?;
        made.add(Kind::Image, true, &token, &image);
        Ok(image)
    }

    /// Waits for the image; journals and tags its snapshots for `purpose`. Gives (device name, snapshot
    /// id) of each.
    pub async fn wait_image(
        &self,
        image: &str,
        purpose: &Purpose,
        made: &mut Made,
    ) -> Result<Vec<(String, String)>, CloudError> {
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
                    let r = Resource::planned(Kind::Snapshot, account, &self.region, purpose, &token);
                    self.cloud.journal.intent(&r)?;
                    self.cloud.journal.made(&token, snap)?;
                    made.add(Kind::Snapshot, true, &token, snap);
                }
                let ids: Vec<String> = snaps.iter().map(|(_, s)| s.clone()).collect();
                self.member
                    .create_tags()
                    .set_resources(Some(ids))
                    .set_tags(Some(ec2_tags(&self.cloud.tags(purpose))))
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

    pub async fn share(&self, image: &str, snapshots: &[(String, String)], service_id: &str) -> Result<(), CloudError> {
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
        let ids: Vec<String> = snapshots.iter().map(|(_, s)| s.clone()).collect();
        share_snapshots(&self.member, account, &ids, service_id, OperationType::Add).await
    }

    /// A volume in the service account, of `snapshot` or empty of `size_gib`, waited for until available.
    pub async fn create_volume(
        &self,
        snapshot: Option<&str>,
        size_gib: Option<i32>,
        zone: &str,
        n: usize,
        made: &mut Made,
    ) -> Result<String, CloudError> {
        let token = format!("{}-volume-{n}", self.job_id);
        self.cloud.journal.intent(&Resource::planned(Kind::Volume, SERVICE, &self.region, &self.purpose, &token))?;
        let out = self
            .service
            .create_volume()
            .set_snapshot_id(snapshot.map(str::to_string))
            .set_size(size_gib)
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
        made.add(Kind::Volume, false, &token, &volume);
        self.wait_volume(false, &volume, |v| v.state() == Some(&VolumeState::Available), "available").await?;
        Ok(volume)
    }

    /// Attaches the volume at the `n`th free device name and waits for its device to appear.
    pub async fn attach(
        &self,
        volume: &str,
        instance: &str,
        n: usize,
        devices_dir: &Path,
    ) -> Result<PathBuf, CloudError> {
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
        self.wait_volume(false, volume, attached, "attached").await?;
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

    /// Waits until `ready` holds for the volume (of the member account when `in_member`).
    pub async fn wait_volume(
        &self,
        in_member: bool,
        volume: &str,
        ready: impl Fn(&aws_sdk_ec2::types::Volume) -> bool,
        state: &str,
    ) -> Result<(), CloudError> {
        let (ec2, account) =
            if in_member { (&self.member, self.member_account.as_str()) } else { (&self.service, SERVICE) };
        let mut poll = Poll::new(format!("volume {volume}"), state, WAIT, Duration::from_millis(100));
        loop {
            let out = ec2
                .describe_volumes()
                .volume_ids(volume)
                .send()
                .await
                .map_err(CloudError::aws(account, "DescribeVolumes"))?;
            let v = out.volumes().first();
            if v.is_some_and(&ready) {
                return Ok(());
            }
            poll.pause(format!("{:?}", v.and_then(|v| v.state()))).await?;
        }
    }

    /// Removes what the job made: instances (terminated), volumes (detached), images, then snapshots (an
    /// image's snapshots cannot go before it), each kind last made first. Every step is tried; the first
    /// failure is returned.
    pub async fn undo(&self, made: &Made) -> Result<(), CloudError> {
        let rank = |k: Kind| match k {
            Kind::Instance => 0,
            Kind::Volume => 1,
            Kind::Share => 2,
            Kind::Image => 3,
            Kind::Snapshot => 4,
            Kind::Grant => 5,
            Kind::Object => 6,
        };
        let mut order: Vec<&Held> = made.held.iter().rev().collect();
        order.sort_by_key(|h| rank(h.kind));
        let mut first_error = None;
        for h in order {
            let (ec2, account) =
                if h.in_member { (&self.member, self.member_account.as_str()) } else { (&self.service, SERVICE) };
            let r = match h.kind {
                Kind::Instance => super::instances::terminate(ec2, account, std::slice::from_ref(&h.id)).await,
                Kind::Volume => super::cleanup::delete_volume(ec2, account, &h.id).await,
                Kind::Image => super::cleanup::deregister_image(ec2, account, &h.id).await.map(|_| ()),
                Kind::Snapshot => super::cleanup::delete_snapshot(ec2, account, &h.id).await,
                Kind::Share => super::cleanup::unshare(self.cloud, ec2, account, &self.region, &h.id).await,
                Kind::Object | Kind::Grant => super::s3_objects::remove(self.cloud, &self.region, h.kind, &h.id).await,
            };
            if let Err(e) = r.and_then(|()| self.cloud.journal.gone(&h.token)) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Hands what the job made over to its user: the tags by which this appliance finds what it made are
    /// taken off and the journal forgets them, so that no cleanup removes them. Until this returns they
    /// are the job's, undone should it die.
    /// Writes a disk of the job into a new snapshot through EBS direct, journaled before it is started
    /// (one client token per job and disk: a retried call is idempotent, another job gets a new one)
    /// and added to `made` once EBS gave its id.
    pub async fn write_snapshot(
        &self,
        ebs: &aws_sdk_ebs::Client,
        snapshot: NewSnapshot<'_>,
        progress: &(dyn Fn(u64, u64) + Sync),
        made: &mut Made,
    ) -> Result<Uploaded, CloudError> {
        let account = if snapshot.in_member { self.member_account.as_str() } else { SERVICE };
        let token = format!("{}-snapshot-{}", self.job_id, snapshot.disk);
        self.cloud.journal.intent(&Resource::planned(Kind::Snapshot, account, &self.region, &self.purpose, &token))?;
        let up = Upload { ebs, account, client_token: &token, description: snapshot.description, tags: snapshot.tags };
        let mut id = None;
        let started = |made_id: &str| {
            id = Some(made_id.to_string());
            self.cloud.journal.made(&token, made_id)
        };
        let uploaded = up.run_child(snapshot.source, snapshot.size_gib, snapshot.parent, started, progress).await;
        if let Some(id) = &id {
            made.add(Kind::Snapshot, snapshot.in_member, &token, id);
        } else if uploaded.is_err() {
            // StartSnapshot failed; had it worked after all, the snapshot carries the job's tag.
            self.cloud.journal.gone(&token)?;
        }
        uploaded
    }

    pub async fn hand_over(&self, made: &mut Made) -> Result<(), CloudError> {
        let ours =
            [super::TAG_APPLIANCE, super::TAG_JOB].map(|k| aws_sdk_ec2::types::Tag::builder().key(k).build()).to_vec();
        for in_member in [true, false] {
            // S3 objects and grants carry no tags of ours: the journal alone finds them.
            let ids: Vec<String> = made
                .held
                .iter()
                .filter(|h| h.in_member == in_member && !h.kind.is_s3())
                .map(|h| h.id.clone())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let (ec2, account) =
                if in_member { (&self.member, self.member_account.as_str()) } else { (&self.service, SERVICE) };
            ec2.delete_tags()
                .set_resources(Some(ids))
                .set_tags(Some(ours.clone()))
                .send()
                .await
                .map_err(CloudError::aws(account, "DeleteTags"))?;
        }
        for h in made.held.drain(..) {
            self.cloud.journal.gone(&h.token)?;
        }
        Ok(())
    }
}

/// Gives (`OperationType::Add`) or takes back (`Remove`) the permission of account `to` to make volumes of
/// `snapshots` of `account`.
pub async fn share_snapshots(
    ec2: &aws_sdk_ec2::Client,
    account: &str,
    snapshots: &[String],
    to: &str,
    operation: OperationType,
) -> Result<(), CloudError> {
    // The flat form (Attribute, OperationType, UserIds) of ModifySnapshotAttribute: AWS takes it as it
    // takes CreateVolumePermission.Add, and moto 5.2.1 reads only this one.
    for snap in snapshots {
        ec2.modify_snapshot_attribute()
            .snapshot_id(snap)
            .attribute(SnapshotAttributeName::CreateVolumePermission)
            .operation_type(operation.clone())
            .user_ids(to)
            .send()
            .await
            .map_err(CloudError::aws(account, "ModifySnapshotAttribute"))?;
    }
    Ok(())
}

/// The image of `account` named `name` (names are unique per account and Region), if there is one.
pub async fn image_named(ec2: &aws_sdk_ec2::Client, account: &str, name: &str) -> Result<Option<String>, CloudError> {
    let out = ec2
        .describe_images()
        .owners("self")
        .filters(filter("name", &[name]))
        .send()
        .await
        .map_err(CloudError::aws(account, "DescribeImages"))?;
    Ok(out.images().first().and_then(|i| i.image_id()).map(str::to_string))
}

/// This instance's id, from its instance metadata (IMDSv2).
pub async fn this_instance() -> Result<String, CloudError> {
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
